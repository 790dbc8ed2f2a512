"""A compact in-memory index of one ION's timeline, kept current by WatchEvents.

The browser never receives 100,000 events: it asks for a histogram (counts per lane per time
bucket) that this index answers in one pass over a few flat arrays, plus the errors and human
actions as individual marks. Individual events are fetched from the recorder only when the
window is small enough to draw them one by one.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from relive.recorder.v1 import event_pb2, recorder_pb2

log = logging.getLogger(__name__)

# Kinds drawn one by one at every zoom level.
MARK_KINDS = frozenset({event_pb2.EVENT_KIND_ERROR, event_pb2.EVENT_KIND_HUMAN_ACTION})
MAX_MARKS = 5000
# Live subscribers that stop reading are dropped rather than allowed to fill memory.
SUBSCRIBER_QUEUE = 2000


def kind_name(kind: int) -> str:
    return (
        event_pb2.EventKind.Name(event_pb2.EventKind.ValueType(kind))
        .removeprefix("EVENT_KIND_")
        .lower()
    )


def summary(e: event_pb2.Event) -> str:
    """One line a person can read in a tooltip or a feed."""
    which = e.WhichOneof("attributes")
    if which == "error":
        return f"{e.error.error_type}: {e.error.message}".strip(": ")
    if which == "human_action":
        h = e.human_action
        return f"{h.user} {h.action}" + (f": {h.comment}" if h.comment else "")
    if which == "stat":
        return f"{e.stat.name} = {e.stat.value:g}"
    if which == "model":
        m = e.model
        return f"{m.action} {m.model_version}" + (
            f" @batch {m.batch}" if m.action == "swapped" else ""
        )
    if which == "lifecycle":
        return e.lifecycle.state
    if which == "dataset":
        return e.dataset.uri
    if which == "span":
        return e.span.name
    if which == "log":
        return f"{e.log.severity} {e.log.message}"
    if which == "config":
        return "config changed"
    return ""


def event_brief(e: event_pb2.Event) -> dict[str, Any]:
    """The few fields the page needs to draw and list an event."""
    return {
        "sequence": e.sequence,
        "ms": e.hlc.physical_ms,
        "logical": e.hlc.logical,
        "node": e.node,
        "component": e.component,
        "run": e.run,
        "kind": kind_name(e.kind),
        "type": e.type,
        "trace_id": e.trace_id,
        "span_id": e.span_id,
        "summary": summary(e)[:300],
    }


@dataclass
class RunExtent:
    start: int
    end: int
    lanes: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0

    def add(self, lane: str, ms: int) -> None:
        self.start = min(self.start, ms)
        self.end = max(self.end, ms)
        span = self.lanes.get(lane)
        if span is None:
            self.lanes[lane] = [ms, ms]
        else:
            span[0] = min(span[0], ms)
            span[1] = max(span[1], ms)


class TimelineIndex:
    """Times, lanes and kinds of every event of one ION, in arrival order."""

    def __init__(self, ion: str) -> None:
        self.ion = ion
        self._lock = threading.Lock()
        self._caught_up = threading.Event()
        self.ms = array("q")
        self.lane = array("H")
        self.kind = array("B")
        self.lanes: list[str] = []
        self._lane_ids: dict[str, int] = {}
        self.runs: dict[str, RunExtent] = {}
        self.marks: list[dict[str, Any]] = []
        self.last_sequence = 0
        # While times arrive in order, a window is found by bisection instead of a scan.
        self._in_order = True
        self._subscribers: list[queue.Queue[list[dict[str, Any]] | None]] = []
        self.error: str = ""
        self.touched = time.monotonic()

    # -- feeding

    def _lane_id(self, node: str) -> int:
        i = self._lane_ids.get(node)
        if i is None:
            i = self._lane_ids[node] = len(self.lanes)
            self.lanes.append(node)
        return i

    def add(self, events: Iterable[event_pb2.Event]) -> None:
        fresh: list[dict[str, Any]] = []
        with self._lock:
            for e in events:
                if e.sequence <= self.last_sequence:
                    continue
                self.last_sequence = e.sequence
                ms = int(e.hlc.physical_ms)
                if self.ms and ms < self.ms[-1]:
                    self._in_order = False
                self.ms.append(ms)
                self.lane.append(self._lane_id(e.node))
                self.kind.append(int(e.kind))
                if e.run:
                    extent = self.runs.get(e.run)
                    if extent is None:
                        extent = self.runs[e.run] = RunExtent(ms, ms)
                    extent.add(e.node, ms)
                    if e.kind == event_pb2.EVENT_KIND_ERROR:
                        extent.errors += 1
                if e.kind in MARK_KINDS:
                    self.marks.append(event_brief(e))
                if self._subscribers:
                    fresh.append(event_brief(e))
            subscribers = list(self._subscribers)
        if fresh:
            for q in subscribers:
                try:
                    q.put_nowait(fresh)
                except queue.Full:
                    # A reader that fell this far behind is told to reconnect.
                    self.unsubscribe(q)
                    with q.mutex:
                        q.queue.clear()
                    q.put_nowait(None)

    def mark_caught_up(self) -> None:
        self._caught_up.set()

    def wait_caught_up(self, timeout: float) -> bool:
        return self._caught_up.wait(timeout)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def subscribe(self) -> queue.Queue[list[dict[str, Any]] | None]:
        q: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(SUBSCRIBER_QUEUE)
        with self._lock:
            self._subscribers.append(q)
        return q

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def unsubscribe(self, q: queue.Queue[list[dict[str, Any]] | None]) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    # -- reading

    def extent(self) -> tuple[int, int] | None:
        with self._lock:
            if not self.ms:
                return None
            if self._in_order:
                return self.ms[0], self.ms[-1]
            return min(self.ms), max(self.ms)

    def histogram(self, start: int, end: int, buckets: int) -> dict[str, Any]:
        """Counts per lane per bucket of [start, end), errors and human actions as marks."""
        buckets = max(1, min(buckets, 4000))
        width = max(1, end - start) / buckets
        with self._lock:
            n = len(self.ms)
            lanes = list(self.lanes)
            if self._in_order:
                lo = bisect.bisect_left(self.ms, start)
                hi = bisect.bisect_left(self.ms, end, lo)
                positions: Iterator[int] | range = range(lo, hi)
            else:
                positions = (i for i in range(n) if start <= self.ms[i] < end)
            counts = [[0] * buckets for _ in lanes]
            errors = [0] * len(lanes)
            kinds: dict[int, int] = {}
            ms, lane, kind = self.ms, self.lane, self.kind
            total = 0
            last = buckets - 1
            for i in positions:
                b = int((ms[i] - start) / width)
                counts[lane[i]][b if b < last else last] += 1
                k = kind[i]
                kinds[k] = kinds.get(k, 0) + 1
                if k == event_pb2.EVENT_KIND_ERROR:
                    errors[lane[i]] += 1
                total += 1
            marks = [m for m in self.marks if start <= m["ms"] < end]
            runs = [
                {
                    "run": name,
                    "start": r.start,
                    "end": r.end,
                    "errors": r.errors,
                    "lanes": {k: list(v) for k, v in r.lanes.items()},
                }
                for name, r in self.runs.items()
                if r.start < end and r.end >= start
            ]
        return {
            "start": start,
            "end": end,
            "buckets": buckets,
            "bucket_ms": width,
            "total": total,
            "indexed": n,
            "caught_up": self.caught_up,
            "lanes": [
                {"node": name, "counts": c, "errors": err}
                for name, c, err in zip(lanes, counts, errors, strict=True)
            ],
            "kinds": {kind_name(k): v for k, v in sorted(kinds.items())},
            "marks": marks[-MAX_MARKS:],
            "marks_truncated": len(marks) > MAX_MARKS,
            "runs": runs,
        }


WatchFactory = Callable[[recorder_pb2.WatchEventsRequest], Any]


class IndexFeeder:
    """One thread per ION that tails WatchEvents into a TimelineIndex, reconnecting on error."""

    def __init__(self, index: TimelineIndex, watch: WatchFactory) -> None:
        self.index = index
        self._watch = watch
        self._stop = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"console-index-{index.ion}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            request = recorder_pb2.WatchEventsRequest(
                parent=self.index.ion, after_sequence=self.index.last_sequence
            )
            try:
                self._call = self._watch(request)
                for response in self._call:
                    self.index.add(response.events)
                    if response.caught_up:
                        self.index.mark_caught_up()
                    delay = 0.2
                    self.index.error = ""
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                self.index.error = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    # An ION with no events yet, or one that was deleted: nothing to wait for.
                    self.index.mark_caught_up()
                log.debug("watch of %s ended: %s", self.index.ion, self.index.error)
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)
