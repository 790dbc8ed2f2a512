"""The read path without a store: the k-way merge, arrival order, pages and filters."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relive import errors
from relive.core.names import decode_token, encode_token
from relive.recorder import bucket as bk
from relive.recorder.bucket import TimelineKey, timeline_key
from relive.recorder.reader import (
    ORDER_ARRIVAL,
    ORDER_TIMELINE,
    EventFilter,
    Segment,
    arrival_order,
    build_page,
    merge_timeline,
    timeline_cursor,
)
from relive.recorder.v1 import event_pb2, recorder_pb2
from tests.unit.recorder_timeline import (
    ION,
    T0,
    blob_of,
    event,
    items_of,
    keys,
    stamp_parts,
    timeline,
)

Batch = tuple[str, list[tuple[int, int]], list[int]]

# Batches of up to three producers whose HLC times overlap a lot (3 s, few distinct ms).
batches = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.lists(st.tuples(st.integers(0, 3_000), st.integers(0, 2)), min_size=1, max_size=40),
        st.lists(st.integers(1, 15), max_size=5),
    ),
    min_size=1,
    max_size=5,
)


def _ordered(w: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    start, end = w
    if start is not None and end is not None and end < start:
        return end, start
    return start, end


# A window [start, end) on the offsets above; either end may be open.
windows = st.tuples(st.none() | st.integers(-10, 3_010), st.none() | st.integers(-10, 3_010)).map(
    _ordered
)


def _filter(window: tuple[int | None, int | None], **attributes: Any) -> EventFilter:
    start, end = window
    return EventFilter(
        start_ms=None if start is None else T0 + start,
        end_ms=None if end is None else T0 + end,
        **attributes,
    )


def _events(segments: Iterator[Segment]) -> list[event_pb2.Event]:
    return [e for seg in segments for e in seg.materialize()]


def _bound(order: str, flt: EventFilter) -> dict[str, Any]:
    return {"ion": ION, "o": order, "f": flt.fingerprint()}


def _page(
    docs: Sequence[dict[str, Any]], flt: EventFilter, order: str, size: int, token: str
) -> recorder_pb2.ListEventsResponse:
    """What ``Reader.page`` does once the store has scanned ``docs``."""
    payload = decode_token(token, expect=_bound(order, flt))
    if order == ORDER_ARRIVAL:
        by_seq = sorted(docs, key=lambda d: d["seq_key"])
        segments = arrival_order(by_seq, blob_of, flt, int(payload.get("s", 0)))
    else:
        segments = merge_timeline(docs, blob_of, flt, timeline_cursor(payload))
    return recorder_pb2.ListEventsResponse.FromString(
        build_page(segments, size, order, _bound(order, flt))
    )


# ---- the merge ---------------------------------------------------------------------------


@given(batches)
def test_overlapping_buckets_merge_into_timeline_order_without_loss_or_doubles(
    spec: list[Batch],
) -> None:
    docs, stamped = timeline(spec)
    segments = list(merge_timeline(docs, blob_of, EventFilter()))
    got = [e for seg in segments for e in seg.materialize()]
    assert keys(got) == sorted(keys(stamped))
    for seg in segments:
        assert seg.count == len(seg.materialize())
        assert seg.last_key == timeline_key(seg.materialize()[-1])


@given(batches, windows, st.integers(0, 60))
def test_a_window_and_a_cursor_cut_the_merged_timeline(
    spec: list[Batch], window: tuple[int | None, int | None], cursor_at: int
) -> None:
    docs, stamped = timeline(spec)
    everything = sorted(keys(stamped))
    after: TimelineKey | None = everything[cursor_at] if cursor_at < len(everything) else None
    flt = _filter(window)
    got = keys(_events(merge_timeline(docs, blob_of, flt, after)))
    assert got == [
        k
        for k in everything
        if (flt.start_ms is None or k[0] >= flt.start_ms)
        and (flt.end_ms is None or k[0] < flt.end_ms)
        and (after is None or k > after)
    ]


@given(batches, st.sampled_from(["t0", "t1", "t2"]), st.sampled_from(["n0", "n1", "n4"]))
def test_attribute_filters_pick_the_same_events_from_the_merge(
    spec: list[Batch], type_: str, node: str
) -> None:
    docs, stamped = timeline(spec)
    for flt in (
        EventFilter(types=frozenset({type_})),
        EventFilter(nodes=frozenset({node}), kinds=frozenset({event_pb2.EVENT_KIND_STAT})),
        EventFilter(kinds=frozenset({event_pb2.EVENT_KIND_SPAN})),
    ):
        got = keys(_events(merge_timeline(docs, blob_of, flt)))
        assert got == sorted(keys([e for e in stamped if flt.matches(e)]))


def test_a_bucket_that_overlaps_no_other_passes_through_undecoded() -> None:
    docs, _stamped = timeline([("a", [(i, 0) for i in range(10)], [4, 3]), ("b", [(50, 0)], [])])
    segments = list(merge_timeline(docs, blob_of, EventFilter()))
    assert [s.raw is not None for s in segments] == [True, True, True, True]
    page = build_page(iter(segments), 100, ORDER_TIMELINE, _bound(ORDER_TIMELINE, EventFilter()))
    assert page == b"".join(zlib.decompress(d["blob"]) for d in docs)
    # A window that cuts the first bucket decodes that one only.
    flt = _filter((2, None))
    cut = list(merge_timeline(docs, blob_of, flt))
    assert [s.raw is not None for s in cut] == [False, True, True, True]
    assert [e.hlc.physical_ms - T0 for e in _events(iter(cut))] == [2, 3, 4, 5, 6, 7, 8, 9, 50]


@given(batches, windows)
def test_arrival_order_is_sequence_order_after_the_cursor(
    spec: list[Batch], window: tuple[int | None, int | None]
) -> None:
    docs, stamped = timeline(spec)
    by_seq = sorted(docs, key=lambda d: d["seq_key"])
    flt = _filter(window)
    for after_seq in (0, len(stamped) // 2):
        got = [e.sequence for e in _events(arrival_order(by_seq, blob_of, flt, after_seq))]
        assert got == sorted(
            e.sequence for e in stamped if e.sequence > after_seq and flt.admits(e)
        )


# ---- pages -------------------------------------------------------------------------------


@given(batches, st.integers(1, 30), st.sampled_from([ORDER_TIMELINE, ORDER_ARRIVAL]), windows)
def test_paging_with_tokens_reads_what_one_read_does(
    spec: list[Batch], size: int, order: str, window: tuple[int | None, int | None]
) -> None:
    docs, stamped = timeline(spec)
    flt = _filter(window)
    whole = _page(docs, flt, order, 10_000, "")
    assert not whole.next_page_token
    paged: list[event_pb2.Event] = []
    token = ""
    for _ in range(len(stamped) // size + 2):  # bounded: a cursor that never moves fails
        page = _page(docs, flt, order, size, token)
        assert len(page.events) <= size
        paged.extend(page.events)
        token = page.next_page_token
        if not token:
            break
        assert len(page.events) == size
    assert not token
    assert keys(paged) == keys(whole.events)


def test_a_full_last_page_tells_whether_more_follow() -> None:
    docs, _stamped = timeline([("a", [(i, 0) for i in range(6)], [3])])
    first = _page(docs, EventFilter(), ORDER_TIMELINE, 3, "")
    assert len(first.events) == 3 and first.next_page_token
    second = _page(docs, EventFilter(), ORDER_TIMELINE, 3, first.next_page_token)
    assert len(second.events) == 3 and not second.next_page_token


def test_a_token_is_bound_to_its_order_and_filter() -> None:
    docs, _stamped = timeline([("a", [(i, 0) for i in range(6)], [])])
    token = _page(docs, EventFilter(), ORDER_TIMELINE, 2, "").next_page_token
    with pytest.raises(errors.InvalidArgument) as other_filter:
        _page(docs, EventFilter(types=frozenset({"t0"})), ORDER_TIMELINE, 2, token)
    with pytest.raises(errors.InvalidArgument) as other_order:
        _page(docs, EventFilter(), ORDER_ARRIVAL, 2, token)
    assert other_filter.value.field == other_order.value.field == "page_token"


@pytest.mark.parametrize("cursor", [None, [1, 2, 3], "k"])
def test_a_timeline_token_without_a_key_is_malformed(cursor: object) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        timeline_cursor(decode_token(encode_token({"k": cursor})))
    assert e.value.field == "page_token"


def test_the_first_page_has_no_cursor() -> None:
    assert timeline_cursor({}) is None
    assert timeline_cursor({"k": [T0, 1, "p", 9]}) == (T0, 1, "p", 9)


# ---- filters -----------------------------------------------------------------------------


def test_a_filter_names_the_field_it_refuses() -> None:
    with pytest.raises(errors.InvalidArgument) as backwards:
        EventFilter(start_ms=10, end_ms=5).check()
    assert backwards.value.field == "filter.end_time"
    with pytest.raises(errors.InvalidArgument) as trace:
        EventFilter(trace_id="XYZ").check()
    assert trace.value.field == "filter.trace_id"
    assert EventFilter(start_ms=5, end_ms=5, trace_id="ab" * 16).check() is not None


def test_narrowing_intersects_windows() -> None:
    flt = EventFilter(start_ms=10, end_ms=100, types=frozenset({"x"}))
    assert flt.narrowed(50, None) == EventFilter(50, 100, types=frozenset({"x"}))
    assert flt.narrowed(None, 20) == EventFilter(10, 20, types=frozenset({"x"}))
    assert EventFilter().narrowed(1, 2) == EventFilter(1, 2)


def test_matching_reads_every_attribute() -> None:
    e = event(T0, type="a", node="n", run="r", trace_id="ab" * 16)
    e.kind = event_pb2.EVENT_KIND_STAT
    assert EventFilter().admits(e)
    assert EventFilter(kinds=frozenset({event_pb2.EVENT_KIND_STAT}), types=frozenset("a")).admits(e)
    for miss in (
        EventFilter(kinds=frozenset({event_pb2.EVENT_KIND_LOG})),
        EventFilter(types=frozenset({"b"})),
        EventFilter(nodes=frozenset({"m"})),
        EventFilter(runs=frozenset({"q"})),
        EventFilter(trace_id="cd" * 16),
        EventFilter(start_ms=T0 + 1),
        EventFilter(end_ms=T0),
    ):
        assert not miss.admits(e), miss
    assert EventFilter(end_ms=T0).matches(e)  # matches() leaves the window to the caller


traces = st.sampled_from(["", "ab" * 16, "cd" * 16])


@given(
    st.lists(
        st.tuples(st.integers(0, 5_000), st.sampled_from("abc"), st.sampled_from("xy"), traces),
        min_size=1,
        max_size=30,
    ),
    windows,
    st.frozensets(st.sampled_from("abd")),
    st.frozensets(st.sampled_from("xz")),
    traces,
)
def test_a_pruned_bucket_holds_no_event_the_filter_wants(
    rows: list[tuple[int, str, str, str]],
    window: tuple[int | None, int | None],
    types: frozenset[str],
    nodes: frozenset[str],
    trace_id: str,
) -> None:
    events = [
        event(T0 + ms, producer="p", pseq=i + 1, type=t, node=n, trace_id=tr)
        for i, (ms, t, n, tr) in enumerate(rows)
    ]
    (doc,) = stamp_parts(events, [items_of(events)], 1, "p")
    stored = list(bk.decode_events(doc["blob"]))
    flt = _filter(window, types=types, nodes=nodes, trace_id=trace_id)
    if not flt.bucket_may_match(doc):
        assert not any(flt.admits(e) for e in stored)
    many = dict(doc, types=None, nodes=None, traces=None)
    if any(flt.admits(e) for e in stored):
        assert flt.bucket_may_match(many)
