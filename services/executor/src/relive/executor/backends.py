"""The executor's view of the other services: revisions and models from the registry; events
and captures from the recorder. Client-side errors become domain errors here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from relive import errors as client_errors
from relive.client.channel import call, connect_channel
from relive.core import errors
from relive.pipeline.events import RecorderSink
from relive.pipeline.models import RegistryModelStore
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

T = TypeVar("T")

_MAP: dict[type[client_errors.ReliveError], type[errors.ReliveError]] = {
    client_errors.NotFound: errors.NotFound,
    client_errors.InvalidArgument: errors.InvalidArgument,
    client_errors.FailedPrecondition: errors.FailedPrecondition,
    client_errors.PermissionDenied: errors.PermissionDenied,
    client_errors.AlreadyExists: errors.AlreadyExists,
}


def _domain(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except client_errors.ReliveError as e:
        cls = _MAP.get(type(e), errors.Unavailable)
        raise cls(f"{what}: {e.message}", field=e.field or None) from e


class Registry:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._channel = connect_channel(endpoint)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.models = RegistryModelStore(endpoint)

    def get_revision(self, name: str) -> registry_pb2.Revision:
        return _domain(
            lambda: call(self._stub.GetRevision, registry_pb2.GetRevisionRequest(name=name)), name
        )

    def close(self) -> None:
        self._channel.close()
        self.models.close()


class Recorder:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._channel = connect_channel(endpoint)
        self._stub = recorder_pb2_grpc.RecorderServiceStub(self._channel)

    def sink(self, ion: str) -> RecorderSink:
        return RecorderSink(self.endpoint, ion)

    def get_capture(self, name: str) -> Any:
        return _domain(
            lambda: call(self._stub.GetCapture, recorder_pb2.GetCaptureRequest(name=name)), name
        )

    def events(
        self,
        ion: str,
        *,
        runs: list[str] | None = None,
        types: list[str] | None = None,
        start: Any = None,
        end: Any = None,
    ) -> Iterator[event_pb2.Event]:
        """Events in timeline order, every page."""
        flt = recorder_pb2.EventFilter(runs=runs or [], types=types or [])
        if start is not None:
            flt.start_time.CopyFrom(start)
        if end is not None:
            flt.end_time.CopyFrom(end)
        token = ""
        while True:
            req = recorder_pb2.ListEventsRequest(
                parent=ion,
                filter=flt,
                order=recorder_pb2.EVENT_ORDER_TIMELINE,
                page_size=1000,
                page_token=token,
            )
            resp: recorder_pb2.ListEventsResponse = _domain(
                functools.partial(call, self._stub.ListEvents, req), f"events of {ion}"
            )
            yield from resp.events
            token = resp.next_page_token
            if not token:
                return

    def close(self) -> None:
        self._channel.close()


def is_unavailable(e: BaseException) -> bool:
    return isinstance(e, grpc.RpcError | client_errors.Unavailable)
