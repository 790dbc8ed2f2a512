"""Node comparison: a relaunch against its original, node by node, from their events."""

from __future__ import annotations

from relive.executor.v1 import executor_pb2 as pb
from relive.executor.verify import compare_node, verify
from relive.pipeline.events import EventFactory
from relive.recorder.v1.event_pb2 import Event

MATCH, MISMATCH = pb.VERIFICATION_STATUS_MATCH, pb.VERIFICATION_STATUS_MISMATCH


class Run:
    """Builds one run's events, each with its resource name, as the recorder would."""

    def __init__(self, name: str) -> None:
        self.factory = EventFactory("ions/app", f"ions/app/runs/{name}")
        self.events: list[Event] = []

    def add(self, event: Event) -> Event:
        event.name = f"ions/app/events/{self.factory.run[-1]}{len(self.events)}"
        self.events.append(event)
        return event

    def trained(self, sha: str, accuracy: float, wall: float = 1.0) -> Run:
        f = self.factory
        self.add(f.lifecycle("node.started", "RUNNING", {"round": 0}, node="train", component=""))
        self.add(f.stat("accuracy", accuracy, node="train", component="fit"))
        self.add(f.stat("sys.wall_s", wall, node="train", component="fit"))
        self.add(f.model("logged", "models/m/versions/1", sha, node="train", component="fit"))
        return self


def test_identical_runs_match_and_count_what_was_compared() -> None:
    a, b = Run("a").trained("s1", 0.9), Run("b").trained("s1", 0.9, wall=7.0)
    result = compare_node("train", a.events, b.events, 1e-9)
    assert result.status == MATCH and result.compared == 2  # system stats are left out
    assert not result.first_divergent_event and not result.reason


def test_a_different_model_is_the_first_divergent_event() -> None:
    a, b = Run("a").trained("s1", 0.9), Run("b").trained("s2", 0.9)
    result = compare_node("train", a.events, b.events, 1e-9)
    assert result.status == MISMATCH
    assert result.first_divergent_event == a.events[3].name
    assert result.reason == "model fit: original s1, relaunch s2"


def test_stats_compare_within_the_tolerance() -> None:
    a, b = Run("a").trained("s1", 0.9), Run("b").trained("s1", 0.9 * (1 + 1e-4))
    assert compare_node("train", a.events, b.events, 1e-3).status == MATCH
    strict = compare_node("train", a.events, b.events, 1e-6)
    assert strict.status == MISMATCH and strict.first_divergent_event == a.events[1].name
    assert strict.reason.startswith("stat fit accuracy 0: original 0.9, relaunch 0.90009")


def test_facts_missing_from_either_side_are_mismatches() -> None:
    a = Run("a").trained("s1", 0.9)
    b = Run("b").trained("s1", 0.9)
    b.add(b.factory.human("x", "approve", node="train", component=""))
    only_b = compare_node("train", a.events, b.events, 1e-9)
    assert only_b.status == MISMATCH and only_b.reason == "approval : only in the relaunch"
    assert only_b.first_divergent_event == b.events[-1].name
    missing = compare_node("train", b.events, a.events, 1e-9)
    assert missing.reason == "approval : recorded in the original, missing in the relaunch"


def test_a_reused_node_matches_when_it_reused_the_original_models() -> None:
    a = Run("a").trained("s1", 0.9)
    b = Run("b")
    skipped = {"executed": False, "outputs": {"model": "models/m/versions/1"}}
    b.add(b.factory.lifecycle("node.skipped", "SUCCEEDED", skipped, node="train", component=""))
    outputs = {"model": "models/m/versions/1"}
    result = compare_node("train", a.events, b.events, 1e-9, outputs)
    assert result.status == MATCH and result.reused and result.compared == 1
    other = compare_node("train", a.events, b.events, 1e-9, {"model": "models/m/versions/9"})
    assert other.status == MISMATCH
    assert other.reason == (
        "reused output model is models/m/versions/1, the original made models/m/versions/9"
    )


def test_a_node_with_nothing_to_compare_matches_with_nothing_compared() -> None:
    a, b = Run("a"), Run("b")
    for run in (a, b):
        run.add(run.factory.lifecycle("node.started", "RUNNING", node="gate", component=""))
    result = compare_node("gate", a.events, b.events, 1e-9)
    assert result.status == MATCH and result.compared == 0


def test_the_verification_mismatches_when_any_node_does() -> None:
    a = Run("a").trained("s1", 0.9)
    b = Run("b").trained("s2", 0.9)
    v = verify("ions/app/runs/a", "ions/app/runs/b", ["gate", "train"], a.events, b.events, 1e-9)
    assert [(n.node, n.status) for n in v.nodes] == [("gate", MATCH), ("train", MISMATCH)]
    assert v.status == MISMATCH and v.tolerance == 1e-9
