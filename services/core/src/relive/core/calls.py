"""How one service calls another: through the SDK's typed clients, with its service access
(``Config.service_access``), and with what the other service refused turned into what this
service's own caller should see.

The one mapping that matters: the other service refusing this service's own token is a
deployment problem, not the caller's, so it becomes FAILED_PRECONDITION naming
RELIVE_SERVICE_TOKEN. The caller's own mistakes (not found, invalid, exists, precondition)
pass through with their field and reason; anything else means the other service could not
answer, which is UNAVAILABLE to this one's caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from relive.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReliveError,
    Unauthenticated,
    Unavailable,
)

SERVICE_TOKEN_VARIABLE = "RELIVE_SERVICE_TOKEN"
PASSED_ON: tuple[type[ReliveError], ...] = (
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    AlreadyExists,
)


def upstream_error(error: ReliveError, what: str, service: str) -> ReliveError:
    """What this service answers when ``service`` refused a call it made to do ``what``."""
    if isinstance(error, Unauthenticated | PermissionDenied):
        return FailedPrecondition(
            f"{what}: the {service} refused this service's token ({error.message}); set "
            f"{SERVICE_TOKEN_VARIABLE} to a token with role: service in the tokens file",
            field=SERVICE_TOKEN_VARIABLE,
        )
    for cls in PASSED_ON:
        if isinstance(error, cls):
            return cls(
                f"{what}: {error.message}",
                field=error.field,
                reason=error.reason,
                metadata=error.metadata,
            )
    return Unavailable(f"{what}: the {service} answered {error.code.name}: {error.message}")


@contextmanager
def calling(service: str, what: str) -> Iterator[None]:
    """Raises :func:`upstream_error` of any ReliveError inside, ``from`` it."""
    try:
        yield
    except ReliveError as e:
        raise upstream_error(e, what, service) from e
