"""A real two-node Ray cluster: a component placed on the second node by a custom resource
gets its code through runtime_env, from a code directory no worker ever saw, and a relaunch
after that directory is gone runs the recorded snapshot there and matches."""

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
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from relive.client.executor import ExecutorClient
from relive.client.recorder import RecorderClient
from relive.client.registry import RegistryClient
from relive.core.config import Config
from relive.core.embedded import free_port
from relive.executor.v1 import executor_pb2 as pb

BIN = Path(sys.executable).parent
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

STEPS = """\
import os

import ray


def load(ctx):
    return [[1.0, 2.0], [3.0, 4.0]]


def fit(ctx, node2_temp_dir=""):
    here = os.path.realpath(__file__)
    ctx.log_stat("node2", ray.get_runtime_context().get_assigned_resources().get("node2", 0))
    # Its code came as node 2's runtime_env package, not from any directory on disk.
    ctx.log_stat("from_package", float(
        here.startswith(os.path.realpath(node2_temp_dir) + os.sep)
        and "working_dir_files" in here
    ))
    return {"weights": [sum(row) for row in ctx.inputs["load"]]}
"""
ION = """\
name: placed
nodes:
  train:
    pipeline:
      components:
        load: {call: shipped.steps:load}
        fit:
          call: shipped.steps:fit
          after: [load]
          params: {node2_temp_dir: "TEMP"}
          resources: {custom: {node2: 1}}
      outputs: {model: fit}
"""


@dataclass
class Cluster:
    address: str
    node2_temp_dir: str


def _ray_start(log: Path, temp_dir: str, *args: str) -> subprocess.Popen[bytes]:
    """``ray start --block``: its process group is the node, stopped by the test alone."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={free_port()}",
                *args,
            ],
            env=RAY_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_nodes(
    address: str, count: int, nodes: list[subprocess.Popen[bytes]], log: Path
) -> None:
    deadline = time.monotonic() + 180
    while True:
        probe = subprocess.run(
            [str(BIN / "ray"), "status", f"--address={address}"],
            env=RAY_ENV,
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.count("node_") >= count:
            return
        if any(n.poll() is not None for n in nodes) or time.monotonic() > deadline:
            pytest.fail(f"the Ray cluster did not come up: {log.read_text()[-3000:]}")
        time.sleep(1)


def _stop(node: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Cluster]:
    """A head and a second node with the custom resource ``node2``, each with its own temp
    dir (Ray's socket paths must be short, so under /tmp)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_dir = tempfile.mkdtemp(prefix="rl-h-", dir="/tmp")
    node2_dir = tempfile.mkdtemp(prefix="rl-2-", dir="/tmp")
    nodes = [
        _ray_start(
            tmp_path / "head.log",
            head_dir,
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
        )
    ]
    try:
        _wait_for_nodes(address, 1, nodes, tmp_path / "head.log")
        nodes.append(
            _ray_start(
                tmp_path / "node2.log",
                node2_dir,
                f"--address={address}",
                '--resources={"node2": 1}',
            )
        )
        _wait_for_nodes(address, 2, nodes, tmp_path / "node2.log")
        yield Cluster(address, node2_dir)
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(node2_dir, ignore_errors=True)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """Component code in a plain directory that is on no sys.path of any process."""
    root = tmp_path / "ship" / "code"
    (root / "shipped").mkdir(parents=True)
    (root / "shipped" / "__init__.py").write_text("")
    (root / "shipped" / "steps.py").write_text(STEPS)
    return root


@pytest.fixture
def config(config: Config, code_dir: Path) -> Config:
    """The registry (started by the fixtures) checks calls against the code directory."""
    return config.with_(code_path=(str(code_dir),))


def test_a_component_on_the_second_node_runs_its_snapshot_and_relaunches_after_the_code_is_gone(
    config: Config,
    registry_server,
    recorder_server,
    two_nodes: Cluster,
    code_dir: Path,
    tmp_path: Path,
) -> None:
    port_file = tmp_path / "executor.port"
    neutral = tmp_path / "cwd"  # the executor's working directory holds no code
    neutral.mkdir()
    env = {
        **RAY_ENV,
        "RELIVE_RAY_ADDRESS": two_nodes.address,
        "RELIVE_MONGODB_URI": config.mongodb_uri or "",
        "RELIVE_DB_PREFIX": config.db_prefix,
        "RELIVE_DATA_DIR": str(tmp_path / "executor-data"),
        "RELIVE_REGISTRY_ENDPOINT": f"127.0.0.1:{registry_server.port}",
        "RELIVE_RECORDER_ENDPOINT": f"127.0.0.1:{recorder_server.port}",
        "RELIVE_CODE_PATH": str(code_dir),
    }
    env.pop("PYTHONPATH", None)
    log = tmp_path / "executor.log"
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
        cwd=neutral,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    ion_file = tmp_path / "placed.yaml"
    ion_file.write_text(ION.replace("TEMP", two_nodes.node2_temp_dir))
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert executor.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        port = json.loads(port_file.read_text())["port"]
        with (
            grpc.insecure_channel(f"127.0.0.1:{registry_server.port}") as rc,
            grpc.insecure_channel(f"127.0.0.1:{port}") as ec,
            RecorderClient(f"127.0.0.1:{recorder_server.port}") as recorder,
        ):
            ion = RegistryClient(rc).register(ion_file).ion.name
            client = ExecutorClient(ec)

            def stats(run: str) -> dict[str, float]:
                events = recorder.list_events(ion, runs=[run], types=["stat"])
                return {e.stat.name: e.stat.value for e in events if e.component == "fit"}

            run = client.wait(client.launch(ion, seed=5).name, timeout=600)
            assert run.state == pb.RUN_STATE_SUCCEEDED, run.error_message + log.read_text()[-3000:]
            assert (
                run.spec.definition.nodes["train"]
                .pipeline.components["fit"]
                .resources.custom["node2"]
                == 1
            )
            assert stats(run.name)["node2"] == 1 and stats(run.name)["from_package"] == 1

            shutil.rmtree(code_dir.parent)  # the code is gone from this machine
            again = client.wait(client.relaunch(run=run.name).name, timeout=600)
            assert again.state == pb.RUN_STATE_SUCCEEDED, again.error_message
            assert stats(again.name)["node2"] == 1 and stats(again.name)["from_package"] == 1
            assert client.verify(run.name, again.name).status == pb.VERIFICATION_STATUS_MATCH
        assert "Started a local Ray instance" not in log.read_text()
    finally:
        executor.send_signal(signal.SIGTERM)
        try:
            executor.wait(30)
        except subprocess.TimeoutExpired:
            executor.kill()
