"""``EventSink``: what programs record through.

``record()`` and the ``log_*`` helpers build each event with ``relive.events`` straight into
the outgoing batch and stamp it with the process's hybrid logical clock and a producer
identity (producer id plus a sequence that increases with the clock), then queue it;
``emit()`` queues a built event the same way, and forwards one that carries its own identity
unchanged. A background thread (``relive.client.stream.BatchStream``) streams batches over
``StreamEvents``; after a failure it reconnects and sends every unacknowledged batch again,
unchanged, and the recorder stores each event once. The queue is bounded: when it is full
``record()`` blocks (or, with ``block=False``, raises ``BufferFull``). Nothing is dropped
silently: rejected or unsendable events are kept in ``failures`` and logged.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import traceback as tb
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace as otel_trace

from relive import events as build
from relive import hlc as hlc_mod
from relive.client.channel import Access
from relive.client.recorder import ion_parent
from relive.client.stream import BatchStream
from relive.errors import InvalidArgument, ReliveError
from relive.events import TimeLike, default_producer_id, to_struct
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc

log = logging.getLogger(__name__)

Event = event_pb2.Event


class BufferFull(ReliveError):
    """``record()`` with ``block=False`` found the sink's queue full; the event was not queued."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FlushTimeout(ReliveError):
    """``close()`` or ``flush()`` gave up with events still unacknowledged."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EventsRefused(InvalidArgument):
    """The recorder refused events of a run, so its timeline lacks them; the sink's
    ``failures`` hold them with the recorder's reasons."""

    reason = "EVENTS_REFUSED"


@dataclass
class Failure:
    """Events the recorder refused, with why; ``rejection`` is None when the whole batch was."""

    event: Event
    reason: str
    field: str = ""


@dataclass
class SinkStats:
    queued: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    batches: int = 0
    reconnects: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return self.stored + self.duplicates + self.failed


class EventSink:
    """Buffers events and streams them to the recorder from a background thread.

    Events are built straight into the protobuf batch that will be sent, so the hot path
    copies nothing. run, node and component given here go on every event that sets none.
    ``target`` is ``host:port`` (connected with ``access``, by default the RELIVE_* variables)
    or an open channel, which the sink does not close.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        ion: str,
        *,
        producer_id: str | None = None,
        clock: hlc_mod.HybridLogicalClock | None = None,
        run: str = "",
        node: str = "",
        component: str = "",
        max_queue: int = 100_000,
        batch_size: int = 1000,
        window: int = 2,
        block: bool = True,
        linger_s: float = 0.005,
        max_backoff_s: float = 2.0,
        access: Access | None = None,
    ) -> None:
        self._own_channel = isinstance(target, str)
        self.channel: grpc.Channel = (
            (access or Access()).connect(target) if isinstance(target, str) else target
        )
        self.parent = ion_parent(ion)
        self.clock = clock or hlc_mod.process_clock()
        self._producer = build.Producer(producer_id or default_producer_id(), self.clock)
        self.producer_id = self._producer.producer_id
        self.run = run
        self.node = node
        self.component = component
        self._max_queue = max(1, max_queue)
        self._batch_size = max(1, batch_size)
        self._block = block
        self._linger_s = linger_s
        # One lock guards the buffer, the producer sequence and the stats.
        self._cond = threading.Condition(threading.Lock())
        self._ready: collections.deque[recorder_pb2.StreamEventsRequest] = collections.deque()
        self._current: recorder_pb2.StreamEventsRequest | None = None
        self._current_events: Any = None
        self._current_count = 0
        self._current_since = 0.0
        self._pending = 0
        self._closing = False
        self._closed = False
        self.stats = SinkStats()
        stream = BatchStream(
            recorder_pb2_grpc.RecorderServiceStub(self.channel),
            self,
            name=self.producer_id,
            window=window,
            max_backoff_s=max_backoff_s,
        )
        self._thread = threading.Thread(
            target=stream.run, name=f"relive-sink-{self.producer_id}", daemon=True
        )
        self._thread.start()
        atexit.register(self._atexit)

    @property
    def failures(self) -> list[Failure]:
        return self.stats.failures

    def refused(self, run: str | None = None) -> list[Failure]:
        """The events the recorder refused so far (of ``run`` only, when given)."""
        with self._cond:
            return [f for f in self.stats.failures if run is None or f.event.run == run]

    def for_run(self, run: str) -> RunSink:
        """This sink as one run sees it: its ``flush`` raises when the recorder refused any
        event of ``run``, so the run's end reports what its timeline lacks."""
        return RunSink(self, run)

    # -- producing

    def _slot(self, block: bool | None, timeout: float | None) -> Event:
        """A new event in the batch being filled; the caller holds the lock."""
        if self._closed or self._closing:
            raise ReliveError("the sink is closed", field="sink")
        if self._pending >= self._max_queue:
            if not (self._block if block is None else block):
                raise BufferFull(
                    f"the sink holds {self._pending} unsent events (max_queue); the event was "
                    "not recorded",
                    field="event",
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._pending >= self._max_queue:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise BufferFull("timed out waiting for room in the sink", field="event")
                self._cond.wait(left)
                if self._closed or self._closing:
                    raise ReliveError("the sink is closed", field="sink")
        events = self._current_events
        if events is None:
            current = self._current = recorder_pb2.StreamEventsRequest()
            current.batch.parent = self.parent
            events = self._current_events = current.batch.events
            self._current_count = 0
            self._current_since = time.monotonic()
        e: Event = events.add()
        self._current_count += 1
        return e

    def _commit(self, e: Event, run: str, node: str, component: str) -> Event:
        """Stamps identity and HLC, fills defaults, and counts the event; the caller holds
        the lock, so producer sequences follow the clock and the order batches leave in."""
        self._producer.stamp(e)
        if run or self.run:
            e.run = run or self.run
        if node or self.node:
            e.node = node or self.node
        if component or self.component:
            e.component = component or self.component
        if not e.trace_id:
            # An event recorded inside a span carries that span, with no help from the caller.
            ctx = otel_trace.get_current_span().get_span_context()
            if ctx.is_valid:
                e.trace_id = format(ctx.trace_id, "032x")
                e.span_id = format(ctx.span_id, "016x")
        self._pending += 1
        self.stats.queued += 1
        if self._current_count >= self._batch_size:
            assert self._current is not None
            self._ready.append(self._current)
            self._current = None
            self._current_events = None
            self._cond.notify_all()
        elif self._pending == 1:
            self._cond.notify_all()
        return e

    def emit(
        self, event: Event, *, block: bool | None = None, timeout: float | None = None
    ) -> Event:
        """Queues a copy of ``event``. An event with an identity of its own (``producer_id``,
        as a component's forwarded by the executor, or ``event_id``) keeps it and its HLC;
        any other gets this sink's identity and a fresh HLC. Returns the queued copy."""
        with self._cond:
            e = self._slot(block, timeout)
            e.CopyFrom(event)
            return self._commit(e, event.run, event.node, event.component)

    def record(
        self,
        type: str,
        *,
        run: str = "",
        node: str = "",
        component: str = "",
        trace_id: str = "",
        span_id: str = "",
        **data: Any,
    ) -> Event:
        """Records a custom event: ``record("batch.scored", rows=16)``."""
        data_struct = to_struct(data)
        with self._cond:
            e = self._slot(None, None)
            e.type = type
            if trace_id:
                e.trace_id = trace_id
            if span_id:
                e.span_id = span_id
            e.custom.data.CopyFrom(data_struct)
            return self._commit(e, run, node, component)

    def log_stat(
        self,
        name: str,
        value: float,
        *,
        step: int = 0,
        labels: Mapping[str, str] | None = None,
        type: str = "stat",
        run: str = "",
        node: str = "",
        component: str = "",
    ) -> Event:
        value = float(value)
        with self._cond:
            e = self._slot(None, None)
            e.type = type
            build.set_stat(e, name, value, step, labels)
            return self._commit(e, run, node, component)

    def log_lifecycle(
        self, type: str, state: str = "", details: Mapping[str, Any] | None = None, **where: str
    ) -> Event:
        return self._emit_where(build.set_lifecycle(Event(type=type), state, details), where)

    def log_model(
        self,
        model_version: str,
        *,
        action: str = "logged",
        sha256: str = "",
        batch: int = 0,
        type: str = "",
        **where: str,
    ) -> Event:
        e = Event(type=type or f"model.{action}")
        return self._emit_where(build.set_model(e, action, model_version, sha256, batch), where)

    def log_dataset(
        self,
        uri: str,
        *,
        sha256: str = "",
        size_bytes: int = 0,
        type: str = "dataset.read",
        **where: str,
    ) -> Event:
        e = build.set_dataset(Event(type=type), uri, sha256, size_bytes)
        return self._emit_where(e, where)

    def log_human_action(
        self, user: str, action: str, comment: str = "", type: str = "", **where: str
    ) -> Event:
        e = Event(type=type or f"human.{action}")
        return self._emit_where(build.set_human(e, user, action, comment), where)

    def log_error(self, error: BaseException | str, *, type: str = "error", **where: str) -> Event:
        e = Event(type=type)
        if isinstance(error, BaseException):
            trace = "".join(tb.format_exception(error))
            build.set_error(e, build.error_type_name(error), str(error), trace)
        else:
            build.set_error(e, "", error)
        return self._emit_where(e, where)

    def log_config(
        self,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        *,
        type: str = "config.changed",
        **where: str,
    ) -> Event:
        return self._emit_where(build.set_config(Event(type=type), before, after), where)

    def log(
        self, message: str, severity: str = "INFO", *, type: str = "log", **where: str
    ) -> Event:
        return self._emit_where(build.set_log(Event(type=type), message, severity), where)

    def log_span(
        self,
        name: str,
        *,
        trace_id: str,
        span_id: str,
        start: TimeLike,
        end: TimeLike,
        parent_span_id: str = "",
        span_kind: int = 1,
        status_code: int = 0,
        status_message: str = "",
        attributes: Mapping[str, Any] | None = None,
        service_name: str = "",
        type: str = "span",
        **where: str,
    ) -> Event:
        e = build.set_span(
            Event(type=type, trace_id=trace_id, span_id=span_id),
            name,
            parent_span_id=parent_span_id,
            start=start,
            end=end,
            span_kind=span_kind,
            status_code=status_code,
            status_message=status_message,
            attributes=attributes,
            service_name=service_name,
        )
        return self._emit_where(e, where)

    def _emit_where(self, e: Event, where: Mapping[str, str]) -> Event:
        unknown = set(where) - {"run", "node", "component", "trace_id", "span_id"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        for key, value in where.items():
            setattr(e, key, value)
        return self.emit(e)

    # -- flushing

    def flush(self, timeout: float | None = 60.0) -> None:
        """Waits until every queued event is acknowledged (stored, a duplicate, or failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.stats.acknowledged < self.stats.queued:
                if not self._thread.is_alive():
                    raise FlushTimeout(
                        f"{self.stats.queued - self.stats.acknowledged} events were never "
                        "acknowledged: the sender stopped",
                        field="sink",
                    )
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise FlushTimeout(
                        f"{self.stats.queued - self.stats.acknowledged} events are not yet "
                        "acknowledged by the recorder",
                        field="timeout",
                    )
                self._cond.notify_all()
                self._cond.wait(0.1 if left is None else min(left, 0.1))

    def close(self, timeout: float | None = 60.0) -> SinkStats:
        """Flushes and stops the sender. Raises FlushTimeout if events are still unsent."""
        if self._closed:
            return self.stats
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout=5)
            atexit.unregister(self._atexit)
            if self._own_channel:
                self.channel.close()
        if self.stats.failed:
            log.warning(
                "recorder sink %s: %d events were refused by the recorder; see sink.failures",
                self.producer_id,
                self.stats.failed,
            )
        return self.stats

    def _atexit(self) -> None:
        try:
            self.close(timeout=30.0)
        except ReliveError as e:
            log.error("recorder sink %s lost events at exit: %s", self.producer_id, e)

    def __enter__(self) -> EventSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the stream's side (relive.client.stream.BatchSource)

    def take(self, wait: bool) -> recorder_pb2.StreamEventsRequest | None:
        """The next batch to send: a full one at once, a partial one after ``linger_s``."""
        with self._cond:
            while True:
                if self._ready:
                    batch = self._ready.popleft()
                elif self._current is not None and (
                    self._closing
                    or self._closed
                    or time.monotonic() - self._current_since >= self._linger_s
                ):
                    batch = self._current
                    self._current = None
                    self._current_events = None
                else:
                    if not wait or self._closed:
                        return None
                    if self._current is not None:
                        left = self._linger_s - (time.monotonic() - self._current_since)
                        self._cond.wait(max(left, 0.0005))
                    else:
                        self._cond.wait(0.1)
                        if self._current is None and not self._ready:
                            return None
                    continue
                self._pending -= len(batch.batch.events)
                self._cond.notify_all()
                return batch

    def idle(self) -> bool:
        with self._cond:
            return self._closed or (self._closing and not self._ready and self._current is None)

    def closed(self) -> bool:
        return self._closed

    def unsent(self) -> int:
        with self._cond:
            return self._pending

    def reconnected(self) -> None:
        with self._cond:
            self.stats.reconnects += 1

    def acked(
        self, request: recorder_pb2.StreamEventsRequest, result: recorder_pb2.AppendEventsResponse
    ) -> None:
        events = request.batch.events
        failures = [
            Failure(events[r.index], r.reason, r.field)
            for r in result.rejections
            if 0 <= r.index < len(events)
        ]
        if failures:
            log.warning(
                "recorder refused %d events, first: %s (%s)",
                len(failures),
                failures[0].reason,
                failures[0].field,
            )
        with self._cond:
            self.stats.stored += result.stored_count
            self.stats.duplicates += result.duplicate_count
            self.stats.failed += len(failures)
            self.stats.failures.extend(failures)
            self.stats.batches += 1
            self._cond.notify_all()

    def failed(self, request: recorder_pb2.StreamEventsRequest, error: ReliveError) -> None:
        events = request.batch.events
        log.error("recorder refused a batch of %d events: %s", len(events), error)
        with self._cond:
            self.stats.failed += len(events)
            self.stats.failures.extend(Failure(e, str(error), error.field) for e in events)
            self._cond.notify_all()


class RunSink:
    """One run's view of a shared :class:`EventSink` (the executor keeps one sink per ION):
    it emits through it, and its ``flush`` raises :class:`EventsRefused` when the recorder
    refused any event of the run (already counted, kept and logged by the sink)."""

    def __init__(self, sink: EventSink, run: str) -> None:
        self.sink = sink
        self.run = run

    def emit(self, event: Event) -> None:
        self.sink.emit(event)

    def flush(self, timeout: float | None = 60.0) -> None:
        self.sink.flush(timeout)
        refused = self.sink.refused(self.run)
        if refused:
            first = refused[0]
            raise EventsRefused(
                f"the recorder refused {len(refused)} event(s) of {self.run}, so its timeline "
                f"lacks them; the first: {first.field or 'the batch'}: {first.reason}",
                field=first.field or "events",
            )


__all__ = [
    "BufferFull",
    "Event",
    "EventSink",
    "EventsRefused",
    "Failure",
    "FlushTimeout",
    "RunSink",
    "SinkStats",
]
