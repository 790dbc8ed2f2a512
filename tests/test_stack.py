"""`relive up | status | down` as a user runs them, from a shell, against a fresh data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from relive.core.embedded import EmbeddedStore, pid_alive

RELIVE = [sys.executable, "-m", "relive.cli.main"]
REPO = Path(__file__).resolve().parent.parent


def relive(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIVE_")}
    env["RELIVE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [*RELIVE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=240,
        check=check,
    )  # fmt: skip


def test_up_status_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "relive"
    started = time.monotonic()
    up = relive("up", "--detach", "--json", data_dir=data_dir)
    healthy_after = time.monotonic() - started
    endpoints = json.loads(up.stdout)
    assert {"registry", "recorder", "executor", "mongodb"} <= set(endpoints)
    try:
        on_disk = json.loads((data_dir / "endpoints.json").read_text())
        assert on_disk["registry"] == endpoints["registry"]
        assert on_disk["mongodb"].startswith("mongodb://127.0.0.1:")

        status = json.loads(relive("status", "--json", data_dir=data_dir).stdout)
        assert status["running"] is True
        assert status["health"] == {
            "registry": "SERVING",
            "recorder": "SERVING",
            "executor": "SERVING",
        }
        # A second `up` on the same data dir is refused with a clear reason.
        again = relive("up", "--detach", data_dir=data_dir, check=False)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = relive("down", "--json", data_dir=data_dir)
    assert json.loads(down.stdout)["stopped"] is True
    assert not (data_dir / "endpoints.json").exists()
    after = relive("status", "--json", data_dir=data_dir, check=False)
    assert after.returncode == 1 and json.loads(after.stdout)["running"] is False
    print(f"relive up --detach: healthy after {healthy_after:.1f}s")


def test_stale_pid_files_from_a_crash_are_not_fatal(tmp_path: Path) -> None:
    data_dir = tmp_path / "relive"
    data_dir.mkdir()
    # A crashed `relive up` left its pid file behind, naming a process that is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data_dir / "stack.pid").write_text(str(dead.pid))
    (data_dir / "endpoints.json").write_text('{"registry": "127.0.0.1:1"}')
    assert relive("status", data_dir=data_dir, check=False).returncode == 1
    assert not (data_dir / "stack.pid").exists()


def test_orphaned_store_is_replaced_and_its_data_kept(tmp_path: Path) -> None:
    first = EmbeddedStore(tmp_path)
    uri = first.start()
    import pymongo

    with pymongo.MongoClient[dict[str, object]](uri) as client:
        client.relive_registry.probe.insert_one({"kept": True})
    orphan = first.process
    assert orphan is not None
    # The parent dies without stopping its store: the pid file and a live orphan remain.
    first.process = None
    second = EmbeddedStore(tmp_path)
    try:
        uri2 = second.start()
        deadline = time.monotonic() + 10
        while pid_alive(orphan.pid) and orphan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphan.poll() is not None, "the orphaned store is still running"
        with pymongo.MongoClient[dict[str, object]](uri2) as client:
            assert client.relive_registry.probe.find_one({"kept": True}) is not None
    finally:
        second.stop()
        if orphan.poll() is None:
            orphan.kill()


def test_store_starts_when_its_old_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        (tmp_path / "mongo.pid").write_text(f"999999 {port}\n")
        store = EmbeddedStore(tmp_path)
        try:
            uri = store.start()
            assert f":{port}/" not in uri
        finally:
            store.stop()
