"""The executor's view of the other services: revisions and models from the registry; events
and captures from the recorder. Both are the SDK's typed clients on the executor's service
access; what they refuse becomes what the executor's caller sees (``relive.core.calls``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relive.client.channel import Access
from relive.client.recorder import RecorderClient
from relive.client.registry import RegistryClient
from relive.client.sink import EventSink
from relive.core import identity
from relive.core.calls import calling
from relive.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from relive.pipeline.models import RegistryModelStore
from relive.recorder.v1 import event_pb2, recorder_pb2
from relive.registry.v1 import registry_pb2


class Registry:
    """The registry, called with the executor's service access; each call that works for a
    project names it, so the registry applies that project's visibility."""

    def __init__(self, endpoint: str, access: Access) -> None:
        self.endpoint = endpoint
        self.access = access
        self._client = RegistryClient(access.connect(endpoint))
        self._lock = threading.Lock()
        self._projects = identity.ProjectCache(self._lookup_project)
        self._stores: dict[str, RegistryModelStore] = {}

    def project_of(self, ion: str) -> str | None:
        """The project of ``ions/{ion}``, or None when the registry does not know it. Asked with
        the service token alone, which sees every project."""
        return self._projects.get(ion)

    def _lookup_project(self, ion: str) -> str | None:
        with calling("registry", f"cannot look up ions/{ion}"):
            try:
                found = self._client.get_ion(ion)
            except NotFound:
                return None
        return found.project or identity.DEFAULT_PROJECT

    def get_revision(self, name: str, project: str | None) -> registry_pb2.Revision:
        ion, _, revision = name.partition("/revisions/")
        with calling("registry", name):
            return self._client.for_project(project).get_revision(ion, revision)

    # Code snapshots: each project keeps its own record of a tree (the registry stores the
    # archive once), so every call names the run's project.

    def get_code_snapshot(self, name: str, project: str) -> registry_pb2.CodeSnapshot | None:
        """The snapshot's metadata (its file manifest too), or None when it is not stored."""
        with calling("registry", name):
            try:
                return self._client.for_project(project).get_code_snapshot(name)
            except NotFound:
                return None

    def create_code_snapshot(
        self, header: registry_pb2.CodeSnapshot, archive: Path, project: str
    ) -> registry_pb2.CodeSnapshot:
        what = f"cannot store code snapshot {header.name}"
        try:
            with calling("registry", what):
                return self._client.for_project(project).create_code_snapshot(header, archive)
        except Unavailable as e:
            cause = e.__cause__
            if isinstance(cause, ResourceExhausted):  # the registry's bound, not a hiccup
                raise FailedPrecondition(
                    f"{what}: {cause.message}",
                    field=cause.metadata.get("setting", "RELIVE_CODE_MAX_BYTES"),
                ) from cause
            raise

    def download_code_snapshot(
        self, name: str, out: Path, project: str
    ) -> registry_pb2.CodeSnapshot:
        """Writes the snapshot's archive to ``out``; NotFound when it is not stored."""
        with calling("registry", name):
            return self._client.for_project(project).download_code_snapshot(name, out)

    def models(self, project: str) -> RegistryModelStore:
        """Model versions as ``project``: runs store their models there."""
        with self._lock:
            if project not in self._stores:
                self._stores[project] = RegistryModelStore(
                    self.endpoint, access=self.access.for_project(project)
                )
            return self._stores[project]

    def close(self) -> None:
        self._client.channel.close()
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


class Recorder:
    def __init__(self, endpoint: str, access: Access) -> None:
        self.endpoint = endpoint
        self.access = access
        self._client = RecorderClient(endpoint, access=access)

    def sink(self, ion: str, project: str) -> EventSink:
        """A sink of ``ion``'s events, written for ``project``, over the executor's channel."""
        return EventSink(self._client.for_project(project).channel, ion)

    def get_capture(self, name: str, project: str | None) -> Any:
        with calling("recorder", name):
            return self._client.for_project(project).get_capture(name)

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
        with calling("recorder", f"events of {ion}"):
            yield from self._client.for_project(project).list_events(
                ion, filter=flt, order="timeline", page_size=1000
            )

    def close(self) -> None:
        self._client.close()
