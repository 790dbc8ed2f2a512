"""Retention's decision for one bucket: delete it, keep it whole, or rewrite it smaller.

Pure, so the rule can be tested without a store; ``RecorderService.sweep`` walks the old
buckets and carries the verdicts out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from relive.recorder.v1 import event_pb2

DAY_MS = 86_400_000


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
) -> Verdict:
    """The fate of a bucket (its summary ``doc``) whose min time is before ``cutoff_ms``.

    A bucket wholly older than the cutoff and outside every window goes whole, one wholly
    inside one window stays without being decoded (``decode`` is not called); any other is
    decoded and keeps the events newer than the cutoff or inside a window."""
    lo, hi, count = int(doc["min_ms"]), int(doc["max_ms"]), int(doc["count"])
    if hi < cutoff_ms:
        if not windows.overlaps(lo, hi):
            return Verdict(Action.DELETE, count, 0)
        if windows.holds(lo, hi):
            return Verdict(Action.KEEP, 0, count)
    keep = []
    gone = held = 0
    for e in decode():
        ms = e.hlc.physical_ms
        if ms >= cutoff_ms:
            keep.append(e)
        elif windows.covers(ms):
            keep.append(e)
            held += 1
        else:
            gone += 1
    if not gone:
        return Verdict(Action.KEEP, 0, held)
    if keep:
        return Verdict(Action.REWRITE, gone, held, keep)
    return Verdict(Action.DELETE, gone, 0)
