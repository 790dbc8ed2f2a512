"""The RELIVE_RAY_ADDRESS path: an executor process attached to a `ray start --head` cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from relive.client.executor import ExecutorClient
from relive.client.registry import RegistryClient
from relive.core.config import Config
from relive.core.embedded import free_port
from relive.executor.v1 import executor_pb2 as pb
from tests.executor_fixtures import EXAMPLES, REPO_ROOT

BIN = Path(sys.executable).parent


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A head node of our own, stopped by its process group (never a machine-wide `ray stop`)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # Ray's socket paths must be short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    log = (tmp_path / "ray.log").open("wb")
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run(
                [str(BIN / "ray"), "status", f"--address={address}"],
                env=env,
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                break
            if head.poll() is not None or time.monotonic() > deadline:
                tail = (tmp_path / "ray.log").read_text()[-2000:]
                pytest.fail(f"ray start --head did not come up: {tail}")
            time.sleep(1)
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_executor_runs_on_an_existing_cluster(
    config: Config, registry_server, recorder_server, ray_cluster: str, tmp_path: Path
) -> None:
    port_file = tmp_path / "executor.port"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RELIVE_RAY_ADDRESS": ray_cluster,
        "RELIVE_MONGODB_URI": config.mongodb_uri or "",
        "RELIVE_DB_PREFIX": config.db_prefix,
        "RELIVE_REGISTRY_ENDPOINT": f"127.0.0.1:{registry_server.port}",
        "RELIVE_RECORDER_ENDPOINT": f"127.0.0.1:{recorder_server.port}",
        "RELIVE_CODE_PATH": str(REPO_ROOT),
    }
    executor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relive.executor.server",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        env=env,
        stdout=(tmp_path / "executor.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert executor.poll() is None, (tmp_path / "executor.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        port = json.loads(port_file.read_text())["port"]
        with (
            grpc.insecure_channel(f"127.0.0.1:{registry_server.port}") as rc,
            grpc.insecure_channel(f"127.0.0.1:{port}") as ec,
        ):
            ion = RegistryClient(rc).register(EXAMPLES / "offline" / "ion.yaml").ion.name
            client = ExecutorClient(ec)
            run = client.wait(client.launch(ion, seed=11).name, timeout=300)
            assert run.state == pb.RUN_STATE_SUCCEEDED, run.error_message
            again = client.wait(client.relaunch(run=run.name).name, timeout=300)
            assert client.verify(run.name, again.name).status == pb.VERIFICATION_STATUS_MATCH
        log = (tmp_path / "executor.log").read_text()
        assert "Started a local Ray instance" not in log
    finally:
        executor.send_signal(signal.SIGTERM)
        try:
            executor.wait(30)
        except subprocess.TimeoutExpired:
            executor.kill()
