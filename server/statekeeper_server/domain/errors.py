"""Domain errors. Each carries a stable machine-readable reason and metadata; the service layer
maps the class to a gRPC status code in one table (entrypoints/grpc/errors.py)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client can be told about."""

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(DomainError):
    """The request is malformed or names something impossible; nothing was written."""


class NotFound(DomainError):
    """The request names something that does not exist."""


class AlreadyExists(DomainError):
    """The request would create something that exists already."""


class FailedPrecondition(DomainError):
    """The request is well formed but the current state does not allow it."""


class Aborted(DomainError):
    """A compare-and-swap did not match; re-read and retry."""


class ResourceExhausted(DomainError):
    """A configured limit was reached."""


class Unavailable(DomainError):
    """The server could not make the write durable; it is safe to retry with the same request_id."""


class OutOfRange(DomainError):
    """A position (revision, page token) lies outside what is available."""


class Unauthenticated(DomainError):
    """The call carries no valid credentials (no bearer token, or an unknown one)."""


class PermissionDenied(DomainError):
    """The credentials are valid but lack the permission the call needs."""


class BatchOperationFailed(DomainError):
    """One operation of a batch failed: wraps its error and says which operation it was."""

    def __init__(self, index: int, cause: DomainError) -> None:
        super().__init__(cause.reason, f"operation {index}: {cause.message}", **cause.metadata)
        self.metadata["operation_index"] = str(index)
        self.index = index
        self.cause = cause
