"""Code provenance, end to end: a launch records the code each component really runs (a
snapshot of its code root), every component runs from its run's snapshot, and a relaunch
runs the recorded code after the code has moved on, or today's code with --code current,
and verification says why the two diverged."""
# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from relive import errors
from relive.cli.main import main
from relive.client.sink import EventSink
from relive.core.config import Config
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.v1 import executor_pb2_grpc
from relive.pipeline.events import EventFactory
from tests.executor_fixtures import InProcessStack, ray_session, since, start_stack  # noqa: F401

MODULE = "mlcode.steps"
STEPS = """\
\"\"\"A component whose model and stats depend on this file's VERSION.\"\"\"
import os
import time

VERSION = {version}


def fit(ctx, sleep_s=0.0):
    time.sleep(sleep_s)
    ctx.log_stat("version", VERSION)
    ctx.log_stat("sys.pid", os.getpid())  # sys.*: left out of verification
    return {{"version": VERSION, "weights": [VERSION * w for w in (0.5, 0.25)]}}
"""
ION = """\
name: NAME
nodes:
  train:
    pipeline:
      components:
        fit: {call: mlcode.steps:fit, params: {sleep_s: 0}}
      outputs: {model: fit}
  transfer:
    policy: model_transfer
edges:
  - {from: train, to: transfer, carries: model}
"""
MATCH, MISMATCH = pb.VERIFICATION_STATUS_MATCH, pb.VERIFICATION_STATUS_MISMATCH


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def write_steps(repo: Path, version: int) -> None:
    (repo / "mlcode" / "steps.py").write_text(STEPS.format(version=version))


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository of component code, outside the working directory and sys.path."""
    repo = tmp_path / "code"
    (repo / "mlcode").mkdir(parents=True)
    (repo / "mlcode" / "__init__.py").write_text("")
    write_steps(repo, 1)
    git(repo, "init", "-q")
    commit(repo, "version 1")
    return repo


def start(config: Config, code_root: Path) -> tuple[list, InProcessStack]:
    return start_stack(config.with_(code_path=(str(code_root),)))


@pytest.fixture
def code_stack(config: Config, ray_session: object, repo: Path) -> Iterator[InProcessStack]:
    """A stack whose code path is the repository (and nothing else)."""
    servers, s = start(config, repo)
    yield s
    stop(servers, s)


def stop(servers: list, s: InProcessStack) -> None:
    for server in servers:
        server.stop(0.5)
    for ch in s.channels:
        ch.close()
    s.recorder.close()


def register(s: InProcessStack, tmp_path: Path, name: str, text: str = ION) -> str:
    path = tmp_path / f"{name}.yaml"  # beside the repository, not in it
    path.write_text(text.replace("NAME", name))
    return s.register(path)


def stat(s: InProcessStack, ion: str, run: str, name: str) -> list[float]:
    events = s.recorder.list_events(ion, runs=[run], types=["stat"])
    return [e.stat.value for e in events if e.stat.name == name]


def finished(s: InProcessStack, run: pb.Run) -> pb.Run:
    done = s.executor.wait(run.name, timeout=300)
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error_message
    return done


def test_a_relaunch_after_a_commit_runs_the_recorded_code_and_matches(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    s = code_stack
    ion = register(s, tmp_path, "committed")
    first_commit = git(repo, "rev-parse", "HEAD")
    original = finished(s, s.executor.launch(ion, seed=7))
    [ref] = original.spec.code_refs
    assert (ref.module, ref.repo, ref.path, ref.commit, ref.dirty) == (
        MODULE,
        str(repo.resolve()),
        "mlcode/steps.py",
        first_commit,
        False,
    )
    assert len(ref.tree_sha256) == 64 and ref.snapshot == f"codeSnapshots/{ref.tree_sha256}"
    assert ref.root == str(repo.resolve()) and len(ref.file_sha256) == 64
    snapshot = s.registry.get_code_snapshot(ref.snapshot)
    assert set(snapshot.files) == {"mlcode/__init__.py", "mlcode/steps.py"}
    assert (snapshot.kind, snapshot.commit, snapshot.dirty) == ("git", first_commit, False)
    assert stat(s, ion, original.name, "version") == [1]

    write_steps(repo, 2)  # changes the model
    second_commit = commit(repo, "version 2")
    register(s, tmp_path, "committed")

    again = finished(s, s.executor.relaunch(run=original.name))
    assert stat(s, ion, again.name, "version") == [1]
    assert list(again.spec.code_refs) == list(original.spec.code_refs)
    verdict = s.executor.verify(original.name, again.name)
    assert verdict.status == MATCH, [(n.node, n.reason) for n in verdict.nodes]
    assert list(verdict.differences) == []

    # A new launch in the same running stack records and runs the new commit.
    later = finished(s, s.executor.launch(ion, seed=7))
    [new_ref] = later.spec.code_refs
    assert new_ref.commit == second_commit and new_ref.tree_sha256 != ref.tree_sha256
    assert stat(s, ion, later.name, "version") == [2]


def test_two_launches_with_different_code_in_one_stack_each_run_their_own(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    s = code_stack
    ion = register(s, tmp_path, "side-by-side")
    slow = s.executor.launch(ion, overrides={"train.fit.sleep_s": "3"})
    write_steps(repo, 2)  # uncommitted: the tree is dirty now
    fast = s.executor.launch(ion)
    slow, fast = finished(s, slow), finished(s, fast)
    assert stat(s, ion, slow.name, "version") == [1]
    assert stat(s, ion, fast.name, "version") == [2]
    assert not slow.spec.code_refs[0].dirty and fast.spec.code_refs[0].dirty
    # Different snapshots, different runtime envs, different worker processes.
    assert stat(s, ion, slow.name, "sys.pid") != stat(s, ion, fast.name, "sys.pid")


def test_a_relaunch_after_the_code_directory_is_gone_is_served_from_the_snapshot(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    s = code_stack
    ion = register(s, tmp_path, "moved")
    original = finished(s, s.executor.launch(ion, seed=3))
    repo.rename(tmp_path / "elsewhere")
    # And no materialized copy here either: the relaunch downloads it from the registry.
    shutil.rmtree(s.config.data_dir / "code" / "trees")
    again = finished(s, s.executor.relaunch(run=original.name))
    assert stat(s, ion, again.name, "version") == [1]
    assert s.executor.verify(original.name, again.name).status == MATCH
    assert (s.config.data_dir / "code" / "trees" / original.spec.code_refs[0].tree_sha256).is_dir()


def test_a_dirty_tree_is_reproduced_from_its_stored_diff(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    s = code_stack
    ion = register(s, tmp_path, "dirty")
    (repo / "mlcode" / "extra.py").write_text("BONUS = 10\n")  # untracked
    steps = STEPS.format(version=3).replace(
        "VERSION = 3", "from mlcode.extra import BONUS\n\nVERSION = 3 + BONUS"
    )
    (repo / "mlcode" / "steps.py").write_text(steps)  # uncommitted
    original = finished(s, s.executor.launch(ion, seed=5))
    [ref] = original.spec.code_refs
    assert ref.dirty and ref.commit == git(repo, "rev-parse", "HEAD")
    assert "mlcode/extra.py" in s.registry.get_code_snapshot(ref.snapshot).files
    assert stat(s, ion, original.name, "version") == [13]

    git(repo, "checkout", "--", ".")
    git(repo, "clean", "-fdq")  # the working tree is back at the commit: version 1
    shutil.rmtree(s.config.data_dir / "code" / "trees")
    again = finished(s, s.executor.relaunch(run=original.name))
    assert stat(s, ion, again.name, "version") == [13]
    assert s.executor.verify(original.name, again.name).status == MATCH


def test_a_command_components_script_change_is_recorded_and_reproduced(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    s = code_stack
    tools = repo / "tools"
    tools.mkdir()
    script = 'import json\nprint(json.dumps({"stat": "version", "value": VALUE}))\n'
    (tools / "report.py").write_text(script.replace("VALUE", "1"))
    commit(repo, "a report script")
    text = textwrap.dedent(f"""\
        name: NAME
        nodes:
          report:
            pipeline:
              components:
                write: {{command: [{json.dumps(sys.executable)}, tools/report.py]}}
        """)
    ion = register(s, tmp_path, "scripted", text)
    original = finished(s, s.executor.launch(ion))
    [ref] = original.spec.code_refs
    assert (ref.module, ref.path, ref.dirty) == ("tools/report.py", "tools/report.py", False)

    (tools / "report.py").write_text(script.replace("VALUE", "2"))
    commit(repo, "report 2")
    again = finished(s, s.executor.relaunch(run=original.name))
    assert stat(s, ion, again.name, "version") == [1]
    assert s.executor.verify(original.name, again.name).status == MATCH

    current = finished(s, s.executor.relaunch(run=original.name, code="current"))
    assert stat(s, ion, current.name, "version") == [2]
    verdict = s.executor.verify(original.name, current.name)
    assert verdict.status == MISMATCH
    [code] = [d for d in verdict.differences if d.kind == "code"]
    assert code.key == "tools/report.py" and "1 file changed (tools/report.py)" in code.detail
    [report] = verdict.nodes
    assert report.likely_cause == code.detail


def relive(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_relive_verify_names_the_cause_when_current_code_diverges(
    code_stack: InProcessStack,
    repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = code_stack
    monkeypatch.setenv("RELIVE_REGISTRY_ENDPOINT", s.config.registry_endpoint or "")
    monkeypatch.setenv("RELIVE_RECORDER_ENDPOINT", s.config.recorder_endpoint or "")
    monkeypatch.setenv("RELIVE_EXECUTOR_ENDPOINT", f"127.0.0.1:{s.executor_server.port}")
    ion = register(s, tmp_path, "diverged")
    before = git(repo, "rev-parse", "HEAD")
    original = finished(s, s.executor.launch(ion, seed=11))
    write_steps(repo, 2)
    after = commit(repo, "version 2")

    code, out = relive(capsys, "relaunch", original.name, "--code", "current", "--wait", "--json")
    relaunched = json.loads(out)
    assert code == 0 and relaunched["state"] == "SUCCEEDED", relaunched
    assert relaunched["spec"]["code_refs"][0]["commit"] == after
    assert stat(s, ion, relaunched["name"], "version") == [2]
    # The relaunch recorded its own environment (the same interpreter here).
    assert relaunched["spec"]["environment"]["python_version"] == sys.version.split()[0]

    cause = (
        f"code of module {MODULE} changed: commit {before[:7]} → {after[:7]}, "
        "1 file changed (mlcode/steps.py)"
    )
    code, out = relive(capsys, "verify", original.name, relaunched["name"])
    assert code == 1 and out.startswith("MISMATCH")
    assert f"likely cause of train: {cause}" in out
    assert f"code         {cause}" in out
    code, out = relive(capsys, "verify", original.name, relaunched["name"], "--json")
    verdict = json.loads(out)
    train = next(d for d in verdict["details"] if d["node"] == "train")
    assert train["status"] == "MISMATCH" and train["likely_cause"] == cause
    assert [d["kind"] for d in verdict["differences"]] == ["code"]
    assert verdict["differences"][0]["original"] == original.spec.code_refs[0].tree_sha256

    with pytest.raises(SystemExit) as exit_:
        main(["relaunch", original.name, "--code", "yesterday"])
    assert exit_.value.code == 2
    assert "invalid choice: 'yesterday'" in capsys.readouterr().err


# ---- bad input: a clear error naming the field, and no run left behind ----------------------


def test_a_tree_over_the_bound_fails_the_launch_naming_the_setting(
    config: Config,
    ray_session: object,
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELIVE_CODE_MAX_BYTES", "200")
    servers, s = start(config, repo)
    try:
        ion = register(s, tmp_path, "too-big")
        with pytest.raises(errors.FailedPrecondition) as e:
            s.executor.launch(ion)
        assert e.value.field == "RELIVE_CODE_MAX_BYTES" and str(repo.resolve()) in e.value.message
        assert list(s.executor.list(ion)) == []
    finally:
        stop(servers, s)


def test_an_unreadable_repository_fails_the_launch_naming_the_code_path(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    s = code_stack
    ion = register(s, tmp_path, "unreadable")
    (repo / ".git" / "index").write_bytes(b"not an index")
    with pytest.raises(errors.FailedPrecondition) as e:
        s.executor.launch(ion)
    assert e.value.field == "RELIVE_CODE_PATH" and str(repo.resolve()) in e.value.message
    assert list(s.executor.list(ion)) == []


def test_a_snapshot_missing_on_relaunch_is_named(
    code_stack: InProcessStack, tmp_path: Path
) -> None:
    """A run known only by its events (say, imported without its code) whose snapshot the
    registry does not hold: the relaunch is refused before any run is made."""
    s = code_stack
    ion = register(s, tmp_path, "lost")
    original = finished(s, s.executor.launch(ion))
    spec = pb.LaunchSpec()
    spec.CopyFrom(original.spec)
    missing = "codeSnapshots/" + "0" * 64
    spec.code_refs[0].snapshot = missing
    spec.code_refs[0].tree_sha256 = "0" * 64
    elsewhere = f"{ion}/runs/run-99-elsewhere"
    launched = EventFactory(ion, elsewhere).lifecycle(
        "run.launched",
        "PENDING",
        {"spec": json_format.MessageToDict(spec, preserving_proto_field_name=True)},
    )
    with EventSink(s.config.recorder_endpoint or "", ion) as sink:  # stamps and sends it
        sink.emit(launched)
    with pytest.raises(errors.FailedPrecondition) as e:
        s.executor.relaunch(run=elsewhere)
    assert e.value.field == "code" and missing in e.value.message
    assert e.value.reason == "CODE_SNAPSHOT_MISSING"
    assert [r.name for r in s.executor.list(ion)] == [original.name]


def test_an_unknown_code_source_is_invalid(code_stack: InProcessStack, tmp_path: Path) -> None:
    s = code_stack
    ion = register(s, tmp_path, "which-code")
    original = finished(s, s.executor.launch(ion))
    with grpc.insecure_channel(f"127.0.0.1:{s.executor_server.port}") as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.RelaunchRun(
                pb.RelaunchRunRequest(run=original.name, code=pb.CodeSource.ValueType(7)),
                timeout=30,
            )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(e.value).field == "code"
    with pytest.raises(errors.InvalidArgument) as bad:
        s.executor.relaunch(run=original.name, code="yesterday")
    assert bad.value.field == "code"


def test_components_never_see_the_live_code_path(
    code_stack: InProcessStack, repo: Path, tmp_path: Path
) -> None:
    """The workers' import path holds no code root: a component imports from its snapshot
    (Ray's working directory), so editing the live tree mid-run changes nothing."""
    s = code_stack
    (repo / "mlcode" / "where.py").write_text(
        textwrap.dedent("""\
        import os, sys

        def where(ctx, code_root=""):
            ctx.log_stat("live_root_on_path", float(any(
                os.path.realpath(p) == code_root for p in sys.path if p)))
            ctx.log_stat("from_working_dir", float(__file__.startswith(os.getcwd() + os.sep)))
        """)
    )
    text = textwrap.dedent(f"""\
        name: NAME
        nodes:
          probe:
            pipeline:
              components:
                where: {{call: mlcode.where:where, params: {{code_root: "{repo.resolve()}"}}}}
        """)
    ion = register(s, tmp_path, "probe", text)
    run = finished(s, s.executor.launch(ion))
    assert stat(s, ion, run.name, "live_root_on_path") == [0.0]
    assert stat(s, ion, run.name, "from_working_dir") == [1.0]
    assert os.path.realpath(str(repo)) not in sys.path  # nor in this process


def export_a_run(s: InProcessStack, tmp_path: Path) -> tuple[str, pb.Run, Path]:
    window = since()
    ion = register(s, tmp_path, "travels")
    original = finished(s, s.executor.launch(ion, seed=21))
    export = tmp_path / "capture.tar.gz"
    s.recorder.export_capture(s.capture(ion, window), export, include_models=True)
    return ion, original, export


def relaunch_the_import(
    other: InProcessStack, ion: str, original: pb.Run, export: Path, code: Path | None = None
) -> None:
    """Imports the capture, removes ``code``, relaunches from the capture and verifies."""
    imported = other.recorder.import_capture(export).capture
    if code is not None:
        shutil.rmtree(code)
    again = finished(other, other.executor.relaunch(capture=imported.name))
    assert again.relaunch_of == original.name
    assert list(again.spec.code_refs) == list(original.spec.code_refs)
    assert stat(other, ion, again.name, "version") == [1]
    verdict = other.executor.verify(original.name, again.name)
    assert verdict.status == MATCH, [(n.node, n.reason) for n in verdict.nodes]


def test_an_imported_capture_relaunches_in_a_deployment_without_the_repository(
    code_stack: InProcessStack, repo: Path, tmp_path: Path, config: Config
) -> None:
    ion, original, export = export_a_run(code_stack, tmp_path)
    shutil.rmtree(repo)  # no copy of the repository anywhere
    empty = tmp_path / "no-code"
    empty.mkdir()
    far = config.with_(db_prefix=f"t{uuid.uuid4().hex[:12]}", data_dir=tmp_path / "far")
    servers, other = start(far, empty)
    try:
        relaunch_the_import(other, ion, original, export)
    finally:
        stop(servers, other)


def test_an_imported_capture_relaunches_from_its_snapshots_once_the_code_is_gone(
    code_stack: InProcessStack, repo: Path, tmp_path: Path, config: Config
) -> None:
    """The other deployment's registry checks the restored revision against a copy of the
    code; the copy is gone before the relaunch, which runs the imported snapshot."""
    ion, original, export = export_a_run(code_stack, tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)
    shutil.rmtree(repo)
    far = config.with_(db_prefix=f"t{uuid.uuid4().hex[:12]}", data_dir=tmp_path / "far")
    servers, other = start(far, copy)
    try:
        relaunch_the_import(other, ion, original, export, code=copy)
    finally:
        stop(servers, other)
