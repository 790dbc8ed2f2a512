"""`relive up`: the embedded store (unless RELIVE_MONGODB_URI is set) and the three services.

The services run as child processes on loopback ports chosen up front, so each one can be
told where the others are. The endpoints file in the data dir tells clients where they went.
With RELIVE_AUTH on, every service gets the tokens file and the service token it calls the
others with (RELIVE_SERVICE_TOKEN, a ``role: service`` entry of that file); both are checked
before anything starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relive.client.channel import ENDPOINTS_FILE
from relive.core import identity
from relive.core.config import Config
from relive.core.embedded import EmbeddedStore, free_port, pid_alive
from relive.errors import FailedPrecondition

log = logging.getLogger(__name__)

SERVICES = ("registry", "recorder", "executor")
PID_FILE = "stack.pid"


def check_health(target: str, timeout: float = 1.0, tls_ca: Path | None = None) -> str:
    """The service's overall health status name, or UNREACHABLE."""
    try:
        with (
            grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
            if tls_ca
            else grpc.insecure_channel(target)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.RpcError:
        return "UNREACHABLE"


def check_auth(config: Config) -> None:
    """Fails early, with the variable to fix named, when auth or TLS is on but cannot work:
    the services would start and then refuse each other."""
    if config.tls_client_ca is not None:
        raise FailedPrecondition(
            "relive up cannot run with RELIVE_TLS_CLIENT_CA (mutual TLS): its services call "
            "each other without client certificates; require them at a proxy in front instead",
            field="RELIVE_TLS_CLIENT_CA",
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        raise FailedPrecondition(
            "TLS needs both RELIVE_TLS_CERT and RELIVE_TLS_KEY",
            field="RELIVE_TLS_KEY" if config.tls_cert else "RELIVE_TLS_CERT",
        )
    if not config.auth:
        return
    if config.auth_tokens_file is None:
        raise FailedPrecondition(
            "RELIVE_AUTH is on but RELIVE_AUTH_TOKENS_FILE is not set",
            field="RELIVE_AUTH_TOKENS_FILE",
        )
    tokens = identity.load_tokens(config.auth_tokens_file)
    if not config.service_token:
        raise FailedPrecondition(
            "RELIVE_AUTH is on but RELIVE_SERVICE_TOKEN is not set: the services need a token "
            "with role: service from the tokens file to call each other",
            field="RELIVE_SERVICE_TOKEN",
        )
    who = tokens.get(config.service_token)
    if who is None or not who.is_service:
        raise FailedPrecondition(
            f"RELIVE_SERVICE_TOKEN must be a token of {config.auth_tokens_file} with role: service",
            field="RELIVE_SERVICE_TOKEN",
        )


class Stack:
    """Starts, supervises and stops the store and services of one data dir."""

    def __init__(self, config: Config, services: tuple[str, ...] = SERVICES) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.services = services
        self.store: EmbeddedStore | None = None
        self.mongodb_uri = config.mongodb_uri or ""
        self.ports: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def endpoints_file(self) -> Path:
        return self.data_dir / ENDPOINTS_FILE

    def endpoints(self) -> dict[str, str]:
        out = {name: f"{self.config.host}:{port}" for name, port in self.ports.items()}
        out["mongodb"] = self.mongodb_uri
        return out

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RELIVE_MONGODB_URI"] = self.mongodb_uri
        env["RELIVE_DATA_DIR"] = str(self.data_dir)
        env["RELIVE_DB_PREFIX"] = self.config.db_prefix
        if self.config.ray_address:
            env["RELIVE_RAY_ADDRESS"] = self.config.ray_address
        # The config wins over the environment it may have been read from.
        env["RELIVE_AUTH"] = "on" if self.config.auth else "off"
        if self.config.auth and self.config.auth_tokens_file is not None:
            env["RELIVE_AUTH_TOKENS_FILE"] = str(self.config.auth_tokens_file.resolve())
        if self.config.auth and self.config.service_token:
            env["RELIVE_SERVICE_TOKEN"] = self.config.service_token
        for key, path in (
            ("RELIVE_TLS_CERT", self.config.tls_cert),
            ("RELIVE_TLS_KEY", self.config.tls_key),
            ("RELIVE_TLS_CA", self.config.trusted_ca),
        ):
            if path is None:
                env.pop(key, None)
            else:
                env[key] = str(path.resolve())
        for name, port in self.ports.items():
            env[f"RELIVE_{name.upper()}_ENDPOINT"] = f"{self.config.host}:{port}"
        # Component code comes from where `relive up` was started, through the code snapshots
        # each launch takes (docs/code-provenance.md); it is never on an import path, so a
        # Ray worker cannot fall back to live code.
        env["RELIVE_CODE_PATH"] = os.pathsep.join(self.config.code_path)
        return env

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"relive.{name}.server",
                    "--port",
                    str(self.ports[name]),
                ],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=os.getcwd(),
            )

    def start(self, timeout: float = 120.0) -> dict[str, str]:
        check_auth(self.config)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.mongodb_uri:
            self.store = EmbeddedStore(self.data_dir, host=self.config.host)
            self.mongodb_uri = self.store.start()
        try:
            for name in self.services:
                self.ports[name] = free_port(self.config.host)
            for name in self.services:
                self.processes[name] = self._spawn(name)
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints(), indent=2) + "\n")
        tmp.replace(self.endpoints_file)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self.endpoints()

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.services)
        while pending:
            for name in sorted(pending):
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the {name} service exited with code {process.returncode}; "
                        f"see {self.data_dir / 'logs' / (name + '.log')}"
                    )
                target = f"{self.config.host}:{self.ports[name]}"
                if check_health(target, tls_ca=self.config.trusted_ca) == "SERVING":
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(
                    f"not healthy after {timeout:.0f}s: {', '.join(sorted(pending))}"
                )
            if pending:
                time.sleep(0.1)

    def _supervise(self) -> None:
        """Restarts a service that died, on the same port, so clients keep their endpoints."""
        restarts = dict.fromkeys(self.services, 0)
        while not self._stopping.wait(1.0):
            for name, process in list(self.processes.items()):
                if process.poll() is None or self._stopping.is_set():
                    continue
                if restarts[name] >= 5:
                    continue
                restarts[name] += 1
                log.warning(
                    "%s exited with code %s; restarting (%d/5)",
                    name,
                    process.returncode,
                    restarts[name],
                )
                self.processes[name] = self._spawn(name)

    def stop(self) -> None:
        self._stopping.set()
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(self.config.grace_s + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.store is not None:
            self.store.stop()
            self.store = None
        with contextlib.suppress(FileNotFoundError):
            self.endpoints_file.unlink()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_pid(data_dir: Path) -> int | None:
    """The pid of a running `relive up` for this data dir; a stale pid file is removed."""
    path = data_dir / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid):
        return pid
    path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / ENDPOINTS_FILE).unlink()
    return None
