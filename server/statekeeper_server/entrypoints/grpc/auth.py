"""Bearer-token authentication and the one rule that says which permission an RPC needs.

Permissions are ordered: ``admin`` implies ``write`` implies ``read``. A call carries its token
in the ``authorization`` metadata as ``Bearer <token>``. With no token configured, the
interceptor is not installed and every call is allowed (auth off).

Which permission a method needs (``required_permission``), first match wins:

1. ``PUBLIC_SERVICES`` (gRPC health, server reflection): none; reachable without a token.
2. ``OVERRIDES``: an explicit entry for a full method (``/pkg.Service/Method``) or a service.
3. A service whose name contains ``Admin`` or ``Backup``: admin, whatever the method.
4. ``VERBS``: the method name's first word (``GetNode`` → ``Get``) — readers (Get, List, Walk,
   Render, Watch, ...) need read, writers (Create, Add, Apply, Delete, ...) need write.
5. Anything else needs admin. So a new RPC is never more open than intended: name it with a
   verb from ``VERBS`` (or add it there or to ``OVERRIDES``) to open it to readers or writers.

Refusals are rich statuses: no or an unknown token is UNAUTHENTICATED (reason
``BEARER_TOKEN_REQUIRED`` / ``TOKEN_INVALID``), too weak a token PERMISSION_DENIED (reason
``INSUFFICIENT_PERMISSION``, metadata ``required_permission``, ``granted_permission``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from statekeeper_server.domain.errors import DomainError, PermissionDenied, Unauthenticated
from statekeeper_server.entrypoints.grpc.errors import rich_status
from statekeeper_server.entrypoints.grpc.handler import CallObserver, current_principal

log = logging.getLogger("statekeeper.auth")


class Permission(enum.IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Permission:
        try:
            value = cls[text.strip().upper()]
        except KeyError:
            value = cls.NONE
        if value is cls.NONE:
            raise ValueError(f"unknown permission {text!r}: expected read, write or admin")
        return value


PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

OVERRIDES: dict[str, Permission] = {
    # Acknowledging events is part of consuming the stream (with Subscribe); it moves only the
    # consumer's own position and changes no machine state.
    "/statekeeper.v1.EventService/Ack": Permission.READ,
    # The server's facts (revisions, version, uptime, cluster members) reveal nothing a reader
    # cannot see otherwise; the rest of AdminService stays admin-only.
    "/statekeeper.v1.AdminService/GetServerInfo": Permission.READ,
}

ADMIN_SERVICE_WORDS = ("Admin", "Backup")

VERBS: dict[str, Permission] = {
    **dict.fromkeys(
        (
            "Get",
            "List",
            "Walk",
            "Render",
            "Watch",
            "Describe",
            "Check",
            "Count",
            "Load",
            "Read",
            "Search",
            "Subscribe",
        ),
        Permission.READ,
    ),
    **dict.fromkeys(
        (
            "Create",
            "Add",
            "Apply",
            "Execute",
            "Delete",
            "Register",
            "Update",
            "Set",
            "Put",
            "Save",
            "Ack",
            "Acknowledge",
            "Complete",
            "Fail",
            "Retry",
            "Cancel",
            "Lease",
            "Claim",
            "Renew",
            "Extend",
            "Release",
            "Heartbeat",
            "Discard",
            "Fork",
            "Restore",
        ),
        Permission.WRITE,
    ),
}

_FIRST_WORD = re.compile(r"[A-Z][a-z0-9]*")
_cache: dict[str, Permission] = {}


def required_permission(method: str) -> Permission:
    """The permission a full method name (``/package.Service/Method``) needs; see the module doc."""
    cached = _cache.get(method)
    if cached is not None:
        return cached
    service, _, name = method.lstrip("/").partition("/")
    short_service = service.rpartition(".")[2]
    word = _FIRST_WORD.match(name)
    if service in PUBLIC_SERVICES:
        need = Permission.NONE
    elif method in OVERRIDES:
        need = OVERRIDES[method]
    elif service in OVERRIDES:
        need = OVERRIDES[service]
    elif any(w in short_service for w in ADMIN_SERVICE_WORDS):
        need = Permission.ADMIN
    elif word is not None and word.group() in VERBS:
        need = VERBS[word.group()]
    else:
        need = Permission.ADMIN
    if len(_cache) < 10_000:  # bounded: method names come from clients
        _cache[method] = need
    return need


@dataclass(frozen=True, slots=True)
class Grant:
    name: str
    permission: Permission


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Configured tokens, kept as SHA-256 digests and compared in constant time."""

    def __init__(self, tokens: Iterable[tuple[str, str, Permission]] = ()) -> None:
        """tokens: (token, name, permission)."""
        self._entries: list[tuple[bytes, Grant]] = []
        for token, name, permission in tokens:
            self.add(token, name, permission)

    def add(self, token: str, name: str, permission: Permission) -> None:
        if not token:
            raise ValueError("a token must not be empty")
        digest = _digest(token)
        if any(hmac.compare_digest(digest, d) for d, _ in self._entries):
            raise ValueError(f"token {name!r} is configured twice")
        self._entries.append((digest, Grant(name, permission)))

    def __len__(self) -> int:
        return len(self._entries)

    def grants(self) -> list[Grant]:
        return [g for _, g in self._entries]

    def lookup(self, token: str) -> Grant | None:
        """The grant of token, or None; every entry is compared, each in constant time."""
        digest = _digest(token)
        found: Grant | None = None
        for candidate, grant in self._entries:
            if hmac.compare_digest(digest, candidate):
                found = grant
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def check(tokens: TokenTable, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Grant | None:
    """The caller's grant (None for a public method); raises Unauthenticated / PermissionDenied."""
    need = required_permission(method)
    if need is Permission.NONE:
        return None
    token = bearer_token(metadata)
    if token is None:
        raise Unauthenticated(
            "BEARER_TOKEN_REQUIRED",
            "this server requires a bearer token: send the metadata 'authorization: Bearer <token>'",
        )
    grant = tokens.lookup(token)
    if grant is None:
        raise Unauthenticated("TOKEN_INVALID", "the bearer token is not valid")
    if grant.permission < need:
        raise PermissionDenied(
            "INSUFFICIENT_PERMISSION",
            f"{method.rpartition('/')[2]} needs the {need.label} permission; this token has {grant.permission.label}",
            required_permission=need.label,
            granted_permission=grant.permission.label,
            method=method,
        )
    return grant


def _denial(
    handler: grpc.RpcMethodHandler[Any, Any], error: DomainError, method: str, observers: list[CallObserver]
) -> grpc.RpcMethodHandler[Any, Any]:
    code, message, details = rich_status(error)

    async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for observe in observers:
            observe(method, code.name, 0.0)
        await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", details),))

    # Same kind of handler as the real one; the request is neither parsed nor read.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call (all services, present and future) against the token table."""

    def __init__(self, tokens: TokenTable, observers: list[CallObserver] | None = None) -> None:
        self.tokens = tokens
        self.observers = observers if observers is not None else []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        try:
            grant = check(self.tokens, method, handler_call_details.invocation_metadata)
        except (Unauthenticated, PermissionDenied) as e:
            handler = await continuation(handler_call_details)
            if handler is None:  # unknown method: UNIMPLEMENTED, as without auth
                return None
            log.info("refused %s: %s (%s)", method, e.reason, e.message, extra={"method": method})
            return _denial(handler, e, method, self.observers)
        if grant is not None:
            current_principal.set(grant.name)
        return await continuation(handler_call_details)
