"""`relive up | down | status`: run the stack of one data dir.

Registered into the SDK's ``relive`` command through the ``relive.cli`` entry points."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from relive.cli.output import add_json_flag, emit_json, table
from relive.client.channel import ENDPOINTS_FILE, default_data_dir
from relive.errors import FailedPrecondition, Unavailable


def _data_dir(args: argparse.Namespace) -> Path:
    return (Path(args.data_dir) if args.data_dir else default_data_dir()).resolve()


def register(subparsers: Any) -> None:
    up = subparsers.add_parser("up", help="start the store and the three services")
    up.add_argument("--data-dir", help="where data, logs and endpoints.json go (default .relive)")
    up.add_argument("--ray-address", help="an existing Ray cluster (default: a local Ray)")
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    add_json_flag(up)
    up.set_defaults(func=cmd_up)

    down = subparsers.add_parser("down", help="stop the stack started by `relive up`")
    down.add_argument("--data-dir")
    add_json_flag(down)
    down.set_defaults(func=cmd_down)

    status = subparsers.add_parser("status", help="where the services are, and their health")
    status.add_argument("--data-dir")
    add_json_flag(status)
    status.set_defaults(func=cmd_status)


def cmd_up(args: argparse.Namespace) -> int:
    from relive.core.config import Config
    from relive.stack.runner import PID_FILE, Stack, read_pid

    data_dir = _data_dir(args)
    data_dir.mkdir(parents=True, exist_ok=True)
    if (pid := read_pid(data_dir)) is not None:
        raise FailedPrecondition(
            f"a stack is already running for {data_dir} (pid {pid}); `relive down` stops it",
            field="--data-dir",
        )
    if args.detach:
        return _detach(args, data_dir)
    overrides: dict[str, Any] = {"data_dir": data_dir}
    if args.ray_address:
        overrides["ray_address"] = args.ray_address
    config = Config.from_env(**overrides)
    (data_dir / PID_FILE).write_text(str(os.getpid()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    stack = Stack(config)
    try:
        endpoints = stack.start()
        healthy_s = time.monotonic() - started
        if args.json:
            emit_json({**endpoints, "healthy_after_s": round(healthy_s, 2)})
        else:
            print(f"relive is up in {healthy_s:.1f}s (data dir {data_dir})")
            table(sorted(endpoints.items()), ["service", "endpoint"])
            print("Ctrl-C or `relive down` stops it.")
        sys.stdout.flush()
        stop.wait()
    finally:
        stack.stop()
        (data_dir / PID_FILE).unlink(missing_ok=True)
    return 0


def _detach(args: argparse.Namespace, data_dir: Path) -> int:
    from relive.core.config import Config
    from relive.stack.runner import check_health

    ca = Config.from_env().trusted_ca
    argv = [sys.executable, "-m", "relive.cli.main", "up", "--data-dir", str(data_dir)]
    if args.ray_address:
        argv += ["--ray-address", args.ray_address]
    (data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
    with (data_dir / "up.log").open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    endpoints_file = data_dir / ENDPOINTS_FILE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(
                f"`relive up` exited with code {process.returncode}; see {data_dir / 'up.log'}"
            )
        if endpoints_file.exists():
            endpoints = json.loads(endpoints_file.read_text())
            if all(
                check_health(endpoints[s], tls_ca=ca) == "SERVING"
                for s in ("registry", "recorder", "executor")
            ):
                if args.json:
                    emit_json({**endpoints, "pid": process.pid})
                else:
                    print(
                        f"relive is up in the background (pid {process.pid}, data dir {data_dir})"
                    )
                    table(sorted(endpoints.items()), ["service", "endpoint"])
                return 0
        time.sleep(0.2)
    raise Unavailable(f"the stack did not become healthy in 180s; see {data_dir / 'up.log'}")


def cmd_down(args: argparse.Namespace) -> int:
    from relive.core.embedded import pid_alive
    from relive.stack.runner import read_pid

    data_dir = _data_dir(args)
    pid = read_pid(data_dir)
    if pid is None:
        if args.json:
            emit_json({"stopped": False, "reason": "not running"})
        else:
            print(f"no stack is running for {data_dir}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    if args.json:
        emit_json({"stopped": True, "pid": pid})
    else:
        print(f"stopped the stack (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from relive.core.config import Config
    from relive.stack.runner import SERVICES, check_health, read_pid

    data_dir = _data_dir(args)
    pid = read_pid(data_dir)
    path = data_dir / ENDPOINTS_FILE
    if pid is None or not path.exists():
        if args.json:
            emit_json({"running": False, "data_dir": str(data_dir)})
        else:
            print(f"no stack is running for {data_dir}")
        return 1
    endpoints = json.loads(path.read_text())
    ca = Config.from_env().trusted_ca
    health = {s: check_health(endpoints[s], tls_ca=ca) for s in SERVICES if s in endpoints}
    if args.json:
        emit_json({**endpoints, "running": True, "pid": pid, "health": health})
    else:
        table(
            [(s, endpoints.get(s, ""), health.get(s, "")) for s in (*SERVICES, "mongodb")],
            ["service", "endpoint", "health"],
        )
    return 0 if all(h == "SERVING" for h in health.values()) else 1
