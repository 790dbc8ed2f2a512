"""A run's trace: one span for the run, one per node, one per component.

Spans are recorded as ``span`` events when they end, placed in the timeline where they
started. The run's events belong to the run's span, a node's events to the node's.

All the spans of one run are one producer: each span takes its producer sequence when it
starts, with its HLC, so sequences grow with the clock although spans end in another order
(docs/recorder-storage.md, "Deduplication"), and a run's spans share a few buckets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from relive.events import Producer, default_producer_id
from relive.pipeline.events import EventFactory
from relive.recorder.v1.event_pb2 import Event


class RunTrace:
    """The spans of one run, and the run's event factory, which stamps events into them."""

    def __init__(
        self, ion: str, run: str, trace_id: str, run_span: str, emit: Callable[[Event], object]
    ) -> None:
        self.run = run
        self.run_span = run_span or os.urandom(8).hex()
        self._emit = emit
        self._lock = threading.Lock()
        self._node_spans: dict[str, str] = {}
        # span id -> (producer sequence, HLC, wall time) taken when it started
        self._starts: dict[str, tuple[int, tuple[int, int], Timestamp]] = {}
        self._producer = Producer(default_producer_id("spans"))
        self.factory = EventFactory(ion, run, trace_id=trace_id, span_of=self.span_of)

    def span_of(self, node: str, component: str) -> str:
        """Run-level events belong to the run's span, node events to the node's."""
        with self._lock:
            return self._node_spans.get(node, self.run_span) if node else self.run_span

    def open(self, span_id: str) -> None:
        started = Timestamp()
        started.GetCurrentTime()
        with self._lock:
            seq, stamp = self._producer.reserve()
            self._starts[span_id] = (seq, stamp, started)

    def close(self, name: str, span_id: str, parent: str, error: str = "", **where: str) -> None:
        """Records the span, once: closing it again does nothing."""
        with self._lock:
            start = self._starts.pop(span_id, None)
        if start is not None:
            seq, stamp, started = start
            e = self.factory.span(name, span_id, parent, (stamp, started), error, **where)
            e.producer_id, e.producer_sequence = self._producer.producer_id, seq
            self._emit(e)

    def open_node(self, node: str) -> None:
        span_id = os.urandom(8).hex()
        with self._lock:
            self._node_spans[node] = span_id
        self.open(span_id)

    def close_node(self, node: str, error: str = "") -> None:
        with self._lock:
            span_id = self._node_spans.get(node)
        if span_id is not None:
            self.close(f"node {node}", span_id, self.run_span, error, node=node)

    def close_all(self, error: str) -> None:
        """Ends the spans of the nodes still open, then the run's."""
        with self._lock:
            nodes = list(self._node_spans)
        for node in nodes:
            self.close_node(node, error)
        self.close(f"run {self.run}", self.run_span, "", error)
