"""The one table from domain errors to gRPC status codes, and the rich status they travel in:
a google.rpc.Status with an ErrorInfo (reason, metadata) and, when a field is named, a BadRequest."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from statekeeper_server.domain import errors

ERROR_DOMAIN = "statekeeper.v1"

STATUS_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code(error: errors.DomainError) -> grpc.StatusCode:
    cls: type[errors.DomainError] = (
        type(error.cause) if isinstance(error, errors.BatchOperationFailed) else type(error)
    )
    for klass in cls.__mro__:
        if klass in STATUS_CODES:
            return STATUS_CODES[klass]
    return grpc.StatusCode.UNKNOWN


def rich_status(error: errors.DomainError) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, message, serialized google.rpc.Status) for the grpc-status-details-bin trailer."""
    code = status_code(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    details = [any_pb2.Any()]
    details[0].Pack(info)
    field = error.metadata.get("field")
    if field:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=error.message)
            ]
        )
        extra = any_pb2.Any()
        extra.Pack(bad)
        details.append(extra)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    return code, error.message, status.SerializeToString()
