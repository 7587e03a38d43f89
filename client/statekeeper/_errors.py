"""Typed errors carrying the gRPC status code, the server's reason and its metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2


class StatekeeperError(Exception):
    """Any error from the server. `code` is the gRPC status code; `reason` the stable
    machine-readable reason (e.g. INVALID_TRANSITION); `metadata` its details."""

    def __init__(
        self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict[str, str] | None = None
    ):
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgumentError(StatekeeperError):
    """The request is malformed; nothing was written. metadata['field'] names the field."""


class NotFoundError(StatekeeperError):
    """A node, machine type or other named thing does not exist."""


class AlreadyExistsError(StatekeeperError):
    """The thing to create exists already."""


class FailedPreconditionError(StatekeeperError):
    """Not allowed in the current state, e.g. an invalid transition (metadata: current_state,
    allowed_transitions)."""


class AbortedError(StatekeeperError):
    """A compare-and-swap did not match (TRANSITION_COUNT_MISMATCH): re-read and retry."""


class ResourceExhaustedError(StatekeeperError):
    """A limit was reached (metadata['limit'] names it), or the server is shedding load."""


class UnavailableError(StatekeeperError):
    """The server is unreachable or could not make a write durable; retry with the same request_id."""


class ConnectionFailedError(UnavailableError, ConnectionError):
    """No connection to the server could be made. `reason` says why and `hint` how to fix it:

    CONNECTION_REFUSED (nothing listens there), NAME_NOT_RESOLVED, CONNECT_TIMEOUT (no answer),
    TLS_REQUIRED (the server speaks TLS, the client did not), TLS_NOT_OFFERED (the client
    speaks TLS, the server does not), SERVER_CERTIFICATE_UNTRUSTED, SERVER_NAME_MISMATCH,
    CLIENT_CERTIFICATE_REQUIRED (mutual TLS, no client certificate given),
    CLIENT_CERTIFICATE_REJECTED, CONNECTION_FAILED (anything else; `message` has gRPC's words).

    It is also the builtin ConnectionError, so code written for earlier versions still catches it.
    """

    def __init__(self, target: str, reason: str, what: str, hint: str, details: str = "") -> None:
        self.target = target
        self.hint = hint
        self.details = details
        message = f"cannot connect to {target}: {what}" + (f"; {hint}" if hint else "")
        super().__init__(grpc.StatusCode.UNAVAILABLE, message, reason, {"target": target})

    @property
    def retryable(self) -> bool:
        """Worth retrying as is: the server may just be starting or restarting."""
        return self.reason in _TRANSIENT_CONNECT_REASONS

    def __str__(self) -> str:
        return self.message


_TRANSIENT_CONNECT_REASONS = frozenset({"CONNECTION_REFUSED", "CONNECT_TIMEOUT", "CONNECTION_FAILED"})


class OutOfRangeError(StatekeeperError):
    """A position (e.g. a revision) lies outside what the server still has."""


class UnauthenticatedError(StatekeeperError):
    """No valid credentials."""


class PermissionDeniedError(StatekeeperError):
    """The credentials lack the permission the call needs."""


class DeadlineExceededError(StatekeeperError):
    """The call's deadline passed before the server answered; a write may or may not have applied:
    retry with the same request_id."""


_BY_CODE: dict[grpc.StatusCode, type[StatekeeperError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def connection_error(
    target: str, details: str, *, tls: bool, client_cert: bool, server_speaks_tls: bool | None = None
) -> ConnectionFailedError | None:
    """What gRPC's words for a failed connection mean, and how to fix it; None when `details`
    is not about connecting. server_speaks_tls: what a direct TLS handshake found, if one was tried."""
    text = details.lower()
    flag = "(CLI: --tls-ca CA.pem, or --tls for the system's CAs)"
    # A closed socket means a refused handshake only while connecting: a server that goes
    # away in the middle of a call (killed, restarted) closes it too, and that is worth a retry.
    closed = ("socket closed" in text or "connection reset" in text) and (
        "failed to connect" in text or server_speaks_tls is not None
    )
    cases: list[tuple[bool, str, str, str]] = [
        (
            "connection refused" in text,
            "CONNECTION_REFUSED",
            "connection refused: nothing is listening there",
            "is the server running (statekeeper serve) and is the address right (--server, STATEKEEPER_ADDRESS)?",
        ),
        (
            "dns resolution failed" in text or "name or service not known" in text,
            "NAME_NOT_RESOLVED",
            "the host name does not resolve",
            "check the host part of the address",
        ),
        (
            tls and "wrong_version_number" in text,
            "TLS_NOT_OFFERED",
            "the TLS handshake failed: the server does not speak TLS",
            "connect without TLS options (no tls/tls_ca/tls_cert), or start the server with --tls-cert-file and --tls-key-file",
        ),
        (
            tls and "certificate_verify_failed" in text,
            "SERVER_CERTIFICATE_UNTRUSTED",
            "the server's certificate is not signed by a CA this client trusts",
            f"pass the CA that signed it as tls_ca {flag}",
        ),
        (
            tls and ("peer name" in text or "hostname" in text),
            "SERVER_NAME_MISMATCH",
            "the server's certificate is not for this host name",
            "connect by a name the certificate lists, or set tls_server_name (CLI: --tls-server-name)",
        ),
        (
            not tls and server_speaks_tls is not False and closed,
            "TLS_REQUIRED",
            "the server closed the connection at once"
            + (": it speaks TLS" if server_speaks_tls else ": it probably requires TLS"),
            f"connect with TLS: tls_ca=CA.pem or tls=True {flag}",
        ),
        (
            tls and not client_cert and closed,
            "CLIENT_CERTIFICATE_REQUIRED",
            "the server closed the connection after the TLS handshake: it requires a client certificate (mutual TLS)",
            "pass tls_cert and tls_key (CLI: --tls-cert, --tls-key) signed by the CA the server trusts",
        ),
        (
            tls and client_cert and closed,
            "CLIENT_CERTIFICATE_REJECTED",
            "the server closed the connection after the TLS handshake: it rejected the client certificate",
            "use a certificate signed by the server's --tls-client-ca-file CA, valid now and made for client authentication",
        ),
        (
            "deadline exceeded" in text or "timed out" in text,
            "CONNECT_TIMEOUT",
            "no answer in time",
            "is the address right, and does a firewall let the port through?",
        ),
        (
            "failed to connect" in text or "ssl handshake failed" in text,
            "CONNECTION_FAILED",
            details,
            "",
        ),
    ]
    for matched, reason, what, hint in cases:
        if matched:
            return ConnectionFailedError(target, reason, what, hint, details)
    return None


@dataclass(frozen=True)
class ConnectInfo:
    """How a client connects, so a failed call can say what is wrong with the connection."""

    target: str
    tls: bool
    client_cert: bool


def _error_info(status: status_pb2.Status) -> tuple[str, dict[str, str]]:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


def from_rpc_error(error: grpc.RpcError, connection: ConnectInfo | None = None) -> StatekeeperError:
    call: Any = error  # grpc's errors are also Call objects; the stubs do not say so
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason, metadata = "", dict[str, str]()
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            reason, metadata = _error_info(status_pb2.Status.FromString(value))
    if code == grpc.StatusCode.UNAVAILABLE and not reason and connection is not None:
        failed = connection_error(
            connection.target, message, tls=connection.tls, client_cert=connection.client_cert
        )
        if failed is not None:
            return failed
    return _BY_CODE.get(code, StatekeeperError)(code, message, reason, metadata)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> StatekeeperError:
    """The error of a call answered with a google.rpc.Status (a call of ExecuteStream): the
    same class, code, message, reason and metadata as from_rpc_error gives for that status."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    reason, metadata = _error_info(status)
    return _BY_CODE.get(code, StatekeeperError)(code, status.message, reason, metadata)


# The server failed-stop (a write could not be made durable): it refuses everything until it is
# restarted, so a retry within seconds cannot help; retry with the same request_id once it is back.
_FAIL_STOP_REASONS = frozenset({"STORE_FAILED", "COMMIT_OUTCOME_UNKNOWN"})


def is_transient(error: StatekeeperError) -> bool:
    """UNAVAILABLE that a prompt retry may cure: not a connection problem a retry cannot fix
    (TLS, certificates), not a server that has stopped."""
    if isinstance(error, ConnectionFailedError):
        return error.retryable
    return isinstance(error, UnavailableError) and error.reason not in _FAIL_STOP_REASONS
