"""Executor fixtures: one Ray per test session, and a full stack (registry, recorder,
executor) per test on port 0 against the session's embedded store."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from relive.client.executor import ExecutorClient
from relive.client.recorder import RecorderClient
from relive.client.registry import RegistryClient
from relive.core.config import Config
from relive.core.serving import Server
from relive.executor.v1 import executor_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """Ray starts once per session (about 5 s); every executor in the session attaches to it."""
    from relive.executor.server import init_ray

    ray = init_ray(Config(code_path=(str(REPO_ROOT),)))
    yield ray
    ray.shutdown()


@dataclass
class InProcessStack:
    """The three servers of one test, in this process on port 0, and clients of them."""

    config: Config
    registry: RegistryClient
    recorder: RecorderClient
    executor: ExecutorClient
    executor_server: Server
    channels: list[grpc.Channel]

    def register(self, path: Path | str) -> str:
        reg = self.registry.register(path)
        return reg.ion.name

    def run_to_end(self, ion: str, timeout: float = 240.0, **kwargs: object) -> pb.Run:
        run = self.executor.launch(ion, **kwargs)  # type: ignore[arg-type]
        return self.executor.wait(run.name, timeout=timeout)

    def capture(self, ion: str, start: dt.datetime, end: dt.datetime | None = None) -> str:
        end = end or dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        cap = self.recorder.create_capture(ion, f"cap-{uuid.uuid4().hex[:8]}", start, end)
        return cap.name


def start_stack(config: Config) -> tuple[list[Server], InProcessStack]:
    from relive.executor.server import create_server as executor_server
    from relive.recorder.server import create_server as recorder_server
    from relive.registry.server import create_server as registry_server

    reg, reg_port = registry_server(config)
    reg.start()
    cfg = config.with_(registry_endpoint=f"127.0.0.1:{reg_port}")
    rec, rec_port = recorder_server(cfg)
    rec.start()
    cfg = cfg.with_(recorder_endpoint=f"127.0.0.1:{rec_port}")
    exe, exe_port = executor_server(cfg)
    exe.start()
    channels = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in (reg_port, exe_port)]
    stack = InProcessStack(
        cfg,
        RegistryClient(channels[0]),
        RecorderClient(f"127.0.0.1:{rec_port}"),
        ExecutorClient(channels[1], user="tester"),
        exe,
        channels,
    )
    return [exe, rec, reg], stack


@pytest.fixture
def stack(config: Config, ray_session: object) -> Iterator[InProcessStack]:
    servers, s = start_stack(config)
    yield s
    for server in servers:
        server.stop(0.5)
    for ch in s.channels:
        ch.close()
    s.recorder.close()


def since(seconds: float = 2.0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
