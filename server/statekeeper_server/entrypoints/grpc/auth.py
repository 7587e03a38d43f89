"""Bearer-token authentication and the table that says which permission each RPC needs.

Permissions are ordered: ``admin`` implies ``write`` implies ``read``. A call carries its token
in the ``authorization`` metadata as ``Bearer <token>``. With no token configured, the
interceptor is not installed and every call is allowed (auth off).

Which permission a method needs (``required_permission``):

1. ``PUBLIC_SERVICES`` (gRPC health, server reflection): none; reachable without a token.
2. ``PERMISSIONS``: an explicit entry for every method of the API. Read: methods that only
   look (Get, List, Walk, Render, Watch, LoadSavepoint). Write: methods that change state,
   and also those that change a consumer's or a task's state without touching a machine:
   ``Subscribe`` (takes deliveries, holding them from the consumer's other subscribers),
   ``Ack`` (moves the consumer's position: a reader could skip other subscribers' events),
   ``LeaseTasks`` and ``HeartbeatTask``. Admin: the AdminService, except ``GetServerInfo``
   (read: the server's facts, revealing nothing a reader cannot see otherwise).
3. Any method without an entry needs admin, so a new RPC is never more open than intended;
   tests/server/test_security.py fails for a method of the descriptors that has no entry.

Refusals are rich statuses: no or an unknown token is UNAUTHENTICATED (reason
``BEARER_TOKEN_REQUIRED`` / ``TOKEN_INVALID``), too weak a token PERMISSION_DENIED (reason
``INSUFFICIENT_PERMISSION``, metadata ``required_permission``, ``granted_permission``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
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

READ, WRITE, ADMIN = Permission.READ, Permission.WRITE, Permission.ADMIN

PERMISSIONS: Mapping[str, Mapping[str, Permission]] = {
    "statekeeper.v1.MachineTypeService": {
        "RegisterMachineType": WRITE,
        "GetMachineType": READ,
        "ListMachineTypes": READ,
        "RenderMachineTypeDiagram": READ,
    },
    "statekeeper.v1.NodeService": {
        "CreateRoot": WRITE,
        "AddChild": WRITE,
        "GetNode": READ,
        "ListChildren": READ,
        "WalkTree": READ,
        "DeleteNode": WRITE,
        "ApplyTransition": WRITE,
        "ExecuteBatch": WRITE,
        "ListNodes": READ,
        "ExecuteStream": WRITE,  # pipelines the write calls above
    },
    "statekeeper.v1.TaskService": {
        "GetTask": READ,
        "ListTasks": READ,
        "LeaseTasks": WRITE,  # takes tasks from the queue
        "HeartbeatTask": WRITE,
        "CompleteTask": WRITE,
        "FailTask": WRITE,
        "ReleaseTask": WRITE,
        "ListDeadLetters": READ,
        "ListTimers": READ,
        "RetryDeadLetter": WRITE,
        "DiscardDeadLetter": WRITE,
    },
    "statekeeper.v1.SavepointService": {
        "CreateRun": WRITE,
        "GetRun": READ,
        "ListRuns": READ,
        "DeleteRun": WRITE,
        "SaveEntityStates": WRITE,
        "UpdateEntityStates": WRITE,
        "AckProcessedTime": WRITE,
        "LoadSavepoint": READ,
        "ListSavepoints": READ,
        "UpdateSavepoint": WRITE,
        "CreateTreeSnapshot": WRITE,
        "ListTreeSnapshots": READ,
        "RestoreTreeSnapshot": WRITE,
        "ForkTreeSnapshot": WRITE,
        "DeleteTreeSnapshot": WRITE,
    },
    "statekeeper.v1.EventService": {
        "Watch": READ,
        "ListEvents": READ,
        "CreateConsumer": WRITE,
        "GetConsumer": READ,
        "ListConsumers": READ,
        "DeleteConsumer": WRITE,
        "Subscribe": WRITE,  # takes the consumer's deliveries
        "Ack": WRITE,  # moves the consumer's position
    },
    "statekeeper.v1.AdminService": {
        "CreateBackup": ADMIN,
        # The server's facts (revisions, version, uptime, cluster members): nothing a reader
        # cannot see otherwise; the inspector checks a login with it.
        "GetServerInfo": READ,
    },
}
"""Every RPC's permission, by service and method. Add an entry with every new RPC (the test
names any method without one); without an entry a method needs admin."""


def required_permission(
    method: str, permissions: Mapping[str, Mapping[str, Permission]] = PERMISSIONS
) -> Permission:
    """The permission a full method name (``/package.Service/Method``) needs; see the module doc."""
    service, _, name = method.lstrip("/").partition("/")
    if service in PUBLIC_SERVICES:
        return Permission.NONE
    methods = permissions.get(service)
    need = methods.get(name) if methods is not None else None
    return need if need is not None else Permission.ADMIN


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


def check(
    tokens: TokenTable,
    method: str,
    metadata: Iterable[tuple[str, Any]] | None,
    permissions: Mapping[str, Mapping[str, Permission]] = PERMISSIONS,
) -> Grant | None:
    """The caller's grant (None for a public method); raises Unauthenticated / PermissionDenied."""
    need = required_permission(method, permissions)
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

    def __init__(
        self,
        tokens: TokenTable,
        observers: list[CallObserver] | None = None,
        permissions: Mapping[str, Mapping[str, Permission]] = PERMISSIONS,
    ) -> None:
        self.tokens = tokens
        self.observers = observers if observers is not None else []
        self.permissions = permissions

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        try:
            grant = check(self.tokens, method, handler_call_details.invocation_metadata, self.permissions)
        except (Unauthenticated, PermissionDenied) as e:
            handler = await continuation(handler_call_details)
            if handler is None:  # unknown method: UNIMPLEMENTED, as without auth
                return None
            log.info("refused %s: %s (%s)", method, e.reason, e.message, extra={"method": method})
            return _denial(handler, e, method, self.observers)
        if grant is not None:
            current_principal.set(grant.name)
        return await continuation(handler_call_details)
