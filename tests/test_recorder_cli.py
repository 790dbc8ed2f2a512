"""The recorder's commands through ``relive.cli.main.main``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_recorder_support import create_ion, event

from relive.cli.main import main
from relive.cli.timeparse import parse_time
from relive.client.recorder import RecorderClient
from relive.core.serving import Server
from relive.errors import InvalidArgument


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    recorder_server: Server,
    registry_server: Server,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("RELIVE_ENDPOINT", raising=False)
    monkeypatch.setenv("RELIVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELIVE_REGISTRY_ENDPOINT", f"127.0.0.1:{registry_server.port}")
    monkeypatch.setenv("RELIVE_RECORDER_ENDPOINT", f"127.0.0.1:{recorder_server.port}")
    monkeypatch.setenv("RELIVE_EXECUTOR_ENDPOINT", "127.0.0.1:1")


@pytest.fixture
def recent(recorder_channel: grpc.Channel, registry_channel: grpc.Channel, cli_env: None) -> int:
    """An ION 'demo' with 30 events over the last 30 minutes; returns their start (ms)."""
    create_ion(registry_channel, "demo")
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    start = now - 30 * 60_000
    events = [event(start + i * 60_000, producer="cli", pseq=i + 1, value=i) for i in range(30)]
    events[5].type = "log"
    events[5].ClearField("stat")
    events[5].log.message = "hello"
    RecorderClient(recorder_channel).append("demo", events)
    return start


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_events_command(recent: int, capsys: pytest.CaptureFixture[str]) -> None:
    everything = run_json(capsys, "events", "demo")
    assert isinstance(everything, list) and len(everything) == 30
    windowed = run_json(capsys, "events", "demo", "--from", "-10m", "--kind", "stat")
    assert 8 <= len(windowed) <= 11
    logs = run_json(capsys, "events", "demo", "--kind", "log")
    assert [e["log"]["message"] for e in logs] == ["hello"]
    arrival = run_json(capsys, "events", "demo", "--order", "arrival", "--node", "train")
    seqs = [int(e["sequence"]) for e in arrival]
    assert seqs == sorted(seqs) and len(seqs) == 30

    assert main(["events", "demo", "--limit", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SEQ", "TIME", "KIND", "TYPE", "NODE", "RUN", "SUMMARY"]
    assert len(out) == 4 and "loss=0" in out[1]

    assert main(["events", "demo", "--follow", "--limit", "4", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["stat"]["name"] == "loss"


def test_bad_input_on_the_command_line(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "nope", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "NOT_FOUND" and error["field"] == "parent"
    assert main(["events", "nope", "--from", "yesterday-ish"]) == 1
    assert "--from" in capsys.readouterr().err


def test_capture_commands(recent: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = run_json(
        capsys,
        "capture",
        "create",
        "demo",
        "--name",
        "inc",
        "--from",
        "-20m",
        "--to",
        "-10m",
        "--description",
        "spike",
    )
    assert made["name"] == "ions/demo/captures/inc"
    listed = run_json(capsys, "capture", "list", "demo")
    assert [c["name"] for c in listed] == ["ions/demo/captures/inc"]
    shown = run_json(capsys, "capture", "show", "demo/inc")
    assert shown["description"] == "spike"
    updated = run_json(capsys, "capture", "update", "demo/inc", "--description", "the spike")
    assert updated["description"] == "the spike"
    assert main(["capture", "create", "demo", "--name", "inc", "--from", "-1h", "--to", "now"]) == 1
    assert "ALREADY_EXISTS" in capsys.readouterr().err

    out = tmp_path / "inc.tar.gz"
    exported = run_json(capsys, "capture", "export", "ions/demo/captures/inc", "-o", str(out))
    assert out.exists() and exported["events"] == 10
    imported = run_json(capsys, "capture", "import", str(out), "--name", "inc-copy")
    assert imported["events_already_present"] == 10
    assert imported["capture"]["imported_from"] == "ions/demo/captures/inc"

    capsys.readouterr()
    assert main(["capture", "replay", "demo/inc", "--speed", "0"]) == 0
    text = capsys.readouterr().out
    assert "replayed 10 events" in text
    replayed = [
        json.loads(x)
        for x in _json_lines(capsys, "capture", "replay", "demo/inc", "--speed", "0", "--json")
    ]
    assert len(replayed) == 10 and "playback_time" in replayed[0]

    run_json(capsys, "capture", "delete", "demo/inc-copy")
    assert [c["name"] for c in run_json(capsys, "capture", "list", "-")] == [
        "ions/demo/captures/inc"
    ]


def _json_lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_retention_commands(recent: int, capsys: pytest.CaptureFixture[str]) -> None:
    policy = run_json(capsys, "retention", "set", "demo", "--days", "3")
    assert policy["retention_days"] == 3
    swept = run_json(capsys, "retention", "run", "demo", "--as-of", "+3d")
    assert swept["events_deleted"] == 30
    shown = run_json(capsys, "retention", "show", "demo")
    assert "last_sweep_time" in shown
    assert main(["retention", "set", "demo", "--days", "0"]) == 1


def test_time_parsing() -> None:
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    assert parse_time("-2h", now=now) == now - dt.timedelta(hours=2)
    assert parse_time("-15m", now=now) == now - dt.timedelta(minutes=15)
    assert parse_time("now", now=now) == now
    assert parse_time("2026-11-27T10:00:00Z") == dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    assert parse_time("2026-11-27T11:00:00+01:00") == dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    assert parse_time("2026-11-27") == dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    with pytest.raises(InvalidArgument) as e:
        parse_time("soon", field="--to")
    assert e.value.field == "--to"
