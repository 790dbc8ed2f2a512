"""The registry as its own process: `python -m relive.registry.server`, health, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relive.client.registry import RegistryClient
from relive.core.config import Config

REPO = Path(__file__).resolve().parent.parent
PYTHON_M = (sys.executable, "-m")


def test_runs_as_a_process_and_stops_on_sigterm(config: Config, tmp_path: Path) -> None:
    port_file = tmp_path / "registry.port"
    env = {
        **os.environ,
        "RELIVE_MONGODB_URI": str(config.mongodb_uri),
        "RELIVE_DB_PREFIX": config.db_prefix,
        "RELIVE_CODE_PATH": str(REPO),
    }
    proc = subprocess.Popen(
        [*PYTHON_M, "relive.registry.server", "--port", "0", "--port-file", str(port_file)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the registry did not write its port file"
            time.sleep(0.05)
        port = json.loads(port_file.read_text())["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(
                health_pb2.HealthCheckRequest(service="relive.registry.v1.RegistryService"),
                timeout=10,
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            # The code path comes from RELIVE_CODE_PATH, so the example's calls resolve.
            done = RegistryClient(channel).register(REPO / "examples" / "churn" / "ion.yaml")
            assert done.revision.revision_id == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
