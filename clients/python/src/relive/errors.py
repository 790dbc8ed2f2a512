"""The client-side exception tree: every failed call raises one of these, ``from`` the RpcError."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ReliveError(Exception):
    """A call to a relive service failed. ``field`` names the offending input, when known."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        field: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.field = field
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ReliveError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ReliveError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ReliveError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ReliveError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ReliveError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ReliveError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ReliveError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(ReliveError):
    code = grpc.StatusCode.ABORTED


class Unavailable(ReliveError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ReliveError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ReliveError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(ReliveError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ReliveError):
    code = grpc.StatusCode.INTERNAL


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


def from_rpc_error(error: grpc.RpcError) -> ReliveError:
    """Reads the status code and the ErrorInfo/BadRequest details into a ReliveError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason, field, metadata = "", "", {}
    status = None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        status = None
    if status is not None:
        for detail in status.details:
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
    err = cls(message or code.name, reason=reason, field=field, metadata=metadata)
    if cls is ReliveError:
        err.code = code
    return err
