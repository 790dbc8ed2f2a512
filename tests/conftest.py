"""Fixtures that start real servers on port 0 against a real wire-protocol store.

One embedded store (nx-27017) serves the whole session; every test gets fresh databases
through its own database prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from relive.core.config import Config
from relive.core.embedded import EmbeddedStore
from relive.core.serving import Server

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts Ray before any test starts gRPC, when some test needs Ray.

    Ray forks its helper processes and runs Python in the child; once gRPC's threads run in
    this process such a fork can abort. Starting Ray first, once per session, avoids that.
    """
    if any("ray_session" in getattr(item, "fixturenames", ()) for item in session.items):
        from relive.executor.server import init_ray

        init_ray(Config(code_path=(str(REPO_ROOT),)))


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """RELIVE_MONGODB_URI when set (a real MongoDB), else an embedded nx-27017."""
    if uri := os.environ.get("RELIVE_MONGODB_URI"):
        yield uri
        return
    store = EmbeddedStore(tmp_path_factory.mktemp("store"))
    store.start()
    yield store.uri
    store.stop()


@pytest.fixture
def config(mongodb_uri: str, tmp_path: Path) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        mongodb_uri=mongodb_uri,
        db_prefix=f"t{uuid.uuid4().hex[:12]}",
        code_path=(str(REPO_ROOT),),
        grace_s=0.5,
        max_workers=32,
    )


AUTH_TOKENS = """\
tokens:
  tok-alice: {user: alice, project: churn, role: member}
  tok-carol: {user: carol, project: churn, role: admin}
  tok-bob: {user: bob, project: fraud, role: member}
  tok-svc: {user: relive, project: relive, role: service}
"""


@pytest.fixture
def auth_config(config: Config, tmp_path: Path) -> Config:
    """RELIVE_AUTH on: alice (member) and carol (admin) in project churn, bob (member) in
    fraud, and the services' own token."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(AUTH_TOKENS)
    return config.with_(auth=True, auth_tokens_file=tokens, service_token="tok-svc")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for localhost and 127.0.0.1, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests make their certificate with openssl, which is not on PATH")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def _start(server: Server) -> Server:
    server.start()
    return server


@pytest.fixture
def registry_server(config: Config) -> Iterator[Server]:
    from relive.registry.server import create_server

    server, _port = create_server(config)
    yield _start(server)
    server.stop(0.5)


@pytest.fixture
def registry_channel(registry_server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{registry_server.port}") as channel:
        yield channel


@pytest.fixture
def recorder_server(config: Config, registry_server: Server) -> Iterator[Server]:
    from relive.recorder.server import create_server

    server, _port = create_server(
        config.with_(registry_endpoint=f"127.0.0.1:{registry_server.port}")
    )
    yield _start(server)
    server.stop(0.5)


@pytest.fixture
def recorder_channel(recorder_server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{recorder_server.port}") as channel:
        yield channel
