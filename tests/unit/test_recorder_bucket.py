"""The bucket format: cutting, stamping, the summary, keys and blobs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relive.recorder import bucket as bk
from relive.recorder.bucket import StampContext
from relive.recorder.v1 import event_pb2
from tests.unit.recorder_timeline import ION, NOW, PARENT, T0, event, items_of, stamp_parts

DAY = bk.LEVEL_SPANS_MS[-1]


# ---- cutting -------------------------------------------------------------------------------


def test_a_long_batch_is_cut_every_thousand_events() -> None:
    items = [(T0 + i, 0, i + 1, i) for i in range(2_500)]
    parts = bk.cut(items)
    assert [len(p) for p in parts] == [1000, 1000, 500]
    assert [it for p in parts for it in p] == items


def test_a_batch_spanning_more_than_a_day_is_cut_where_the_day_ends() -> None:
    times = [T0, T0 + 10, T0 + DAY, T0 + DAY + 1, T0 + 3 * DAY]
    items = [(ms, 0, i + 1, i) for i, ms in enumerate(times)]
    parts = bk.cut(items)
    assert [[it[0] for it in p] for p in parts] == [
        [T0, T0 + 10, T0 + DAY],
        [T0 + DAY + 1],
        [T0 + 3 * DAY],
    ]


@given(st.lists(st.integers(0, 3 * DAY), max_size=2_500).map(sorted))
def test_cutting_keeps_every_event_in_order_within_both_bounds(times: list[int]) -> None:
    items = [(T0 + ms, 0, i + 1, i) for i, ms in enumerate(times)]
    parts = bk.cut(items)
    assert [it for p in parts for it in p] == items
    for k, part in enumerate(parts):
        assert 1 <= len(part) <= bk.BUCKET_EVENTS
        assert part[-1][0] - part[0][0] <= DAY
        if k + 1 < len(parts) and len(part) < bk.BUCKET_EVENTS:
            # A bucket ends early only where the next event would break the span bound.
            assert parts[k + 1][0][0] - part[0][0] > DAY


# ---- stamping and the summary ---------------------------------------------------------------


def test_stamping_sets_the_server_fields_and_the_summary_in_one_go() -> None:
    events = [
        event(T0 + 5, producer="p", pseq=2, type="b", node="train", run="r1"),
        event(T0 + 1, producer="p", pseq=1, type="a", node="train", trace_id="ab" * 16),
        event(T0 + 900, 3, producer="p", pseq=3, type="a", run="r2"),
    ]
    events[2].ClearField("stat")  # no attributes: a custom event
    (doc,) = stamp_parts(events, [items_of(events)], 41, "p")
    decoded = list(bk.decode_events(doc["blob"]))
    assert [e.sequence for e in decoded] == [41, 42, 43]
    assert [e.hlc.physical_ms for e in decoded] == [T0 + 1, T0 + 5, T0 + 900]
    assert [e.name for e in decoded] == [f"ions/{ION}/events/{s}" for s in (41, 42, 43)]
    assert {e.ion for e in decoded} == {PARENT}
    assert [e.kind for e in decoded] == [
        event_pb2.EVENT_KIND_STAT,
        event_pb2.EVENT_KIND_STAT,
        event_pb2.EVENT_KIND_CUSTOM,
    ]
    assert all(e.HasField("receive_time") for e in decoded)
    assert decoded == [events[1], events[0], events[2]]  # stamped in place
    assert doc["first_key"] == [T0 + 1, 0, "p", 41]
    assert doc["last_key"] == [T0 + 900, 3, "p", 43]
    assert (doc["first_seq"], doc["last_seq"], doc["count"]) == (41, 43, 3)
    assert (doc["min_ms"], doc["max_ms"]) == (T0 + 1, T0 + 900)
    assert (doc["pfirst"], doc["plast"], doc["producer"]) == (1, 3, "p")
    assert doc["kinds"] == sorted({event_pb2.EVENT_KIND_STAT, event_pb2.EVENT_KIND_CUSTOM})
    assert doc["types"] == ["a", "b"]
    assert doc["nodes"] == ["train"]
    assert doc["runs"] == ["r1", "r2"]
    assert doc["traces"] == ["ab" * 16]
    assert doc["level"] == 0
    assert doc["seq_key"] == bk.seq_key(ION, 43)
    assert doc["time_key"] == bk.time_key(ION, 0, T0 + 1, 43)


def test_a_restored_event_keeps_its_receive_time() -> None:
    old = event(T0, producer="p", pseq=1)
    old.receive_time.FromMilliseconds(T0 - 5)
    fresh = event(T0 + 1, producer="p", pseq=2)
    ctx = StampContext.now(ION, PARENT, restore=True)
    stamp_parts([old, fresh], [items_of([old, fresh])], 1, "p", ctx)
    assert old.receive_time.ToMilliseconds() == T0 - 5
    assert fresh.receive_time == ctx.stamp


def test_a_summary_list_of_more_than_the_maximum_means_many() -> None:
    many = [event(T0 + i, pseq=i + 1, type=f"t{i}") for i in range(bk.SUMMARY_MAX + 1)]
    (doc,) = stamp_parts(many, [items_of(many)], 1, "p")
    assert doc["types"] is None
    (fewer,) = stamp_parts(many[:-1], [items_of(many[:-1])], 1, "p")
    assert fewer["types"] == sorted(f"t{i}" for i in range(bk.SUMMARY_MAX))


@given(
    st.lists(
        st.tuples(st.integers(0, 100_000), st.sampled_from(["a", "b", "c"]), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_the_summary_of_stored_events_is_the_one_stamping_built(
    rows: list[tuple[int, str, bool]],
) -> None:
    """Retention re-summarises stored events; it must agree with what the append wrote."""
    events = [
        event(T0 + ms, producer="p", pseq=i + 1, type=t, node=t if n else "")
        for i, (ms, t, n) in enumerate(rows)
    ]
    (doc,) = stamp_parts(events, [items_of(events)], 7, "p")
    again = bk.summarize(list(bk.decode_events(doc["blob"])))
    assert again == {k: doc[k] for k in again}
    assert doc["level"] == bk.level_of(doc["max_ms"] - doc["min_ms"])


def test_a_rewrite_keeps_the_sequence_bound_and_moves_the_time_key() -> None:
    events = [event(T0 + i * 10_000, pseq=i + 1) for i in range(10)]
    (doc,) = stamp_parts(events, [items_of(events)], 1, "p")
    assert doc["level"] == 2  # spans 90 s
    kept = list(bk.decode_events(doc["blob"]))[3:5]
    changes = bk.rewritten(doc, kept, NOW)
    assert changes["last_seq"] == 10 and changes["first_seq"] == 4
    assert changes["count"] == 2 and changes["min_ms"] == T0 + 30_000
    assert changes["time_key"] == bk.time_key(ION, 2, T0 + 30_000, 10)
    assert list(bk.decode_events(changes["blob"])) == kept
    assert "seq_key" not in changes and "pkey" not in changes


# ---- keys -----------------------------------------------------------------------------------

seqs = st.integers(0, 10**18)
millis = st.integers(0, bk.MAX_MS)


@given(seqs, seqs)
def test_sequence_keys_sort_as_the_numbers_do(a: int, b: int) -> None:
    assert (bk.seq_key(ION, a) < bk.seq_key(ION, b)) == (a < b)


@given(st.tuples(millis, seqs), st.tuples(millis, seqs), st.integers(0, 3))
def test_time_keys_sort_by_min_time_then_last_sequence(
    a: tuple[int, int], b: tuple[int, int], level: int
) -> None:
    ka, kb = bk.time_key(ION, level, *a), bk.time_key(ION, level, *b)
    assert (ka < kb) == (a < b)
    assert bk.time_prefix(ION, level, a[0]) <= ka


def test_time_prefixes_clamp_to_the_key_range() -> None:
    assert bk.time_prefix(ION, 0, -5) == bk.time_prefix(ION, 0, 0)
    assert bk.time_prefix(ION, 0, bk.MAX_MS + 10) == bk.time_prefix(ION, 0, bk.MAX_MS)


@given(seqs, seqs, st.text(max_size=8))
def test_producer_keys_sort_by_producer_sequence(a: int, b: int, producer: str) -> None:
    ka, kb = bk.producer_key(ION, producer, a), bk.producer_key(ION, producer, b)
    assert (ka < kb) == (a < b)
    assert (bk.anonymous_key(ION, a) < bk.anonymous_key(ION, b)) == (a < b)


@given(st.text(alphabet=":%ab", max_size=6), st.text(alphabet=":%ab", max_size=6), seqs)
def test_one_producers_keys_never_fall_in_anothers_range(p: str, q: str, n: int) -> None:
    """The dedup lookup ranges over one producer's prefix; ':' in a name must not leak."""
    inside = bk.producer_key(ION, p, n).startswith(bk.producer_prefix(ION, q))
    assert inside == (p == q)


def test_levels_are_the_first_span_that_bounds_a_bucket() -> None:
    assert [bk.level_of(s) for s in (0, 1_000, 1_001, 60_000, 3_600_001, DAY, DAY * 5)] == [
        0,
        0,
        1,
        1,
        3,
        3,
        3,
    ]
