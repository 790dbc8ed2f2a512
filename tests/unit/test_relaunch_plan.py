"""Relaunch planning from recorded events: which decisions are replayed by node and round,
where swaps land, and what a relaunch of chosen pipelines runs again."""

from __future__ import annotations

import pytest

from relive.errors import InvalidArgument
from relive.executor import relaunch
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import EventFactory
from tests.unit.memory_policy_context import ion
from tests.unit.test_graph import APP


def test_recorded_decisions_swaps_and_outputs_are_read_by_node_and_round() -> None:
    f = EventFactory("ions/test", "ions/test/runs/run-1")
    events = [
        f.lifecycle("node.finished", "SUCCEEDED", {"outputs": {"model": "m/1"}}, node="train"),
        f.lifecycle(
            "node.finished", "SUCCEEDED", {"round": 1, "outputs": {"model": "m/2"}}, node="train"
        ),
        f.human("alice", "approve", node="gate", component=""),
        f.human("timeout", "reject", node="gate", component="@2"),
        f.custom("champion.decision", {"winner": "challenger"}, node="pick", component=""),
        f.custom("stream.retrain", {"round": 1, "batch": 4}, node="infer"),
        f.custom("stream.swap", {"round": 1, "batch": 6}, node="infer"),
        f.custom("approval.rule", {"rule": "x", "result": True}, node="gate"),
    ]
    assert {"human.approval", "champion.decision"} <= set(relaunch.recorded_types())
    recorded = relaunch.read_recorded(events, None)
    assert recorded.outputs == {"train": {"model": "m/1"}}  # round 0 only
    assert recorded.swaps == {"infer": [(1, 6)]} and recorded.retrains == {"infer": [(1, 4)]}
    plan, _ = relaunch.plan(pb.LaunchSpec(), recorded, [])
    assert plan.relaunch and plan.execute is None
    assert plan.recorded("gate", 0, "human.approval") is events[2]
    assert plan.recorded("gate", 2, "human.approval") is events[3]
    assert plan.recorded("pick", 0, "champion.decision") is events[4]
    assert plan.recorded("pick", 1, "champion.decision") is None


def test_the_stored_run_fills_in_outputs_the_events_lack() -> None:
    stored = pb.Run()
    stored.nodes.add(node="serving", outputs={"model": "m/7"})
    stored.nodes.add(node="gate")
    assert relaunch.read_recorded([], stored).outputs == {"serving": {"model": "m/7"}}


def test_chosen_pipelines_rerun_with_the_policies_that_depend_on_them() -> None:
    spec = pb.LaunchSpec(definition=ion(APP))
    # pick reruns with either side; the canary only when all it compares rerun.
    assert relaunch.chosen_nodes(spec, ["train"]) == {"train", "pick", "gate"}
    assert relaunch.chosen_nodes(spec, ["serving", "infer"]) == {"serving", "pick", "gate", "infer"}
    assert relaunch.chosen_nodes(spec, ["train", "infer", "control"]) == {
        "train",
        "pick",
        "gate",
        "infer",
        "control",
        "canary",
    }
    recorded = relaunch.Recorded(outputs={"serving": {"model": "m/1"}, "train": {"model": "m/2"}})
    plan, new_spec = relaunch.plan(spec, recorded, ["train"])
    assert plan.execute == {"train", "pick", "gate"}
    assert dict(new_spec.pinned_models) == {"serving.model": "m/1"}
    assert not spec.pinned_models  # the original's spec is left as it was


def test_choosing_a_node_that_is_no_pipeline_names_the_pipelines() -> None:
    spec = pb.LaunchSpec(definition=ion(APP))
    with pytest.raises(InvalidArgument) as e:
        relaunch.chosen_nodes(spec, ["gate"])
    assert e.value.field == "pipelines"
    assert e.value.message == (
        "--pipeline gate: the ION has no pipeline node 'gate' (pipelines: control, infer, "
        "serving, train)"
    )
