"""`relive run`, `relive relaunch` and `relive verify` as a user types them, and a relaunch in
another deployment from an exported and imported capture."""
# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from relive.cli.main import main
from relive.core.config import Config
from relive.executor.v1 import executor_pb2 as pb
from tests.executor_fixtures import (  # noqa: F401
    EXAMPLES,
    InProcessStack,
    ray_session,
    since,
    stack,
    start_stack,
)


def relive(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else {"text": out}


@pytest.fixture
def cli_env(stack: InProcessStack, monkeypatch: pytest.MonkeyPatch) -> InProcessStack:
    monkeypatch.setenv("RELIVE_REGISTRY_ENDPOINT", stack.config.registry_endpoint or "")
    monkeypatch.setenv("RELIVE_RECORDER_ENDPOINT", stack.config.recorder_endpoint or "")
    monkeypatch.setenv("RELIVE_EXECUTOR_ENDPOINT", f"127.0.0.1:{stack.executor_server.port}")
    return stack


def test_cli_launch_relaunch_verify_and_import_elsewhere(
    cli_env: InProcessStack, capsys: pytest.CaptureFixture[str], tmp_path: Path, config: Config
) -> None:
    stack = cli_env
    start = since()
    ion = stack.register(EXAMPLES / "offline" / "ion.yaml")
    code, run = relive(
        capsys,
        "run",
        "launch",
        "offline",
        "--set",
        "train.fit.C=0.5",
        "--seed",
        "77",
        "--wait",
        "--json",
    )
    assert code == 0 and run["state"] == "SUCCEEDED", run
    assert run["spec"]["overrides"] == {"train.fit.C": "0.5"}

    code, bad = relive(capsys, "run", "launch", "offline", "--set", "train.fit.gamma=2", "--json")
    assert code == 1
    assert bad["error"]["code"] == "INVALID_ARGUMENT"
    assert bad["error"]["field"] == "overrides[train.fit.gamma]"

    code, listed = relive(capsys, "run", "list", "offline", "--json")
    assert [r["name"] for r in listed["runs"]] == [run["name"]]
    code, shown = relive(capsys, "run", "show", run["name"])
    assert "SUCCEEDED" in shown["text"] and "train" in shown["text"]

    capture = stack.capture(ion, start)
    code, again = relive(capsys, "relaunch", capture, "--wait", "--json")
    assert code == 0 and again["state"] == "SUCCEEDED" and again["relaunch_of"] == run["name"]

    code, verdict = relive(capsys, "verify", run["name"], again["name"], "--json")
    assert code == 0
    assert verdict["status"] == "MATCH"
    assert verdict["nodes"] == {"infer": "MATCH", "train": "MATCH", "transfer": "MATCH"}

    code, text = relive(capsys, "verify", run["name"], again["name"])
    assert code == 0 and text["text"].startswith("MATCH")

    # Another deployment: import the exported capture, relaunch from it there, verify there.
    export = tmp_path / "capture.tar.gz"
    stack.recorder.export_capture(capture, export, include_models=True)
    other_config = config.with_(db_prefix=f"t{uuid.uuid4().hex[:12]}", data_dir=tmp_path / "other")
    servers, other = start_stack(other_config)
    try:
        other.register(EXAMPLES / "offline" / "ion.yaml")
        imported = other.recorder.import_capture(export).capture
        relaunch = other.executor.wait(other.executor.relaunch(capture=imported.name).name)
        assert relaunch.state == pb.RUN_STATE_SUCCEEDED, relaunch.error_message
        assert relaunch.relaunch_of == run["name"]
        v = other.executor.verify(run["name"], relaunch.name)
        assert v.status == pb.VERIFICATION_STATUS_MATCH, [(n.node, n.reason) for n in v.nodes]
    finally:
        for s in servers:
            s.stop(0.5)
        other.recorder.close()
        for ch in other.channels:
            ch.close()
