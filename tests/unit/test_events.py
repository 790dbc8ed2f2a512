"""The one event builder: every kind, its place, its identity and its HLC; and to_struct."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from relive.events import (
    EventFactory,
    Producer,
    struct_to_dict,
    to_struct,
)
from relive.hlc import HybridLogicalClock
from relive.pipeline.events import ListSink

ION = "ions/churn"
RUN = "ions/churn/runs/run-1-abc"


class Wall:
    def __init__(self, ms: int = 1_790_000_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def factory(service_name: str = "relive-executor") -> EventFactory:
    return EventFactory(
        ION, RUN, "train", "fit", "ab" * 16, span_id="cd" * 8, service_name=service_name
    )


def test_every_kind_carries_its_attributes_and_its_place() -> None:
    f = factory()
    built = {
        "lifecycle": f.lifecycle("component.started", "RUNNING", {"round": 2}),
        "stat": f.stat("accuracy", 0.93, 4, {"split": "test"}),
        "model": f.model("logged", "models/m/versions/3", "f" * 64, batch=7),
        "dataset": f.dataset("sklearn://iris", "e" * 64, 1024),
        "error": f.error("component.failed", "ValueError", "bad", "Traceback ..."),
        "human": f.human("alice", "approve", "looks fine"),
        "custom": f.custom("stream.batch", {"batch": 3, "rows": 16}),
        "log": f.log("hello", "WARNING"),
    }
    for e in built.values():
        assert (e.ion, e.run, e.node, e.component) == (ION, RUN, "train", "fit")
        assert e.trace_id == "ab" * 16 and e.span_id == "cd" * 8
        assert e.time.seconds > 0
        # Identity and HLC are the sink's to give, together.
        assert not e.producer_id and not e.event_id and not e.hlc.physical_ms
    assert built["lifecycle"].lifecycle.state == "RUNNING"
    assert struct_to_dict(built["lifecycle"].lifecycle.details) == {"round": 2}
    stat = built["stat"].stat
    assert (stat.name, stat.value, stat.step, dict(stat.labels)) == (
        "accuracy",
        0.93,
        4,
        {"split": "test"},
    )
    assert built["model"].type == "model.logged"
    assert built["model"].model.batch == 7 and built["model"].model.sha256 == "f" * 64
    assert built["dataset"].type == "dataset.used"
    assert built["dataset"].dataset.size_bytes == 1024
    assert built["error"].error.error_type == "ValueError"
    assert built["human"].type == "human.approval"
    assert built["human"].human_action.user == "alice"
    assert struct_to_dict(built["custom"].custom.data) == {"batch": 3, "rows": 16}
    assert (built["log"].log.message, built["log"].log.severity) == ("hello", "WARNING")


def test_place_can_be_overridden_per_event_and_spans_looked_up() -> None:
    spans = {"infer": "11" * 8}
    f = EventFactory(ION, RUN, span_of=lambda node, _c: spans.get(node, "00" * 8))
    e = f.stat("canary.samples", 5, node="infer", component="")
    assert (e.node, e.component, e.span_id) == ("infer", "", "11" * 8)
    assert f.log("x").span_id == "00" * 8


def test_long_text_is_cut_so_the_event_is_not_refused() -> None:
    f = factory()
    e = f.error("component.failed", "E", "m" * 10_000, "t" * 20_000 + "END")
    assert len(e.error.message) == 4000
    assert e.error.traceback.endswith("END") and len(e.error.traceback) == 8000
    assert len(f.log("l" * 9000).log.message) == 8000


def test_a_span_keeps_its_start() -> None:
    f = factory()
    started = Timestamp(seconds=1_790_000_000)
    e = f.span("node train", "12" * 8, "34" * 8, ((1_790_000_000_000, 5), started), "boom")
    assert (e.hlc.physical_ms, e.hlc.logical) == (1_790_000_000_000, 5)
    assert e.span.start_time == started and e.time == started
    assert e.span.end_time.seconds >= started.seconds
    assert (e.span.status_code, e.span.status_message) == (2, "boom")
    assert e.span.service_name == "relive-executor"
    assert (
        factory(service_name="ingest").span("s", "1" * 16, "", ((1, 0), started)).span.status_code
        == 0
    )


def test_the_sink_stamps_identity_and_hlc_together_in_emit_order() -> None:
    wall = Wall()
    sink = ListSink("train.fit-attempt-1", HybridLogicalClock(wall))
    f = factory()
    events = [f.stat("loss", i) for i in range(5)]
    for e in reversed(events):  # built in one order, emitted in another
        sink.emit(e)
    emitted = sink.events
    assert [e.producer_sequence for e in emitted] == [1, 2, 3, 4, 5]
    assert {e.producer_id for e in emitted} == {"train.fit-attempt-1"}
    stamps = [(e.hlc.physical_ms, e.hlc.logical) for e in emitted]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5  # sequences grow with the clock


def test_an_event_with_its_own_identity_keeps_it_and_its_hlc() -> None:
    """What the executor does with a component's events: forwards them unchanged."""
    component = ListSink("train.fit-attempt-1", HybridLogicalClock(Wall(1_000)))
    component.emit(factory().stat("loss", 0.5))
    forwarded = component.events[0]
    executor = Producer("executor-1", HybridLogicalClock(Wall(9_000)))
    executor.stamp(forwarded)
    assert (forwarded.producer_id, forwarded.producer_sequence) == ("train.fit-attempt-1", 1)
    assert forwarded.hlc.physical_ms == 1_000
    # An event-id event keeps its id and gets an HLC only when it has none.
    by_id = factory().log("x")
    by_id.event_id = "evt-1"
    executor.stamp(by_id)
    assert not by_id.producer_id and by_id.hlc.physical_ms == 9_000
    # Its own sequence is not spent on events it only forwards.
    mine = executor.stamp(factory().log("y"))
    assert (mine.producer_id, mine.producer_sequence) == ("executor-1", 1)


def test_default_producer_ids_differ_and_name_what_produced() -> None:
    a, b = ListSink(), ListSink()
    assert a.producer.producer_id != b.producer.producer_id
    from relive.events import default_producer_id

    assert default_producer_id("train.fit").startswith("train.fit-")
    assert len(default_producer_id("x" * 400)) == 256


def test_to_struct_makes_values_json_like() -> None:
    s = to_struct(
        {
            "n": 10,
            "f": 0.5,
            "flag": True,
            "none": None,
            "np_int": np.int64(3),
            "np_float": np.float32(1.5),
            "array": np.array([[1, 2], [3, 4]]),
            "tuple": (1, "a"),
            "set": {"b", "a"},
            "nested": {1: {"deep": [np.bool_(True)]}},
            "other": Wall(),
        }
    )
    plain = struct_to_dict(s)
    assert plain["n"] == 10 and isinstance(plain["n"], float)
    assert plain["flag"] is True and plain["none"] is None
    assert plain["np_int"] == 3 and plain["np_float"] == 1.5
    assert plain["array"] == [[1, 2], [3, 4]]
    assert plain["tuple"] == [1, "a"]
    assert plain["set"] == ["a", "b"]
    assert plain["nested"] == {"1": {"deep": [True]}}
    assert isinstance(plain["other"], str)
    assert struct_to_dict(to_struct(None)) == {} == struct_to_dict(to_struct({}))


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=4), inner, max_size=4)
            ),
            max_leaves=12,
        ),
        max_size=6,
    )
)
def test_to_struct_round_trips_json_values(value: dict[str, object]) -> None:
    assert struct_to_dict(to_struct(value)) == value


def test_a_bad_keyword_is_refused_by_name() -> None:
    with pytest.raises(TypeError):
        factory().stat("x", 1.0, colour="red")


def test_spans_reserved_at_their_start_keep_sequences_growing_with_the_clock() -> None:
    """Spans end in another order than they start (the run's span ends last); their
    sequences, taken at the start with the HLC, still follow timeline order."""
    wall = Wall(1_000)
    spans = Producer("spans-1", HybridLogicalClock(wall))
    run = spans.reserve()
    wall.ms = 2_000
    node = spans.reserve()
    component = spans.reserve()
    ended = [component, node, run]  # the order they are recorded in
    in_timeline = sorted(ended, key=lambda r: r[1])
    assert [seq for seq, _ in in_timeline] == [1, 2, 3]
    assert in_timeline[0][1] == (1_000, 0)
