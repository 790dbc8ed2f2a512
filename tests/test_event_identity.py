"""The executor and its components record through one producer-identity sink: every event of a
run is on the recorder's fast dedup path, each producer's sequences grow with its clock, and
events the recorder refuses fail the run with the reason instead of vanishing."""

# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from relive.executor.v1 import executor_pb2 as pb
from relive.recorder.v1 import event_pb2
from tests.executor_fixtures import InProcessStack, ray_session, stack  # noqa: F401

ION = """\
name: NAME
nodes:
  train:
    pipeline:
      components:
        load: {call: examples.churn.steps:load}
        fit: {call: examples.churn.steps:fit, after: [load], params: {C: 0.5}}
        COMPONENT
      outputs: {model: fit}
"""


def register(stack: InProcessStack, tmp_path: Path, name: str, component: str = "") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(ION.replace("NAME", name).replace("COMPONENT", component))
    return stack.register(path)


def by_producer(events: list[event_pb2.Event]) -> dict[str, list[event_pb2.Event]]:
    out: dict[str, list[event_pb2.Event]] = defaultdict(list)
    for e in events:
        out[e.producer_id].append(e)
    return out


def test_a_runs_events_carry_producer_identities_that_grow_with_the_clock(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ion = register(stack, tmp_path, "ident")
    run = stack.run_to_end(ion)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error_message
    events = list(stack.recorder.list_events(ion, runs=[run.name]))
    assert events and all(e.producer_id and not e.event_id for e in events)
    producers = by_producer(events)
    for producer, mine in producers.items():
        # Timeline order (what list_events returns) is producer-sequence order: the recorder's
        # producer dedup relies on it, for resends and for a re-import alike.
        sequences = [e.producer_sequence for e in mine]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences), producer
    spans = [e for e in events if e.type == "span"]
    assert len(spans) == 4  # the run, the node, two components
    # The run's spans are one producer of their own, numbered by when they started.
    assert len({span.producer_id for span in spans}) == 1
    assert sorted(span.producer_sequence for span in spans) == [1, 2, 3, 4]
    # Each component attempt is a producer of its own, numbering its events from 1; the
    # executor forwarded them with that identity.
    for component in ("load", "fit"):
        theirs = {e.producer_id for e in events if e.component == component and e.type != "span"}
        assert len(theirs) == 1, theirs
        (producer,) = theirs
        assert producer.startswith(f"train.{component}-")
        assert producers[producer][0].producer_sequence == 1
    executor = {e.producer_id for e in events if e.type in ("run.launched", "run.finished")}
    assert len(executor) == 1

    relaunch = stack.executor.wait(stack.executor.relaunch(run=run.name).name, timeout=240)
    assert relaunch.state == pb.RUN_STATE_SUCCEEDED, relaunch.error_message
    again = list(stack.recorder.list_events(ion, runs=[relaunch.name]))
    component_producers = {e.producer_id for e in events if e.component and e.type != "span"}
    assert not component_producers & {e.producer_id for e in again}
    # Nothing of the original was stored twice by the relaunch.
    assert len(list(stack.recorder.list_events(ion, runs=[run.name]))) == len(events)


def test_events_the_recorder_refuses_fail_the_run_with_the_reason(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ion = register(stack, tmp_path, "refused", "odd: {call: tests.event_components:overlong_type}")
    run = stack.run_to_end(ion)
    assert run.state == pb.RUN_STATE_FAILED
    assert "the recorder refused 1 event(s)" in run.error_message
    assert ".type" in run.error_message and "256" in run.error_message
    stored = list(stack.recorder.list_events(ion, runs=[run.name]))
    assert "run.finished" in {e.type for e in stored}
    assert any(e.type == "stat" and e.stat.name == "before" for e in stored)
