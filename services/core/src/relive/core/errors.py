"""Domain errors. Services raise these; one interceptor maps them to status codes.

They know nothing of gRPC, so the domain code stays testable without it.
"""

from __future__ import annotations


class ReliveError(Exception):
    """Base of every error relive reports to a caller on purpose."""

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
        self.field = field
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})
        if field:
            self.metadata.setdefault("field", field)


class InvalidArgument(ReliveError):
    reason = "INVALID_ARGUMENT"


class NotFound(ReliveError):
    reason = "NOT_FOUND"


class AlreadyExists(ReliveError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(ReliveError):
    reason = "FAILED_PRECONDITION"


class PermissionDenied(ReliveError):
    reason = "PERMISSION_DENIED"


class Unauthenticated(ReliveError):
    reason = "UNAUTHENTICATED"


class ResourceExhausted(ReliveError):
    reason = "RESOURCE_EXHAUSTED"


class Aborted(ReliveError):
    """A conflict that a retry may resolve."""

    reason = "ABORTED"


class Unavailable(ReliveError):
    reason = "UNAVAILABLE"
