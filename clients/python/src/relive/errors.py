"""The one exception tree of relive, on both sides of a call.

Services raise these; one server interceptor (``relive.core.interceptors``) answers each with
its status code and a ``google.rpc.ErrorInfo`` built by :func:`to_status_proto`. The SDK reads
a failed call back into the same class with :func:`from_rpc_error` and raises it ``from`` the
RpcError. So ``NotFound`` raised in the registry arrives in a client (or in another service)
as ``NotFound``, with its field and reason.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# The ErrorInfo domain of every error a relive service reports.
DOMAIN = "relive.dev"


class ReliveError(Exception):
    """Something relive reports on purpose. ``field`` names the offending input, when known;
    ``reason`` is the ErrorInfo reason (an UPPER_SNAKE_CASE word, the class's by default)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason = "RELIVE_ERROR"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field or ""
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})
        if field:
            self.metadata.setdefault("field", field)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ReliveError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(ReliveError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(ReliveError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(ReliveError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class PermissionDenied(ReliveError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(ReliveError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ResourceExhausted(ReliveError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Aborted(ReliveError):
    """A conflict that a retry may resolve."""

    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class Unavailable(ReliveError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(ReliveError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Cancelled(ReliveError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class Unimplemented(ReliveError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class Internal(ReliveError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[ReliveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Aborted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def status_code_of(error: ReliveError) -> grpc.StatusCode:
    """The status code a server answers ``error`` with; the bare base class is INTERNAL."""
    return error.code if error.code in _BY_CODE else grpc.StatusCode.INTERNAL


def to_status_proto(error: ReliveError) -> status_pb2.Status:
    """The rich status of ``error``: ErrorInfo always, BadRequest when a field is to blame."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    )
    details = [info]
    if error.field:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.message
                    )
                ]
            )
        )
        details.append(bad)
    code = status_code_of(error)
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def from_status_proto(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> ReliveError:
    """The error a call failed with: its class from the code, reason, field and metadata from
    the ErrorInfo and BadRequest details, when the server sent them."""
    reason, field, metadata = "", "", {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
            field = field or metadata.get("field", "")
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
    cls = _BY_CODE.get(code, ReliveError)
    err = cls(message or code.name, reason=reason or None, field=field, metadata=metadata)
    if cls is ReliveError:
        err.code = code
    return err


def from_rpc_error(error: grpc.RpcError) -> ReliveError:
    """Reads a failed call's status code and its details into a ReliveError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        status = None
    return from_status_proto(code, message or "", status)
