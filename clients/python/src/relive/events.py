"""Events, built in one place.

- The ``set_*`` functions write one kind's attributes into an event. ``EventSink`` builds
  straight into its outgoing batch with them (the hot path copies nothing), and
  ``EventFactory`` builds free-standing events with them for the executor and components.
- :class:`Producer` gives an event its identity: the producer id, the next producer sequence
  and a fresh HLC, together and under its owner's lock, so sequences grow with the clock and
  with the order batches leave in. The recorder's producer dedup relies on exactly that
  (docs/recorder-storage.md, "Deduplication"). An event that already carries an identity
  (a component's, forwarded by the executor; a span's, reserved when it started) keeps it,
  and keeps its HLC.
- :func:`to_struct` is the one conversion of Python values into a protobuf Struct.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from relive import hlc
from relive.recorder.v1 import event_pb2

Event = event_pb2.Event
TimeLike = dt.datetime | timestamp_pb2.Timestamp | int | float | None

# Bounds on free text, so that one long message or traceback does not get the event refused.
MAX_MESSAGE = 4000
MAX_TRACEBACK = 8000
MAX_LOG = 8000
MAX_STATUS_MESSAGE = 1000


# ---- values --------------------------------------------------------------------------------


def to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A Struct of a JSON-like mapping. Numbers become doubles (a Struct holds no ints), numpy
    values their Python equivalents, tuples and sets lists (sets sorted, so a recorded event
    does not depend on the hash seed), and anything else its ``str``."""
    s = struct_pb2.Struct()
    if value:
        s.update(_plain(value))
    return s


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return [_plain(v) for v in sorted(value, key=str)]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    return str(value)


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def to_timestamp(value: TimeLike) -> timestamp_pb2.Timestamp | None:
    """A Timestamp from a datetime, a Timestamp, or epoch milliseconds (int) / seconds (float)."""
    if value is None:
        return None
    if isinstance(value, timestamp_pb2.Timestamp):
        return value
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        ts.FromDatetime(value.astimezone(dt.UTC))
    elif isinstance(value, int):
        ts.FromMilliseconds(value)
    else:
        ts.FromNanoseconds(int(value * 1e9))
    return ts


# ---- each kind's attributes ----------------------------------------------------------------


def set_lifecycle(e: Event, state: str, details: Mapping[str, Any] | None = None) -> Event:
    e.lifecycle.state = state
    if details:
        e.lifecycle.details.CopyFrom(to_struct(details))
    return e


def set_stat(
    e: Event, name: str, value: float, step: int = 0, labels: Mapping[str, Any] | None = None
) -> Event:
    s = e.stat
    s.name = name
    s.value = float(value)
    if step:
        s.step = int(step)
    if labels:
        s.labels.update({str(k): str(v) for k, v in labels.items()})
    return e


def set_model(e: Event, action: str, version: str, sha256: str = "", batch: int = 0) -> Event:
    m = e.model
    m.model_version = version
    m.action = action
    m.sha256 = sha256
    m.batch = int(batch)
    return e


def set_dataset(
    e: Event, uri: str, sha256: str = "", size_bytes: int = 0, input: str = ""
) -> Event:
    """``input`` names the RecordedInput holding a snapshot of the dataset, if one was taken."""
    d = e.dataset
    d.uri = uri
    d.sha256 = sha256
    d.size_bytes = int(size_bytes)
    d.input = input
    return e


def set_error(e: Event, error_type: str, message: str, traceback: str = "") -> Event:
    r = e.error
    r.error_type = error_type
    r.message = message[:MAX_MESSAGE]
    r.traceback = traceback[-MAX_TRACEBACK:]
    return e


def set_human(e: Event, user: str, action: str, comment: str = "") -> Event:
    h = e.human_action
    h.user = user
    h.action = action
    h.comment = comment
    return e


def set_custom(e: Event, data: Mapping[str, Any] | None) -> Event:
    e.custom.data.CopyFrom(to_struct(data))
    return e


def set_config(
    e: Event, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> Event:
    e.config.before.CopyFrom(to_struct(before))
    e.config.after.CopyFrom(to_struct(after))
    return e


def set_log(e: Event, message: str, severity: str = "INFO") -> Event:
    e.log.severity = severity
    e.log.message = message[:MAX_LOG]
    return e


def set_span(
    e: Event,
    name: str,
    *,
    parent_span_id: str = "",
    start: TimeLike = None,
    end: TimeLike = None,
    span_kind: int = 1,
    status_code: int = 0,
    status_message: str = "",
    attributes: Mapping[str, Any] | None = None,
    service_name: str = "",
) -> Event:
    s = e.span
    s.name = name
    s.parent_span_id = parent_span_id
    if (ts := to_timestamp(start)) is not None:
        s.start_time.CopyFrom(ts)
    if (ts := to_timestamp(end)) is not None:
        s.end_time.CopyFrom(ts)
    s.span_kind = span_kind
    s.status_code = status_code
    s.status_message = status_message[:MAX_STATUS_MESSAGE]
    s.service_name = service_name
    if attributes:
        s.attributes.CopyFrom(to_struct(attributes))
    return e


def error_type_name(error: BaseException) -> str:
    """``ValueError``, or ``package.module.Class`` for anything not built in."""
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


# ---- identity ------------------------------------------------------------------------------


def default_producer_id(label: str = "") -> str:
    """A producer id no other producer has, now or after a restart: host, pid and a random
    part (a restarted process starts its sequences at 1 again, under a new id)."""
    base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return f"{label}-{base}"[-256:] if label else base


class Producer:
    """One producer's identity: its id and its next sequence. Not thread-safe: the sink that
    owns it calls :meth:`stamp` under its own lock, in the order the events are sent."""

    __slots__ = ("_next", "clock", "producer_id")

    def __init__(self, producer_id: str, clock: hlc.HybridLogicalClock | None = None) -> None:
        self.producer_id = producer_id
        self.clock = clock or hlc.process_clock()
        self._next = 1

    def stamp(self, e: Event) -> Event:
        """Gives ``e`` this producer's identity and a fresh HLC; an event with an identity of
        its own (``producer_id`` or ``event_id``) keeps it and its HLC, stamped only if unset."""
        h = e.hlc
        if e.producer_id or e.event_id:
            if not h.physical_ms:
                h.physical_ms, h.logical = self.clock.now_pair()
            return e
        h.physical_ms, h.logical = self.clock.now_pair()
        e.producer_id = self.producer_id
        e.producer_sequence = self._next
        self._next += 1
        return e

    def reserve(self) -> tuple[int, tuple[int, int]]:
        """The next sequence and an HLC reading, taken together now, for an event that is
        recorded later but placed now (a span, recorded at its end, placed at its start).
        Sequences then still grow with the clock, as the recorder's dedup needs."""
        seq = self._next
        self._next += 1
        return seq, self.clock.now_pair()


# ---- the factory ---------------------------------------------------------------------------


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


class EventFactory:
    """Builds events placed in an ION, a run, a node and a component, with the trace context
    and the wall time. Identity and HLC come from the sink the event is emitted to (see
    :class:`Producer`); a span is placed at its start, and its owner gives it the identity
    it reserved then (``Producer.reserve``)."""

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
        *,
        service_name: str = "relive-executor",
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
        # The service a span event names as its origin.
        self.service_name = service_name

    def make(self, type_: str, *, node: str | None = None, component: str | None = None) -> Event:
        ts = timestamp_pb2.Timestamp()
        ts.GetCurrentTime()
        node = self.node if node is None else node
        component = self.component if component is None else component
        span_id = self.span_of(node, component) if self.span_of else self.span_id
        return Event(
            ion=self.ion,
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
        start: tuple[tuple[int, int], timestamp_pb2.Timestamp],
        error: str = "",
        **where: str,
    ) -> Event:
        """A finished span of the run's trace, placed in the timeline where it started."""
        e = self.make("span", **where)
        (ms, logical), started = start
        e.hlc.physical_ms, e.hlc.logical = ms, logical
        e.time.CopyFrom(started)
        e.span_id = span_id
        ended = timestamp_pb2.Timestamp()
        ended.GetCurrentTime()
        return set_span(
            e,
            name,
            parent_span_id=parent_span_id,
            start=started,
            end=ended,
            span_kind=1,  # INTERNAL
            status_code=2 if error else 0,  # ERROR or UNSET
            status_message=error,
            service_name=self.service_name,
        )

    def lifecycle(
        self, type_: str, state: str, details: Mapping[str, Any] | None = None, **where: str
    ) -> Event:
        return set_lifecycle(self.make(type_, **where), state, details)

    def stat(
        self,
        name: str,
        value: float,
        step: int = 0,
        labels: Mapping[str, str] | None = None,
        **where: str,
    ) -> Event:
        return set_stat(self.make("stat", **where), name, value, step, labels)

    def model(self, action: str, version: str, sha256: str, batch: int = 0, **where: str) -> Event:
        return set_model(self.make(f"model.{action}", **where), action, version, sha256, batch)

    def dataset(self, uri: str, sha256: str, size: int, input: str = "", **where: str) -> Event:
        return set_dataset(self.make("dataset.used", **where), uri, sha256, size, input)

    def error(
        self, type_: str, error_type: str, message: str, traceback: str = "", **where: str
    ) -> Event:
        return set_error(self.make(type_, **where), error_type, message, traceback)

    def human(self, user: str, action: str, comment: str = "", **where: str) -> Event:
        return set_human(self.make("human.approval", **where), user, action, comment)

    def custom(self, type_: str, data: Mapping[str, Any], **where: str) -> Event:
        return set_custom(self.make(type_, **where), data)

    def log(self, message: str, severity: str = "INFO", **where: str) -> Event:
        return set_log(self.make("log", **where), message, severity)
