"""TLS channel credentials from PEM files or bytes, shared by both clients and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

PemSource = str | os.PathLike[str] | bytes
"""A PEM file's path, or the PEM itself as bytes (or as a str starting with -----BEGIN)."""


def read_pem(source: PemSource | None) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    text = os.fspath(source)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    return Path(text).expanduser().read_bytes()


def tls_credentials(
    ca: PemSource | None = None, cert: PemSource | None = None, key: PemSource | None = None
) -> grpc.ChannelCredentials:
    """Credentials for a TLS connection to statekeeper.

    ca: the CA certificate(s) to trust for the server (None: the system's roots);
    cert and key: this client's certificate and private key, for servers that require mutual TLS.

        sk.SyncClient.connect("db.example:50051", credentials=sk.tls_credentials(ca="ca.pem"))
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key: pass both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca), private_key=read_pem(key), certificate_chain=read_pem(cert)
    )
