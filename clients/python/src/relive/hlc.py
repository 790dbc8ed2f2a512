"""Hybrid logical clock (Kulkarni et al., 2014): physical milliseconds plus a logical counter.

If event *a* causally precedes *b* (same process, or *b*'s process saw *a*'s stamp through
``update``), then ``stamp(a) < stamp(b)``, even when the machines' clocks disagree. The SDK
keeps one clock per process (``process_clock()``); the stamp travels with the trace context
as the text ``"<physical_ms>.<logical>"``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

# Logical counters above this mean the physical clock stalled for very long; the proto field
# is an int32, so the clock borrows a millisecond instead of overflowing.
_MAX_LOGICAL = 2**31 - 1
# The OpenTelemetry baggage entry that carries the caller's HLC across every RPC.
BAGGAGE_KEY = "relive.hlc"


class Stamp(NamedTuple):
    """One HLC reading; tuples compare in causal order."""

    physical_ms: int
    logical: int

    def encode(self) -> str:
        return f"{self.physical_ms}.{self.logical}"

    @classmethod
    def decode(cls, text: str) -> Stamp:
        """Parses ``"<physical_ms>.<logical>"``; raises ValueError on anything else."""
        ms, _, logical = text.strip().partition(".")
        return cls(int(ms), int(logical or 0))


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    """A thread-safe HLC. ``now()`` stamps a local or send event, ``update()`` a receive."""

    def __init__(self, physical: Callable[[], int] = wall_ms) -> None:
        self._physical = physical
        self._lock = threading.Lock()
        self._last: tuple[int, int] = (0, 0)

    def now(self) -> Stamp:
        """A stamp greater than every stamp this clock gave or saw before."""
        return Stamp(*self.now_pair())

    def now_pair(self) -> tuple[int, int]:
        """``now()`` as a plain tuple, for hot paths."""
        with self._lock:
            pt = self._physical()
            ms, logical = self._last
            if pt > ms:
                ms, logical = pt, 0
            elif logical < _MAX_LOGICAL:
                logical += 1
            else:
                ms, logical = ms + 1, 0
            self._last = (ms, logical)
            return ms, logical

    def update(self, remote: Stamp | tuple[int, int] | str) -> Stamp:
        """Merges a stamp received from elsewhere; returns the stamp of the receive event."""
        if isinstance(remote, str):
            remote = Stamp.decode(remote)
        r = Stamp(int(remote[0]), int(remote[1]))
        with self._lock:
            pt = self._physical()
            last = Stamp(*self._last)
            top = max(pt, last.physical_ms, r.physical_ms)
            if top == last.physical_ms and top == r.physical_ms:
                logical = max(last.logical, r.logical) + 1
            elif top == last.physical_ms:
                logical = last.logical + 1
            elif top == r.physical_ms:
                logical = r.logical + 1
            else:
                logical = 0
            if logical > _MAX_LOGICAL:
                top, logical = top + 1, 0
            self._last = (top, logical)
            return Stamp(top, logical)


_process_clock: HybridLogicalClock | None = None
_process_lock = threading.Lock()


def process_clock() -> HybridLogicalClock:
    """The clock of this process, made on first use: DESIGN.md asks for one per process, so
    every sink, run context and RPC of a process stamps from the same causal history."""
    global _process_clock
    if _process_clock is None:
        with _process_lock:
            if _process_clock is None:
                _process_clock = HybridLogicalClock()
    return _process_clock


def now() -> Stamp:
    """Stamps a local event on the process clock."""
    return process_clock().now()


def update(remote: Stamp | tuple[int, int] | str) -> Stamp:
    """Merges a received stamp into the process clock."""
    return process_clock().update(remote)
