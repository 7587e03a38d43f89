"""Typed errors carrying the gRPC status code, the server's reason and its metadata."""

from __future__ import annotations

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


def from_rpc_error(error: grpc.RpcError) -> StatekeeperError:
    call: Any = error  # grpc's errors are also Call objects; the stubs do not say so
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason, metadata = "", {}
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    return _BY_CODE.get(code, StatekeeperError)(code, message, reason, metadata)
