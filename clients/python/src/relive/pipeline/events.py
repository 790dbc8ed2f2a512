"""Building events and sending them to the recorder, in batches, with client-made ids.

The pipeline code depends only on the small :class:`EventSink` protocol, so it can record into
a list in tests and into the recorder in a run.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from relive import hlc

if TYPE_CHECKING:
    from relive.client.channel import Access
from relive.recorder.v1 import event_pb2

Event = event_pb2.Event
log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where events go. ``flush`` returns once every emitted event is stored (or raises)."""

    def emit(self, event: Event) -> None: ...

    def flush(self) -> None: ...


class Clock:
    """This process's hybrid logical clock (``relive.hlc``), as (physical ms, logical) pairs.

    One clock per process, as DESIGN.md asks: the executor's RPCs, its runs and the
    components in one Ray worker all stamp from the same causal history.
    """

    def now(self) -> tuple[int, int]:
        return hlc.process_clock().now_pair()

    def observe(self, ms: int, logical: int) -> None:
        """Merges a stamp from elsewhere (the executor's, sent with a Ray task, or back)."""
        if ms:
            hlc.update((ms, logical))


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(_jsonable(dict(value)))
    return s


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


class EventFactory:
    """Stamps events with identity, HLC, time, place and trace context."""

    def __init__(
        self,
        ion: str,
        run: str = "",
        node: str = "",
        component: str = "",
        trace_id: str = "",
        clock: Clock | None = None,
        span_id: str = "",
        span_of: Callable[[str, str], str] | None = None,
    ) -> None:
        self.ion = ion
        self.run = run
        self.node = node
        self.component = component
        self.trace_id = trace_id
        self.clock = clock or Clock()
        # The span an event belongs to: fixed, or looked up by (node, component).
        self.span_id = span_id
        self.span_of = span_of

    def make(self, type_: str, *, node: str | None = None, component: str | None = None) -> Event:
        ms, logical = self.clock.now()
        ts = Timestamp()
        ts.GetCurrentTime()
        node = self.node if node is None else node
        component = self.component if component is None else component
        span_id = self.span_of(node, component) if self.span_of else self.span_id
        return Event(
            ion=self.ion,
            event_id=uuid.uuid4().hex,
            hlc=event_pb2.Hlc(physical_ms=ms, logical=logical),
            time=ts,
            type=type_,
            run=self.run,
            node=node,
            component=component,
            trace_id=self.trace_id,
            span_id=span_id,
        )

    def span(
        self,
        name: str,
        span_id: str,
        parent_span_id: str,
        start: tuple[tuple[int, int], Timestamp],
        error: str = "",
        **where: str,
    ) -> Event:
        """A finished span of the run's trace, placed in the timeline where it started."""
        e = self.make("span", **where)
        (ms, logical), started = start
        e.hlc.physical_ms, e.hlc.logical = ms, logical
        e.time.CopyFrom(started)
        e.span_id = span_id
        e.span.name = name
        e.span.parent_span_id = parent_span_id
        e.span.start_time.CopyFrom(started)
        e.span.end_time.GetCurrentTime()
        e.span.span_kind = 1  # INTERNAL
        e.span.service_name = "relive-executor"
        if error:
            e.span.status_code = 2  # ERROR
            e.span.status_message = error[:1000]
        return e

    def lifecycle(
        self, type_: str, state: str, details: Mapping[str, Any] | None = None, **where: str
    ) -> Event:
        e = self.make(type_, **where)
        e.lifecycle.state = state
        if details:
            e.lifecycle.details.CopyFrom(to_struct(details))
        return e

    def stat(
        self,
        name: str,
        value: float,
        step: int = 0,
        labels: Mapping[str, str] | None = None,
        **where: str,
    ) -> Event:
        e = self.make("stat", **where)
        e.stat.name = name
        e.stat.value = float(value)
        e.stat.step = int(step)
        for k, v in (labels or {}).items():
            e.stat.labels[k] = str(v)
        return e

    def model(self, action: str, version: str, sha256: str, batch: int = 0, **where: str) -> Event:
        e = self.make(f"model.{action}", **where)
        e.model.model_version = version
        e.model.sha256 = sha256
        e.model.action = action
        e.model.batch = int(batch)
        return e

    def dataset(self, uri: str, sha256: str, size: int, **where: str) -> Event:
        e = self.make("dataset.used", **where)
        e.dataset.uri = uri
        e.dataset.sha256 = sha256
        e.dataset.size_bytes = int(size)
        return e

    def error(
        self, type_: str, error_type: str, message: str, traceback: str = "", **where: str
    ) -> Event:
        e = self.make(type_, **where)
        e.error.error_type = error_type
        e.error.message = message[:4000]
        e.error.traceback = traceback[-8000:]
        return e

    def human(self, user: str, action: str, comment: str = "", **where: str) -> Event:
        e = self.make("human.approval", **where)
        e.human_action.user = user
        e.human_action.action = action
        e.human_action.comment = comment
        return e

    def custom(self, type_: str, data: Mapping[str, Any], **where: str) -> Event:
        e = self.make(type_, **where)
        e.custom.data.CopyFrom(to_struct(data))
        return e

    def log(self, message: str, severity: str = "INFO", **where: str) -> Event:
        e = self.make("log", **where)
        e.log.severity = severity
        e.log.message = message[:8000]
        return e


class ListSink:
    """Keeps events in memory: for tests and for running a component without a recorder."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def flush(self) -> None:
        return None


class RecorderSink:
    """Buffers events and appends them to the recorder in batches; a resend is deduplicated
    by the recorder through each event's id, so retries never double an event."""

    def __init__(
        self,
        endpoint: str,
        ion: str,
        batch_size: int = 500,
        timeout: float = 30.0,
        access: Access | None = None,
    ) -> None:
        from relive.client.channel import Access
        from relive.recorder.v1 import recorder_pb2_grpc

        self._channel = (access or Access()).connect(endpoint)
        self._stub = recorder_pb2_grpc.RecorderServiceStub(self._channel)
        self._parent = ion
        self._batch_size = batch_size
        self._timeout = timeout
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buffer: list[Event] = []
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()

    def emit(self, event: Event) -> None:
        with self._lock:
            self._buffer.append(event)
            full = len(self._buffer) >= self._batch_size
        if full:
            self.flush()

    def flush_every(self, interval: float) -> None:
        """Flushes in the background every ``interval`` seconds, until ``close``."""
        if self._timer is not None:
            return
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.flush()
                except Exception:  # kept in no buffer: the next flush or close reports it
                    log.warning("background flush to the recorder failed", exc_info=True)

        self._timer = threading.Thread(target=loop, name="recorder-flush", daemon=True)
        self._timer.start()

    def flush(self) -> None:
        from relive.client.channel import call
        from relive.recorder.v1 import recorder_pb2

        with self._flush_lock:
            with self._lock:
                pending, self._buffer = self._buffer, []
            for start in range(0, len(pending), self._batch_size):
                batch = pending[start : start + self._batch_size]
                try:
                    resp = call(
                        self._stub.AppendEvents,
                        recorder_pb2.AppendEventsRequest(parent=self._parent, events=batch),
                        timeout=self._timeout,
                        attempts=6,
                    )
                except Exception:
                    with self._lock:  # keep them for the next attempt; ids make it safe
                        self._buffer[:0] = pending[start:]
                    raise
                for r in resp.rejections:
                    log.warning("the recorder rejected an event (%s): %s", r.field, r.reason)

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(5)
        try:
            self.flush()
        finally:
            self._channel.close()
