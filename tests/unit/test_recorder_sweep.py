"""The whole retention rule over a timeline, pure: captures keep their windows, the launch
records of the runs they overlap (wherever those lie in time), and the recorded inputs those
events still need; everything else older than the cutoff goes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relive.recorder import bucket as bk
from relive.recorder.inputs import input_names
from relive.recorder.retention import (
    PINNED_TYPES,
    Action,
    Windows,
    judge,
    keeps_input,
    pins,
    runs_inside,
)
from relive.recorder.v1 import event_pb2
from tests.unit.recorder_timeline import T0, event, items_of, stamp_parts

RUNS = ["", "ions/demo/runs/r0", "ions/demo/runs/r1", "ions/demo/runs/r2"]
INPUTS = [f"ions/demo/inputs/{c * 64}" for c in "abcd"]
KINDS = ["stat", "run.launched", "dataset.used", "stream.batch"]


def _event(ms: int, pseq: int, kind: str, run: str, named: str) -> event_pb2.Event:
    e = event(ms, pseq=pseq, type=kind, run=run)
    if kind == "run.launched":
        e.lifecycle.state = "PENDING"
        e.lifecycle.details.update({"spec": {"seed": 7}})
    elif kind == "dataset.used":
        e.dataset.uri = "file:///data.csv"
        e.dataset.input = named
    elif kind == "stream.batch":
        e.custom.data.update({"batch": pseq, "input": named})
    return e


def _buckets(events: list[event_pb2.Event], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The events cut into buckets of the given sizes (the rest in one more), as stored."""
    items = items_of(events)
    parts, start = [], 0
    for size in sizes:
        if start < len(items):
            parts.append(items[start : start + size])
            start += size
    if start < len(items):
        parts.append(items[start:])
    return stamp_parts(events, parts, 1, "p")


def _decode(doc: dict[str, Any]) -> list[event_pb2.Event]:
    return list(bk.decode_events(doc["blob"]))


def _sweep(
    docs: list[dict[str, Any]],
    cutoff: int,
    windows: Windows,
    uses: dict[str, tuple[int, int]],
) -> tuple[list[event_pb2.Event], set[str]]:
    """What ``RecorderService.sweep`` does, over documents instead of a store: the pinned
    runs from the window's buckets, each old bucket judged, then the inputs."""
    pinned: set[str] = set()
    for start, end in windows.spans:
        for doc in docs:
            if doc["min_ms"] < end and doc["max_ms"] >= start:
                pinned |= runs_inside(doc, start, end, partial(_decode, doc))
    runs = frozenset(pinned)
    kept: list[event_pb2.Event] = []
    for doc in docs:
        if doc["min_ms"] >= cutoff:
            kept.extend(_decode(doc))
            continue
        verdict = judge(doc, cutoff, windows, partial(_decode, doc), runs)
        if verdict.action is Action.KEEP:
            kept.extend(_decode(doc))
        elif verdict.action is Action.REWRITE:
            kept.extend(verdict.keep)
    named = {n for doc in docs for e in _decode(doc) if pins(e, runs) for n in input_names(e)}
    inputs = {
        name
        for name, (first, last) in uses.items()
        if keeps_input(first, last, cutoff, windows, name in named)
    }
    return kept, inputs


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 20_000),
        st.sampled_from(KINDS),
        st.sampled_from(RUNS),
        st.sampled_from(INPUTS),
    ),
    min_size=1,
    max_size=60,
)
windows_strategy = st.lists(
    st.tuples(st.integers(0, 20_000), st.integers(1, 4_000)).map(
        lambda s: (T0 + s[0], T0 + s[0] + s[1])
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    drawn=events_strategy,
    sizes=st.lists(st.integers(1, 20), max_size=6),
    captures=windows_strategy,
    cutoff_at=st.integers(0, 22_000),
    extra_uses=st.dictionaries(st.sampled_from(INPUTS), st.integers(0, 22_000), max_size=4),
)
def test_the_sweep_keeps_exactly_what_captures_need(
    drawn: list[tuple[int, str, str, str]],
    sizes: list[int],
    captures: list[tuple[int, int]],
    cutoff_at: int,
    extra_uses: dict[str, int],
) -> None:
    events = [_event(T0 + ms, i + 1, k, run, named) for i, (ms, k, run, named) in enumerate(drawn)]
    docs = _buckets(events, sizes)
    cutoff = T0 + cutoff_at
    # Each input's uses are the times of the events that name it, and maybe a later use
    # (a relaunch that fed it again).
    times: dict[str, list[int]] = {}
    for e in events:
        for name in input_names(e):
            times.setdefault(name, []).append(e.hlc.physical_ms)
    for name, at in extra_uses.items():
        times.setdefault(name, []).append(T0 + at)
    uses = {name: (min(ts), max(ts)) for name, ts in times.items()}

    kept, inputs = _sweep(docs, cutoff, Windows(captures), uses)

    def captured(ms: int) -> bool:
        return any(s <= ms < e for s, e in captures)

    overlapping = {e.run for e in events if e.run and captured(e.hlc.physical_ms)}

    def must_keep(e: event_pb2.Event) -> bool:
        ms = e.hlc.physical_ms
        launch_record = e.type in PINNED_TYPES and e.run in overlapping
        return ms >= cutoff or captured(ms) or launch_record

    def identities(found: Iterable[event_pb2.Event]) -> list[int]:
        return sorted(e.producer_sequence for e in found)

    assert identities(kept) == identities(e for e in events if must_keep(e))
    needed_by_records = {
        n for e in events if e.type in PINNED_TYPES and e.run in overlapping for n in input_names(e)
    }
    assert inputs == {
        name
        for name, (first, last) in uses.items()
        if last >= cutoff
        or any(s <= last and first < e for s, e in captures)
        or name in needed_by_records
    }


def test_an_old_launch_of_a_run_the_capture_overlaps_is_kept() -> None:
    """The incident is late in a long stream: the capture holds none of its launch."""
    run = RUNS[1]
    launched = _event(T0, 1, "run.launched", run, "")
    read = _event(T0 + 1, 2, "dataset.used", run, INPUTS[0])
    other = _event(T0 + 2, 3, "run.launched", RUNS[2], "")
    scored = _event(T0 + 50_000, 4, "stream.batch", run, INPUTS[1])
    docs = _buckets([launched, read, other, scored], [3])
    windows = Windows([(T0 + 49_000, T0 + 51_000)])
    uses = {INPUTS[0]: (T0 + 1, T0 + 1), INPUTS[1]: (T0 + 50_000, T0 + 50_000)}
    kept, inputs = _sweep(docs, T0 + 100_000, windows, uses)
    assert [e.producer_sequence for e in kept] == [1, 2, 4]
    assert inputs == set(INPUTS[:2])  # the dataset snapshot the run read, and its batch


def test_a_bucket_with_no_launch_record_of_a_pinned_run_goes_unread() -> None:
    def unread() -> list[event_pb2.Event]:
        raise AssertionError("the bucket was decoded")

    runs = frozenset({RUNS[1]})
    stats = _buckets([_event(T0 + i, i + 1, "stat", RUNS[1], "") for i in range(5)], [])
    others = _buckets([_event(T0, 1, "run.launched", RUNS[2], "")], [])
    for doc in (*stats, *others):
        verdict = judge(doc, T0 + 10_000, Windows([(T0 + 20_000, T0 + 30_000)]), unread, runs)
        assert verdict.action is Action.DELETE
