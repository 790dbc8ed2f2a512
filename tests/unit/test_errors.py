"""One error tree: what a service raises arrives in a client as the same class, with its field
and reason; and what one service's call to another was refused with, as its caller sees it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from relive import errors
from relive.core.calls import calling, upstream_error
from relive.core.interceptors import to_status


class FailedCall(grpc.RpcError):
    """What grpc raises on the client for a status a server aborted with (code, details and
    trailing metadata), here straight from that status, with no socket in between."""

    def __init__(self, status: Any) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def across_the_wire(error: errors.ReliveError) -> errors.ReliveError:
    return errors.from_rpc_error(FailedCall(to_status(error)))


@pytest.mark.parametrize(
    "cls",
    [
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.PermissionDenied,
        errors.Unauthenticated,
        errors.ResourceExhausted,
        errors.Aborted,
        errors.Unavailable,
        errors.DeadlineExceeded,
        errors.Cancelled,
        errors.Unimplemented,
        errors.Internal,
    ],
)
def test_a_raised_error_arrives_as_the_same_class_with_field_and_reason(
    cls: type[errors.ReliveError],
) -> None:
    raised = cls("ions/x has no revision 7", field="revision", reason="NO_SUCH_REVISION")
    got = across_the_wire(raised)
    assert type(got) is cls
    assert (got.message, got.field, got.reason) == (raised.message, "revision", "NO_SUCH_REVISION")
    assert got.metadata == {"field": "revision"}
    assert got.code == cls.code


def test_the_status_carries_error_info_and_bad_request() -> None:
    raised = errors.InvalidArgument("page_size must be positive", field="page_size")
    status = errors.to_status_proto(raised)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", errors.DOMAIN)
    assert bad.field_violations[0].field == "page_size"
    # No field, no BadRequest.
    assert len(errors.to_status_proto(errors.NotFound("gone")).details) == 1


def test_the_bare_base_class_is_internal_and_unknown_codes_keep_their_code() -> None:
    assert errors.status_code_of(errors.ReliveError("?")) == grpc.StatusCode.INTERNAL
    got = errors.from_status_proto(grpc.StatusCode.DATA_LOSS, "lost", None)
    assert type(got) is errors.ReliveError and got.code == grpc.StatusCode.DATA_LOSS
    assert str(got) == "DATA_LOSS: lost"


def test_a_status_without_details_still_maps_by_code() -> None:
    plain = rpc_status.to_status(status_pb2.Status(code=5, message="no such ion"))
    got = errors.from_rpc_error(FailedCall(plain))
    assert type(got) is errors.NotFound and got.message == "no such ion"
    assert (got.field, got.reason) == ("", "NOT_FOUND")


def test_a_refused_service_token_names_the_variable_to_fix() -> None:
    for refused in (errors.Unauthenticated("bad token"), errors.PermissionDenied("no role")):
        mapped = upstream_error(refused, "cannot look up ions/x", "registry")
        assert type(mapped) is errors.FailedPrecondition
        assert mapped.field == "RELIVE_SERVICE_TOKEN"
        assert "the registry refused this service's token" in mapped.message


def test_the_callers_mistakes_pass_through_and_the_rest_is_unavailable() -> None:
    missing = upstream_error(
        errors.NotFound("no revision 7", field="name", reason="NO_REVISION"), "ions/x", "registry"
    )
    assert type(missing) is errors.NotFound
    assert (missing.message, missing.field, missing.reason) == (
        "ions/x: no revision 7",
        "name",
        "NO_REVISION",
    )
    broken = upstream_error(errors.Internal("boom"), "events of ions/x", "recorder")
    assert type(broken) is errors.Unavailable
    assert broken.message == "events of ions/x: the recorder answered INTERNAL: boom"
    with pytest.raises(errors.FailedPrecondition) as caught, calling("registry", "ions/x"):
        raise errors.Unauthenticated("the bearer token is not valid")
    assert isinstance(caught.value.__cause__, errors.Unauthenticated)
