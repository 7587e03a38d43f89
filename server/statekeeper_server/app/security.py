"""TLS server credentials and bearer tokens, from the configuration (see docs/operations.md).

Tokens come from `--tokens-file` (JSON, or lines) and/or `--tokens` / `STATEKEEPER_TOKENS`
(lines, `;` also separates entries); both may be used, and a token listed twice is an error.

Lines:   `TOKEN PERMISSION[,PERMISSION] [NAME]`   (`#` starts a comment)
JSON:    `[{"token": "...", "permissions": ["read"], "name": "dashboards"}, ...]`
         or `{"TOKEN": "read", "TOKEN2": ["write"], ...}`

Permissions: read, write, admin (admin implies write implies read; a token gets the highest it
lists). NAME appears in logs instead of the token; it defaults to `token-` and the first 8 hex
digits of the token's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc

from statekeeper_server.app.config import Config
from statekeeper_server.entrypoints.grpc.auth import Permission, TokenTable

log = logging.getLogger("statekeeper.security")


class ConfigError(Exception):
    """The security configuration cannot be used; the server does not start."""


def _default_name(token: str) -> str:
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def _permission(values: Any, where: str) -> Permission:
    if isinstance(values, str):
        values = values.split(",")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: permissions must be a non-empty list of read, write, admin")
    try:
        return max(Permission.parse(str(v)) for v in values)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_lines(text: str, source: str, *, semicolons: bool = False) -> list[tuple[str, str, Permission]]:
    out = []
    lines = text.replace(";", "\n").splitlines() if semicolons else text.splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source} entry {number}"
        if len(parts) not in (2, 3):
            raise ConfigError(f"{where}: expected 'TOKEN PERMISSION[,PERMISSION] [NAME]'")
        token, perms = parts[0], parts[1]
        out.append((token, parts[2] if len(parts) == 3 else _default_name(token), _permission(perms, where)))
    return out


def parse_json(text: str, source: str) -> list[tuple[str, str, Permission]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON: {e}") from None
    out = []
    if isinstance(data, dict) and "tokens" in data and isinstance(data["tokens"], list):
        data = data["tokens"]
    if isinstance(data, dict):
        for token, perms in data.items():
            out.append((str(token), _default_name(str(token)), _permission(perms, f"{source}")))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            where = f"{source} item {i}"
            if not isinstance(item, dict) or not isinstance(item.get("token"), str) or not item["token"]:
                raise ConfigError(f"{where}: expected an object with a non-empty 'token'")
            token = item["token"]
            name = str(item.get("name") or _default_name(token))
            out.append((token, name, _permission(item.get("permissions", item.get("permission")), where)))
    else:
        raise ConfigError(f"{source}: expected a list of tokens or an object of token → permissions")
    return out


def load_tokens(config: Config) -> TokenTable:
    """The configured tokens; an empty table means authentication is off."""
    entries: list[tuple[str, str, Permission]] = []
    if config.tokens_file:
        path = Path(config.tokens_file)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read --tokens-file {path}: {e}") from None
        if path.suffix == ".json" or text.lstrip()[:1] in ("[", "{"):
            entries += parse_json(text, str(path))
        else:
            entries += parse_lines(text, str(path))
    if config.tokens:
        entries += parse_lines(config.tokens, "--tokens/STATEKEEPER_TOKENS", semicolons=True)
    table = TokenTable()
    for token, name, permission in entries:
        if any(c.isspace() for c in token):
            raise ConfigError(f"token {name!r} contains whitespace")
        try:
            table.add(token, name, permission)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return table


def _read(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {flag} {path}: {e}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag} {path} is not a PEM file")
    return data


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured (mutual TLS with a client CA), else None."""
    if not config.tls_cert_file and not config.tls_key_file and not config.tls_client_ca_file:
        return None
    if not config.tls_cert_file or not config.tls_key_file:
        raise ConfigError("TLS needs both --tls-cert-file and --tls-key-file")
    cert = _read(config.tls_cert_file, "--tls-cert-file")
    key = _read(config.tls_key_file, "--tls-key-file")
    client_ca = (
        _read(config.tls_client_ca_file, "--tls-client-ca-file") if config.tls_client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def peer_credentials(config: Config) -> grpc.ChannelCredentials | None:
    """How this server calls the others of its cluster (forwarding): with TLS on, it trusts
    --tls-client-ca-file (or, without one, its own certificate: every server shares it) and
    presents its own certificate (mutual TLS)."""
    if not config.tls_cert_file:
        return None
    cert = _read(config.tls_cert_file, "--tls-cert-file")
    key = _read(config.tls_key_file, "--tls-key-file")
    ca = _read(config.tls_client_ca_file, "--tls-client-ca-file") if config.tls_client_ca_file else cert
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
