"""Retention's decision for one bucket: delete it, keep it whole, or rewrite it smaller.

Pure, so the rule can be tested without a store; ``RecorderService.sweep`` walks the old
buckets and carries the verdicts out.

A capture keeps the events of its window and, for every run with an event in the window,
that run's **launch record** (its ``run.launched`` event, which carries the launch spec, and
its ``dataset.used`` events), wherever they lie in time: a capture of an incident late in a
long stream must still relaunch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from relive.recorder.v1 import event_pb2

DAY_MS = 86_400_000
# The events that make a run's launch record, pinned by any capture the run overlaps.
PINNED_TYPES = frozenset({"run.launched", "dataset.used"})


class Windows:
    """The capture windows ``[start_ms, end_ms)`` of one ION: what retention must keep."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self.spans = sorted(spans)

    def covers(self, ms: int) -> bool:
        return any(s <= ms < e for s, e in self.spans)

    def overlaps(self, lo: int, hi: int) -> bool:
        """Whether any window meets the closed range [lo, hi]."""
        return any(s <= hi and lo < e for s, e in self.spans)

    def holds(self, lo: int, hi: int) -> bool:
        """Whether one window holds the whole closed range [lo, hi]."""
        return any(s <= lo and hi < e for s, e in self.spans)


def pins(e: event_pb2.Event, runs: frozenset[str]) -> bool:
    """Whether ``e`` is part of the launch record of one of ``runs``."""
    return e.type in PINNED_TYPES and bool(e.run) and e.run in runs


def may_pin(doc: dict[str, Any], runs: frozenset[str]) -> bool:
    """False when a bucket's summary proves it holds no launch record of ``runs`` (a
    summary list of None means "many": it may)."""
    if not runs:
        return False
    types, bucket_runs = doc.get("types"), doc.get("runs")
    if types is not None and not PINNED_TYPES.intersection(types):
        return False
    return bucket_runs is None or bool(runs.intersection(bucket_runs))


def runs_inside(
    doc: dict[str, Any], start_ms: int, end_ms: int, decode: Callable[[], Iterable[event_pb2.Event]]
) -> set[str]:
    """The runs with an event of this bucket inside [start_ms, end_ms). The summary answers
    when the bucket lies wholly inside and lists its runs; otherwise ``decode`` is called."""
    lo, hi = int(doc["min_ms"]), int(doc["max_ms"])
    listed = doc.get("runs")
    if listed is not None and (not listed or (start_ms <= lo and hi < end_ms)):
        return set(listed)
    return {e.run for e in decode() if e.run and start_ms <= e.hlc.physical_ms < end_ms}


def keeps_input(
    first_ms: int, last_ms: int, cutoff_ms: int, windows: Windows, named_by_pinned: bool
) -> bool:
    """Whether retention keeps a recorded input used over [first_ms, last_ms]: a use after
    the cutoff, a use span that meets a capture window, or a name in a pinned launch record
    (a dataset snapshot a run read before the window) keeps it."""
    return last_ms >= cutoff_ms or windows.overlaps(first_ms, last_ms) or named_by_pinned


class Action(enum.Enum):
    DELETE = "delete"
    KEEP = "keep"
    REWRITE = "rewrite"


@dataclass(frozen=True)
class Verdict:
    action: Action
    # Events the bucket loses.
    deleted: int
    # Events older than the cutoff that stay because a capture window holds them.
    held: int
    # What a rewritten bucket keeps, in timeline order.
    keep: Sequence[event_pb2.Event] = ()


def judge(
    doc: dict[str, Any],
    cutoff_ms: int,
    windows: Windows,
    decode: Callable[[], Iterable[event_pb2.Event]],
    pinned: frozenset[str] = frozenset(),
) -> Verdict:
    """The fate of a bucket (its summary ``doc``) whose min time is before ``cutoff_ms``.

    ``pinned`` holds the runs with an event inside a capture window. A bucket wholly older
    than the cutoff, outside every window and holding no launch record of a pinned run goes
    whole; one wholly inside one window stays without being decoded (``decode`` is not
    called); any other is decoded and keeps the events newer than the cutoff, inside a
    window, or of a pinned run's launch record."""
    lo, hi, count = int(doc["min_ms"]), int(doc["max_ms"]), int(doc["count"])
    if hi < cutoff_ms:
        if not windows.overlaps(lo, hi) and not may_pin(doc, pinned):
            return Verdict(Action.DELETE, count, 0)
        if windows.holds(lo, hi):
            return Verdict(Action.KEEP, 0, count)
    keep = []
    gone = held = 0
    for e in decode():
        ms = e.hlc.physical_ms
        if ms >= cutoff_ms:
            keep.append(e)
        elif windows.covers(ms) or pins(e, pinned):
            keep.append(e)
            held += 1
        else:
            gone += 1
    if not gone:
        return Verdict(Action.KEEP, 0, held)
    if keep:
        return Verdict(Action.REWRITE, gone, held, keep)
    return Verdict(Action.DELETE, gone, 0)
