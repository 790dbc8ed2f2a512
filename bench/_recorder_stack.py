"""A throwaway stack for the benchmarks: embedded store, registry in process, and the recorder
as a child process (so the SDK and the server do not share one interpreter lock)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import grpc

from relive.core.config import Config
from relive.core.embedded import EmbeddedStore
from relive.core.serving import Server
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
ION_YAML = """name: {ion}
nodes:
  train:
    pipeline:
      components:
        load: {{call: examples.churn.steps:load}}
"""


class RecorderStack:
    """The embedded store, a registry in process and the recorder in a child process."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="relive-bench-"))
        self.store = EmbeddedStore(self.tmp / "data")
        self.recorder: subprocess.Popen[bytes] | None = None
        self.registry: Server | None = None
        self.recorder_target = ""
        self.config: Config | None = None

    def __enter__(self) -> RecorderStack:
        from relive.registry.server import create_server

        uri = self.store.start()
        self.config = Config(
            data_dir=self.tmp / "data",
            mongodb_uri=uri,
            db_prefix=f"bench{uuid.uuid4().hex[:6]}",
            code_path=(str(REPO),),
            grace_s=0.5,
        )
        self.registry, port = create_server(self.config)
        self.registry.start()
        self.config = self.config.with_(registry_endpoint=f"127.0.0.1:{port}")
        env = dict(os.environ)
        env.update(
            RELIVE_MONGODB_URI=uri,
            RELIVE_DB_PREFIX=self.config.db_prefix,
            RELIVE_REGISTRY_ENDPOINT=f"127.0.0.1:{port}",
            RELIVE_DATA_DIR=str(self.tmp / "data"),
            RELIVE_LOG_LEVEL="WARNING",
        )
        port_file = self.tmp / "recorder.port"
        self.recorder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relive.recorder.server",
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.recorder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the recorder did not start")
            time.sleep(0.05)
        self.recorder_target = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
        return self

    def create_ion(self, ion: str) -> str:
        assert self.registry is not None
        with grpc.insecure_channel(f"127.0.0.1:{self.registry.port}") as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).CreateIon(
                registry_pb2.CreateIonRequest(ion_id=ion, definition_yaml=ION_YAML.format(ion=ion))
            )
        return ion

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.recorder is not None:
            self.recorder.terminate()
            try:
                self.recorder.wait(15)
            except subprocess.TimeoutExpired:
                self.recorder.kill()
        if self.registry is not None:
            self.registry.stop(0.5)
        self.store.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
