"""The console's aggregation and trace building, without services or a browser: what a late
event, a span tree and the lane order look like to the person reading the page."""

from __future__ import annotations

import subprocess
import sys

from relive.console.backend import _node_order, span_tree
from relive.console.index import TimelineIndex
from relive.recorder.v1 import event_pb2
from relive.registry.v1 import registry_pb2


def _event(seq: int, ms: int, node: str = "infer", **kw: object) -> event_pb2.Event:
    e = event_pb2.Event(sequence=seq, hlc=event_pb2.Hlc(physical_ms=ms), node=node, type="x")
    for key, value in kw.items():
        setattr(e, key, value)
    return e


def _stat(seq: int, ms: int, node: str = "infer", run: str = "") -> event_pb2.Event:
    e = _event(seq, ms, node, run=run)
    e.kind = event_pb2.EVENT_KIND_STAT
    e.stat.name = "accuracy"
    return e


def _error(seq: int, ms: int, node: str = "infer", run: str = "") -> event_pb2.Event:
    e = _event(seq, ms, node, run=run)
    e.kind = event_pb2.EVENT_KIND_ERROR
    e.error.error_type = "ValueError"
    e.error.message = "bad batch"
    return e


def test_histogram_counts_per_lane_and_marks_errors_one_by_one() -> None:
    index = TimelineIndex("ions/a")
    index.add([_stat(i + 1, 1000 + i * 10, node="train" if i % 2 else "infer") for i in range(100)])
    index.add([_error(101, 1500, run="ions/a/runs/r1")])
    hist = index.histogram(1000, 2000, 10)
    lanes = {lane["node"]: lane["counts"] for lane in hist["lanes"]}
    assert hist["total"] == 101
    assert lanes["train"] == [5] * 10
    assert sum(lanes["infer"]) == 51 and lanes["infer"][5] == 6
    assert [m["summary"] for m in hist["marks"]] == ["ValueError: bad batch"]
    assert hist["runs"] == [
        {
            "run": "ions/a/runs/r1",
            "start": 1500,
            "end": 1500,
            "errors": 1,
            "lanes": {"infer": [1500, 1500]},
        }
    ]


def test_late_event_lands_at_its_time_not_its_arrival() -> None:
    index = TimelineIndex("ions/a")
    index.add([_stat(1, 1000), _stat(2, 5000), _stat(3, 9000)])
    index.add([_error(4, 2000)])  # arrives last, happened second
    hist = index.histogram(0, 10_000, 10)
    (infer,) = [lane for lane in hist["lanes"] if lane["node"] == "infer"]
    assert infer["counts"][2] == 1 and infer["errors"] == 1
    assert index.histogram(1500, 2500, 1)["total"] == 1
    assert index.extent() == (1000, 9000)


def test_a_resent_event_is_not_counted_twice() -> None:
    index = TimelineIndex("ions/a")
    index.add([_stat(1, 1000), _stat(2, 2000)])
    index.add([_stat(2, 2000), _stat(3, 3000)])
    assert index.histogram(0, 10_000, 1)["total"] == 3


def test_live_subscribers_get_new_events() -> None:
    index = TimelineIndex("ions/a")
    sub = index.subscribe()
    index.add([_error(1, 1000)])
    batch = sub.get_nowait()
    assert batch is not None and batch[0]["kind"] == "error"
    index.unsubscribe(sub)
    index.add([_error(2, 2000)])
    assert sub.empty()


def test_span_tree_nests_by_parent_and_keeps_unrecorded_spans() -> None:
    root = _event(1, 100, span_id="a" * 16, trace_id="t" * 32)
    root.kind = event_pb2.EVENT_KIND_SPAN
    root.span.name = "score"
    root.span.start_time.FromMilliseconds(90)
    root.span.end_time.FromMilliseconds(200)
    child = _event(2, 150, span_id="b" * 16, trace_id="t" * 32)
    child.kind = event_pb2.EVENT_KIND_SPAN
    child.span.name = "predict"
    child.span.parent_span_id = "a" * 16
    child.span.start_time.FromMilliseconds(120)
    child.span.end_time.FromMilliseconds(150)
    inside = _error(3, 140, node="infer")
    inside.span_id = "b" * 16
    orphan = _stat(4, 300, node="train")
    orphan.component = "fit"
    orphan.span_id = "c" * 16
    roots = span_tree([root, child, inside, orphan])
    assert [r["name"] for r in roots] == ["score", "train"]
    assert roots[0]["children"][0]["name"] == "predict"
    assert roots[0]["children"][0]["events"][0]["kind"] == "error"
    assert roots[1]["children"][0]["name"] == "fit"
    assert roots[1]["children"][0]["events"][0]["sequence"] == 4


def test_lanes_follow_the_ion_in_dependency_order() -> None:
    definition = registry_pb2.IonDefinition(name="a")
    for node in ("infer", "approve", "train", "zeta"):
        definition.nodes[node].pipeline.components["c"].call = "m:f"
    definition.edges.add(from_node="train", to_node="approve", carries="model")
    definition.edges.add(from_node="approve", to_node="infer", carries="model")
    assert [n["node"] for n in _node_order(definition)] == ["train", "zeta", "approve", "infer"]


def test_relive_console_command_is_registered() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relive.cli.main", "console", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--port" in out.stdout and "--open" in out.stdout
