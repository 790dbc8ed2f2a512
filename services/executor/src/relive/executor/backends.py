"""The executor's view of the other services: revisions and models from the registry; events
and captures from the recorder. Client-side errors become domain errors here."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from relive import errors as client_errors
from relive.client.channel import PROJECT_METADATA, Access, call
from relive.core import errors, identity
from relive.pipeline.events import RecorderSink
from relive.pipeline.models import RegistryModelStore
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

T = TypeVar("T")

_MAP: dict[type[client_errors.ReliveError], type[errors.ReliveError]] = {
    client_errors.NotFound: errors.NotFound,
    client_errors.InvalidArgument: errors.InvalidArgument,
    client_errors.FailedPrecondition: errors.FailedPrecondition,
    client_errors.AlreadyExists: errors.AlreadyExists,
}


def _domain_error(e: client_errors.ReliveError, what: str) -> errors.ReliveError:
    if isinstance(e, client_errors.Unauthenticated | client_errors.PermissionDenied):
        return errors.FailedPrecondition(
            f"{what}: the service refused the executor's token ({e.message}); set "
            "RELIVE_SERVICE_TOKEN to a token with role: service in the tokens file",
            field="RELIVE_SERVICE_TOKEN",
        )
    cls = _MAP.get(type(e), errors.Unavailable)
    return cls(f"{what}: {e.message}", field=e.field or None)


def _domain(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except client_errors.ReliveError as e:
        raise _domain_error(e, what) from e


def _for(project: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata: the project the executor's service token works for on this call. The
    registry and recorder then show and create only there."""
    return ((PROJECT_METADATA, project),) if project else ()


class Registry:
    """The registry, called with the executor's service access; each call that works for a
    project names it, so the registry applies that project's visibility."""

    def __init__(self, endpoint: str, access: Access) -> None:
        self.endpoint = endpoint
        self.access = access
        self._channel = access.connect(endpoint)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._lock = threading.Lock()
        self._projects = identity.ProjectCache(self._lookup_project)
        self._stores: dict[str, RegistryModelStore] = {}

    def project_of(self, ion: str) -> str | None:
        """The project of ``ions/{ion}``, or None when the registry does not know it. Asked with
        the service token alone, which sees every project."""
        return self._projects.get(ion)

    def _lookup_project(self, ion: str) -> str | None:
        try:
            found = call(self._stub.GetIon, registry_pb2.GetIonRequest(name=f"ions/{ion}"))
        except client_errors.NotFound:
            return None
        except client_errors.ReliveError as e:
            raise _domain_error(e, f"cannot look up ions/{ion}") from e
        return found.project or identity.DEFAULT_PROJECT

    def get_revision(self, name: str, project: str | None) -> registry_pb2.Revision:
        get = functools.partial(self._stub.GetRevision, metadata=_for(project))
        return _domain(lambda: call(get, registry_pb2.GetRevisionRequest(name=name)), name)

    def models(self, project: str) -> RegistryModelStore:
        """Model versions as ``project``: runs store their models there."""
        with self._lock:
            if project not in self._stores:
                self._stores[project] = RegistryModelStore(
                    self.endpoint, access=self.access.for_project(project)
                )
            return self._stores[project]

    def close(self) -> None:
        self._channel.close()
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


class Recorder:
    def __init__(self, endpoint: str, access: Access) -> None:
        self.endpoint = endpoint
        self.access = access
        self._channel = access.connect(endpoint)
        self._stub = recorder_pb2_grpc.RecorderServiceStub(self._channel)

    def sink(self, ion: str, project: str) -> RecorderSink:
        return RecorderSink(self.endpoint, ion, access=self.access.for_project(project))

    def get_capture(self, name: str, project: str | None) -> Any:
        get = functools.partial(self._stub.GetCapture, metadata=_for(project))
        return _domain(lambda: call(get, recorder_pb2.GetCaptureRequest(name=name)), name)

    def events(
        self,
        ion: str,
        *,
        project: str | None,
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
        list_events = functools.partial(self._stub.ListEvents, metadata=_for(project))
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
                functools.partial(call, list_events, req), f"events of {ion}"
            )
            yield from resp.events
            token = resp.next_page_token
            if not token:
                return

    def close(self) -> None:
        self._channel.close()
