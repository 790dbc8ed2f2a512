"""The executor seen from its API: launch, policies, runs, relaunch, verification, bad input."""
# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from relive import errors
from relive.executor.v1 import executor_pb2 as pb
from tests.executor_fixtures import (  # noqa: F401
    EXAMPLES,
    InProcessStack,
    ray_session,
    since,
    stack,
    start_stack,
    wait_for,
)

STEPS = "examples.patterns.steps"

TRAIN_AND_SCORE = """
name: NAME
nodes:
  train:
    pipeline:
      components:
        load: {call: STEPS:load, params: {dataset: iris}}
        fit:
          call: STEPS:fit
          after: [load]
          params: {model: forest, n_estimators: 5, unseeded: UNSEEDED}
        evaluate: {call: STEPS:evaluate, after: [fit]}
      outputs: {model: fit}
  gate:
    policy: approval
    params: {timeout_s: TIMEOUT}
  infer:
    pipeline:
      components:
        score: {call: STEPS:score, params: {dataset: iris}}
edges:
  - {from: train, to: gate, carries: model}
  - {from: gate, to: infer, carries: model}
"""


def write_ion(tmp_path: Path, name: str, unseeded: bool = False, timeout: float = 120) -> Path:
    text = (
        TRAIN_AND_SCORE.replace("NAME", name)
        .replace("STEPS", STEPS)
        .replace("UNSEEDED", str(unseeded).lower())
        .replace("TIMEOUT", f"{timeout:g}")
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def approve_when_waiting(
    stack: InProcessStack, run: str, node: str = "gate", approve: bool = True
) -> pb.Run:
    wait_for(lambda: stack.executor.get(run).state == pb.RUN_STATE_WAITING, 180)
    return stack.executor.approve(run, node, approve=approve, comment="checked by hand")


def test_launch_freezes_spec_and_records_everything(stack: InProcessStack, tmp_path: Path) -> None:
    ion = stack.register(write_ion(tmp_path, "frozen"))
    run = stack.executor.launch(ion, overrides={"train.fit.n_estimators": "7"}, seed=42)
    spec = run.spec
    assert spec.revision == f"{ion}/revisions/1" and spec.seed == 42 and spec.launch_number == 1
    assert spec.params["train.fit"]["n_estimators"] == 7
    assert spec.overrides == {"train.fit.n_estimators": "7"}
    assert [d.uri for d in spec.dataset_refs] == ["sklearn://iris"]
    assert len(spec.dataset_refs[0].sha256) == 64
    assert spec.environment.python_version == sys.version.split()[0]
    assert spec.environment.packages["numpy"] == np.__version__
    assert spec.environment.ray_version
    assert any(r.module == STEPS and r.commit for r in spec.code_refs)

    waiting = approve_when_waiting(stack, run.name)
    assert not waiting.is_terminal
    done = stack.executor.wait(run.name)
    assert done.state == pb.RUN_STATE_SUCCEEDED and done.is_terminal
    assert done.nodes[[n.node for n in done.nodes].index("train")].outputs["model"]

    events = list(stack.recorder.list_events(ion, runs=[run.name]))
    types = [e.type for e in events]
    launched = events[types.index("run.launched")]
    assert json_format.MessageToDict(launched.lifecycle.details)["spec"]["seed"] == "42"
    for t in (
        "run.started",
        "node.started",
        "node.finished",
        "component.started",
        "component.finished",
        "model.logged",
        "dataset.used",
        "prediction_digest",
        "human.approval",
        "run.finished",
    ):
        assert t in types, t
    stats = {(e.component, e.stat.name) for e in events if e.type == "stat"}
    for name in ("sys.wall_s", "sys.cpu_s", "sys.peak_rss_mb"):
        assert ("fit", name) in stats
    assert ("load", "profile.iris.f0.mean") in stats
    approval = next(e for e in events if e.type == "human.approval")
    assert (approval.human_action.user, approval.human_action.action) == ("tester", "approve")
    # The HLC orders the run: launched before anything a component did.
    assert launched.hlc.physical_ms <= min(e.hlc.physical_ms for e in events if e.component)

    listed = list(stack.executor.list(ion))
    assert [r.name for r in listed] == [run.name]


def test_bad_input_names_what_is_wrong(stack: InProcessStack, tmp_path: Path) -> None:
    ion = stack.register(write_ion(tmp_path, "bad"))
    with pytest.raises(errors.NotFound) as e:
        stack.executor.launch(ion, revision=7)
    assert e.value.field == "revision_id" and "revision 7" in e.value.message

    with pytest.raises(errors.InvalidArgument) as bad:
        stack.executor.launch(ion, overrides={"train.fit.learning_rate": "0.1"})
    assert bad.value.field == "overrides[train.fit.learning_rate]"
    assert "learning_rate" in bad.value.message and "n_estimators" in bad.value.message
    with pytest.raises(errors.InvalidArgument) as bad:
        stack.executor.launch(ion, overrides={"nope.fit.C": "1"})
    assert "nope" in bad.value.message

    run = stack.executor.launch(ion)
    with pytest.raises(errors.FailedPrecondition) as pre:
        stack.executor.approve(run.name, "infer")
    assert pre.value.reason == "NOT_WAITING" and "infer" in pre.value.message
    with pytest.raises(errors.NotFound):
        stack.executor.approve(run.name, "ghost")
    approve_when_waiting(stack, run.name)
    stack.executor.wait(run.name)

    # A capture whose window holds no run.launched event has no launch spec.
    empty = stack.recorder.create_capture(ion, "empty", since(3600), since(3000))
    with pytest.raises(errors.FailedPrecondition) as pre:
        stack.executor.relaunch(capture=empty.name)
    assert pre.value.reason == "NO_LAUNCH_SPEC" and "run.launched" in pre.value.message

    with pytest.raises(errors.NotFound):
        stack.executor.get(f"{ion}/runs/run-99")
    with pytest.raises(errors.InvalidArgument):
        stack.executor.relaunch(run=run.name, pipelines=["gate"])


def test_unseeded_component_is_caught_as_mismatch_at_its_node(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ion = stack.register(write_ion(tmp_path, "unseeded", unseeded=True))
    run = stack.executor.launch(ion, seed=5)
    approve_when_waiting(stack, run.name)
    original = stack.executor.wait(run.name)
    relaunch = stack.executor.wait(stack.executor.relaunch(run=original.name).name)
    assert relaunch.state == pb.RUN_STATE_SUCCEEDED, relaunch.error_message
    v = stack.executor.verify(original.name, relaunch.name)
    assert v.status == pb.VERIFICATION_STATUS_MISMATCH
    by_node = {n.node: n for n in v.nodes}
    assert by_node["train"].status == pb.VERIFICATION_STATUS_MISMATCH
    assert by_node["train"].first_divergent_event.startswith(f"{ion}/events/")
    assert "fit" in by_node["train"].reason
    # The recorded approval stood in for the person: the gate itself matches.
    assert by_node["gate"].status == pb.VERIFICATION_STATUS_MATCH


def test_single_pipeline_relaunch_reuses_the_upstream_model(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ion = stack.register(write_ion(tmp_path, "reuse"))
    run = stack.executor.launch(ion, seed=9)
    approve_when_waiting(stack, run.name)
    original = stack.executor.wait(run.name)
    upstream = {n.node: n for n in original.nodes}["train"].outputs["model"]

    relaunch = stack.executor.relaunch(run=original.name, pipelines=["infer"])
    relaunch = stack.executor.wait(relaunch.name)
    assert relaunch.state == pb.RUN_STATE_SUCCEEDED, relaunch.error_message
    nodes = {n.node: n for n in relaunch.nodes}
    assert not nodes["train"].executed and nodes["train"].outputs["model"] == upstream
    assert nodes["infer"].executed
    loaded = [
        e
        for e in stack.recorder.list_events(ion, runs=[relaunch.name])
        if e.type == "model.loaded" and e.node == "infer"
    ]
    mv = stack.registry.get_model_version(upstream)
    assert loaded and {e.model.sha256 for e in loaded} == {mv.sha256}
    assert {e.model.model_version for e in loaded} == {upstream}
    v = stack.executor.verify(original.name, relaunch.name)
    assert v.status == pb.VERIFICATION_STATUS_MATCH
    assert {n.node: n.reused for n in v.nodes}["train"]


def test_approval_rejected_or_timed_out_fails_the_run_with_the_reason(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ion = stack.register(write_ion(tmp_path, "reject"))
    run = stack.executor.launch(ion)
    approve_when_waiting(stack, run.name, approve=False)
    done = stack.executor.wait(run.name)
    assert done.state == pb.RUN_STATE_FAILED
    assert "rejected by tester" in done.error_message

    ion = stack.register(write_ion(tmp_path, "timeout", timeout=1))
    done = stack.run_to_end(ion)
    assert done.state == pb.RUN_STATE_FAILED
    assert "gate timed out after 1 s" in done.error_message
    assert {n.node: n.state for n in done.nodes}["infer"] == pb.RUN_STATE_CANCELLED


def test_cancel_stops_the_ray_tasks(stack: InProcessStack, tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(
        textwrap.dedent("""
        name: slow
        nodes:
          wait:
            pipeline:
              components:
                sleep: {call: tests.executor_components:slow, params: {seconds: 120}}
    """)
    )
    ion = stack.register(path)
    run = stack.executor.launch(ion)
    wait_for(lambda: stack.executor.get(run.name).state == pb.RUN_STATE_RUNNING, 60)
    time.sleep(1.0)
    t0 = time.monotonic()
    cancelled = stack.executor.cancel(run.name)
    assert time.monotonic() - t0 < 30
    assert cancelled.state == pb.RUN_STATE_CANCELLED and cancelled.is_terminal
    with pytest.raises(errors.FailedPrecondition):
        stack.executor.cancel(run.name)
    states = [r.state for r in stack.executor.watch(run.name)]
    assert states == [pb.RUN_STATE_CANCELLED]


def test_relaunch_refuses_a_changed_dataset_unless_drift_is_allowed(
    stack: InProcessStack, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data.csv"
    x = rng.normal(size=(60, 3))
    np.savetxt(data, np.column_stack([x, (x[:, 0] > 0).astype(int)]), delimiter=",")
    path = tmp_path / "csv.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: csv
        nodes:
          train:
            pipeline:
              components:
                fit: {{call: tests.executor_components:fit_csv, params: {{data_uri: "file://{data}"}}}}
              outputs: {{model: fit}}
    """)
    )
    ion = stack.register(path)
    original = stack.run_to_end(ion)
    assert original.state == pb.RUN_STATE_SUCCEEDED, original.error_message
    assert original.spec.dataset_refs[0].uri == f"file://{data}"

    with data.open("a") as f:
        f.write("0.1,0.2,0.3,1\n")
    with pytest.raises(errors.FailedPrecondition) as e:
        stack.executor.relaunch(run=original.name)
    assert e.value.reason == "DATASET_CHANGED" and str(data) in e.value.message
    drifted = stack.executor.wait(stack.executor.relaunch(run=original.name, allow_drift=True).name)
    assert drifted.state == pb.RUN_STATE_SUCCEEDED
    v = stack.executor.verify(original.name, drifted.name)
    assert v.status == pb.VERIFICATION_STATUS_MISMATCH


def test_command_component_gets_relive_variables_and_traceparent(
    stack: InProcessStack, tmp_path: Path
) -> None:
    script = tmp_path / "component.py"
    script.write_text(
        textwrap.dedent("""
        import json, os
        assert os.environ["TRACEPARENT"].startswith("00-")
        assert os.environ["RELIVE_RECORDER_ENDPOINT"]
        params = json.loads(os.environ["RELIVE_PARAMS"])
        print(json.dumps({"stat": "answer", "value": params["x"] * 2}))
        print("node", os.environ["RELIVE_NODE"], "seed", os.environ["RELIVE_SEED"])
    """)
    )
    path = tmp_path / "cmd.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: cmd
        nodes:
          other:
            pipeline:
              components:
                run: {{command: ["{sys.executable}", "{script}"], params: {{x: 21}}}}
    """)
    )
    ion = stack.register(path)
    run = stack.run_to_end(ion, seed=3)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error_message
    events = list(stack.recorder.list_events(ion, runs=[run.name]))
    assert [e.stat.value for e in events if e.type == "stat" and e.stat.name == "answer"] == [42]
    assert any(e.type == "log" and "node other seed" in e.log.message for e in events)
    again = stack.executor.wait(stack.executor.relaunch(run=run.name).name)
    assert stack.executor.verify(run.name, again.name).status == pb.VERIFICATION_STATUS_MATCH


def test_schedule_every_n_launches_reuses_the_last_model(
    stack: InProcessStack, tmp_path: Path
) -> None:
    text = (
        write_ion(tmp_path, "sched")
        .read_text()
        .replace(
            "      outputs: {model: fit}",
            "      outputs: {model: fit}\n    schedule: {every_launches: 2}",
        )
    )
    path = tmp_path / "sched2.yaml"
    path.write_text(text.replace("name: sched", "name: sched2"))
    ion = stack.register(path)
    runs = []
    for _ in range(2):
        run = stack.executor.launch(ion)
        approve_when_waiting(stack, run.name)
        runs.append(stack.executor.wait(run.name))
    first, second = ({n.node: n for n in r.nodes} for r in runs)
    assert first["train"].executed and not second["train"].executed
    assert second["train"].outputs["model"] == first["train"].outputs["model"]
    assert runs[1].spec.launch_number == 2
    assert runs[1].spec.pinned_models["train.model"] == first["train"].outputs["model"]


def test_runs_left_running_by_a_dead_executor_are_failed_on_start(stack: InProcessStack) -> None:
    from relive.executor.store import RunStore

    store = RunStore()
    orphan = pb.Run(name="ions/ghost/runs/run-1", state=pb.RUN_STATE_RUNNING)
    orphan.nodes.add(node="n", state=pb.RUN_STATE_RUNNING)
    store.create(orphan, "ghost", "default", 1)
    stack.executor_server.stop(0.5)
    servers, again = start_stack(stack.config)
    try:
        run = again.executor.get(orphan.name)
        assert run.state == pb.RUN_STATE_FAILED and run.is_terminal
        assert "executor restarted" in run.error_message
        assert run.nodes[0].state == pb.RUN_STATE_CANCELLED
    finally:
        for s in servers:
            s.stop(0.5)


def test_wall_clock_retraining_is_replayed_by_batch_position(
    stack: InProcessStack, tmp_path: Path
) -> None:
    path = tmp_path / "clock.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: clock
        nodes:
          train:
            pipeline:
              components:
                load: {{call: {STEPS}:load, params: {{dataset: iris}}}}
                fit: {{call: {STEPS}:fit, after: [load], params: {{model: tree, max_depth: 3}}}}
              outputs: {{model: fit}}
            schedule: {{every_seconds: 0.4}}
          infer:
            pipeline:
              components:
                score: {{call: {STEPS}:score, params: {{dataset: iris, interval_s: 0.15}}}}
            streaming: {{batches: 10, batch_size: 8, score: score}}
        edges:
          - {{from: train, to: infer, carries: model}}
    """)
    )
    ion = stack.register(path)
    original = stack.run_to_end(ion, seed=21)
    assert original.state == pb.RUN_STATE_SUCCEEDED, original.error_message
    relaunch = stack.executor.wait(stack.executor.relaunch(run=original.name).name)

    def timeline(run: pb.Run) -> list[tuple[str, int, str]]:
        return [
            (e.type, e.model.batch, e.model.sha256)
            for e in stack.recorder.list_events(ion, runs=[run.name], types=["model.swapped"])
        ]

    assert timeline(original), "the clock never triggered a retraining"
    assert timeline(relaunch) == timeline(original)
    assert stack.executor.verify(original.name, relaunch.name).status == (
        pb.VERIFICATION_STATUS_MATCH
    )
