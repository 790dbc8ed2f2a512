"""The embedded store: nx-27017, a MongoDB wire-protocol server over SQLite, as a child process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid) or "zombie" in _status(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _status(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return ""


class EmbeddedStore:
    """Runs nx-27017 on a free loopback port with its data under ``data_dir``.

    A pid file from an earlier crash is handled: a dead pid is forgotten, and a live
    orphan serving the same data directory is stopped, since it holds the SQLite files.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.db_dir = self.data_dir / "mongo"
        self.pid_file = self.data_dir / "mongo.pid"
        self.log_file = self.data_dir / "mongo.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def _clear_stale(self) -> None:
        if not self.pid_file.exists():
            return
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            pid = 0
        if pid and pid_alive(pid) and str(self.db_dir) in _cmdline(pid):
            log.warning("stopping an orphaned store (pid %d) left by an earlier run", pid)
            terminate(pid)
        self.pid_file.unlink(missing_ok=True)

    def start(self, timeout: float = 30.0) -> str:
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        last_error = ""
        for _attempt in range(5):
            self.port = free_port(self.host)
            log_handle = self.log_file.open("ab")
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from nx_27017.nx_27017 import main; sys.exit(main())",
                    "--data-dir",
                    str(self.db_dir),
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--pid-file",
                    str(self.data_dir / "mongo.nx.pid"),
                    "--log-file",
                    str(self.log_file),
                ],
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log_handle.close()
            self.pid_file.write_text(f"{self.process.pid} {self.port}\n")
            try:
                self._wait_ready(timeout)
                return self.uri
            except RuntimeError as e:
                # Most likely the port was taken between probing and binding: try another.
                last_error = str(e)
                self.stop()
        raise RuntimeError(f"the embedded store did not start: {last_error}; see {self.log_file}")

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with code {self.process.returncode}")
            try:
                with MongoClient[dict[str, object]](
                    self.uri, serverSelectionTimeoutMS=500
                ) as client:
                    client.admin.command("ping")
                return
            except PyMongoError:
                time.sleep(0.1)
        raise RuntimeError(f"nx-27017 did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
