"""Retention's per-bucket rule: delete, keep whole, or rewrite with what captures hold."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from relive.recorder import bucket as bk
from relive.recorder.retention import Action, Windows, judge
from relive.recorder.v1 import event_pb2
from tests.unit.recorder_timeline import T0, event, items_of, stamp_parts

CUTOFF = T0 + 10_000


def _bucket(offsets: Iterable[int]) -> dict[str, Any]:
    events = [event(T0 + ms, pseq=i + 1) for i, ms in enumerate(offsets)]
    (doc,) = stamp_parts(events, [items_of(events)], 1, "p")
    return doc


def _decode(doc: dict[str, Any]) -> list[event_pb2.Event]:
    return list(bk.decode_events(doc["blob"]))


def _unread() -> list[event_pb2.Event]:
    raise AssertionError("the bucket was decoded")


def _ms(events: Iterable[event_pb2.Event]) -> list[int]:
    return [e.hlc.physical_ms - T0 for e in events]


def test_an_old_bucket_outside_every_capture_goes_whole_unread() -> None:
    doc = _bucket(range(0, 1000, 100))
    windows = Windows([(T0 + 2000, T0 + 3000)])
    verdict = judge(doc, CUTOFF, windows, _unread)
    assert (verdict.action, verdict.deleted, verdict.held) == (Action.DELETE, 10, 0)


def test_an_old_bucket_inside_one_capture_stays_whole_unread() -> None:
    doc = _bucket(range(0, 1000, 100))
    windows = Windows([(T0 + 5000, T0 + 6000), (T0, T0 + 901)])
    verdict = judge(doc, CUTOFF, windows, _unread)
    assert (verdict.action, verdict.deleted, verdict.held) == (Action.KEEP, 0, 10)


def test_a_bucket_a_capture_cuts_is_rewritten_with_what_it_holds() -> None:
    doc = _bucket(range(0, 1000, 100))
    windows = Windows([(T0 + 200, T0 + 400)])
    verdict = judge(doc, CUTOFF, windows, lambda: _decode(doc))
    assert (verdict.action, verdict.deleted, verdict.held) == (Action.REWRITE, 8, 2)
    assert _ms(verdict.keep) == [200, 300]


def test_a_bucket_across_the_cutoff_keeps_its_newer_events() -> None:
    doc = _bucket([9_000, 9_999, 10_000, 12_000])
    verdict = judge(doc, CUTOFF, Windows([]), lambda: _decode(doc))
    assert (verdict.action, verdict.deleted, verdict.held) == (Action.REWRITE, 2, 0)
    assert _ms(verdict.keep) == [10_000, 12_000]


def test_a_bucket_that_loses_nothing_is_left_alone() -> None:
    doc = _bucket([9_000, 10_000])  # the old event is captured, the other is new
    verdict = judge(doc, CUTOFF, Windows([(T0 + 8_000, T0 + 9_500)]), lambda: _decode(doc))
    assert (verdict.action, verdict.deleted, verdict.held) == (Action.KEEP, 0, 1)


def test_a_capture_between_the_events_saves_none_of_them() -> None:
    doc = _bucket([0, 1_000])
    verdict = judge(doc, CUTOFF, Windows([(T0 + 200, T0 + 300)]), lambda: _decode(doc))
    assert (verdict.action, verdict.deleted, verdict.held) == (Action.DELETE, 2, 0)


spans = st.tuples(st.integers(0, 12_000), st.integers(1, 3_000)).map(
    lambda s: (T0 + s[0], T0 + s[0] + s[1])
)


@given(
    st.lists(st.integers(0, 14_000), min_size=1, max_size=40).map(sorted),
    st.lists(spans, max_size=3),
    st.integers(0, 14_000),
)
def test_retention_keeps_exactly_the_new_and_the_captured_events(
    offsets: list[int], captures: list[tuple[int, int]], cutoff_at: int
) -> None:
    doc = _bucket(offsets)
    cutoff = T0 + cutoff_at
    if doc["min_ms"] >= cutoff:
        return  # the sweep only visits buckets that start before the cutoff
    windows = Windows(captures)
    verdict = judge(doc, cutoff, windows, lambda: _decode(doc))
    events = _decode(doc)

    def captured(ms: int) -> bool:
        return any(s <= ms < e for s, e in captures)

    wanted = [e for e in events if e.hlc.physical_ms >= cutoff or captured(e.hlc.physical_ms)]
    held = sum(1 for e in wanted if e.hlc.physical_ms < cutoff)
    assert verdict.held == held
    assert verdict.deleted == len(events) - len(wanted)
    if verdict.action is Action.DELETE:
        assert wanted == []
    elif verdict.action is Action.KEEP:
        assert wanted == events
    else:
        assert list(verdict.keep) == wanted and 0 < len(wanted) < len(events)
