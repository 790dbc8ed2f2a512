"""Helpers shared by the recorder tests (no tests here)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from relive.core.config import Config
from relive.core.serving import Server
from relive.recorder.v1 import event_pb2
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

ION_YAML = """name: {ion}
retention_days: {days}
nodes:
  train:
    pipeline:
      components:
        load: {{call: examples.churn.steps:load}}
"""

T0 = 1_790_000_000_000  # a fixed instant (ms) in 2026
_ids = itertools.count(1)


def create_ion(registry: grpc.Channel, ion: str = "demo", days: int = 7) -> str:
    stub = registry_pb2_grpc.RegistryServiceStub(registry)
    stub.CreateIon(
        registry_pb2.CreateIonRequest(
            ion_id=ion, definition_yaml=ION_YAML.format(ion=ion, days=days)
        )
    )
    return ion


def event(
    ms: int,
    *,
    logical: int = 0,
    producer: str = "p1",
    pseq: int | None = None,
    type: str = "stat",
    event_id: str = "",
    node: str = "train",
    run: str = "",
    value: float = 0.0,
    trace_id: str = "",
) -> event_pb2.Event:
    e = event_pb2.Event(type=type, node=node, run=run, trace_id=trace_id)
    e.hlc.physical_ms = ms
    e.hlc.logical = logical
    if event_id:
        e.event_id = event_id
    else:
        e.producer_id = producer
        e.producer_sequence = pseq if pseq is not None else next(_ids)
    if type == "stat":
        e.stat.name = "loss"
        e.stat.value = value
    elif type == "log":
        e.log.message = "hello"
    else:
        e.custom.data.update({"n": value})
    return e


def identity(e: event_pb2.Event) -> tuple[str, int, str]:
    return (e.producer_id, e.producer_sequence, e.event_id)


def content(e: event_pb2.Event) -> bytes:
    """An event without the fields a deployment assigns (sequence, name, receive time)."""
    c = event_pb2.Event()
    c.CopyFrom(e)
    c.ClearField("sequence")
    c.ClearField("name")
    c.ClearField("receive_time")
    return c.SerializeToString(deterministic=True)


def service_env(config: Config, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RELIVE_MONGODB_URI=str(config.mongodb_uri),
        RELIVE_DB_PREFIX=config.db_prefix,
        RELIVE_CODE_PATH=os.pathsep.join(config.code_path),
        RELIVE_DATA_DIR=str(config.data_dir),
        RELIVE_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


class ServiceProcess:
    """``python -m relive.<service>.server`` as a child process, on port 0 or a given port."""

    def __init__(self, module: str, env: dict[str, str], workdir: Path) -> None:
        self.module = module
        self.env = env
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int = 0, timeout: float = 60.0) -> int:
        port_file = self.workdir / f"{self.module}.{time.monotonic_ns()}.port"
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(port), "--port-file", str(port_file)],
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.module} did not start within {timeout}s")
            time.sleep(0.05)
        self.port = int(json.loads(port_file.read_text())["port"])
        return self.port

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class OtherDeployment:
    registry: ServiceProcess
    recorder: Server
    config: Config

    @property
    def recorder_target(self) -> str:
        return f"127.0.0.1:{self.recorder.port}"

    @property
    def registry_target(self) -> str:
        return f"127.0.0.1:{self.registry.port}"


@contextmanager
def other_deployment(config: Config, workdir: Path) -> Iterator[OtherDeployment]:
    """Another deployment: a registry (a child process, since the registry binds a
    process-wide database alias) and a recorder, on databases of their own."""
    from relive.recorder.server import create_server as recorder_server

    other = config.with_(db_prefix=config.db_prefix + "b")
    registry = ServiceProcess("relive.registry.server", service_env(other), workdir)
    port = registry.start()
    recorder, _ = recorder_server(other.with_(registry_endpoint=f"127.0.0.1:{port}"))
    recorder.start()
    try:
        yield OtherDeployment(registry, recorder, other)
    finally:
        recorder.stop(0.5)
        registry.stop()
