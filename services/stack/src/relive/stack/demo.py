"""``relive demo``: the main job of DESIGN.md, end to end, on one machine with no network.

1. start the stack; 2. register an ION with scheduled retraining, an approval gate and
inference with a canary; 3. launch it (the approval comes from a rule on the recorded
accuracy); 4. inject a fault into one inference step; 5. capture the window around the fault,
after the fact; 6. replay the capture for a few seconds; 7. export it; 8. relaunch the whole
ION from the capture and verify every node; 9. print a short report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from relive.cli.output import add_json_flag, emit_json

FAULT_BATCH = 5
REPLAY_SECONDS = 3.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job end to end: launch, fault, "
        "capture, replay, export, relaunch, verify",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the demo's stack keeps its data (default: a new directory "
        "under RELIVE_DATA_DIR or .relive/)",
    )
    p.add_argument(
        "--ion",
        type=Path,
        default=None,
        help="the ION file (default: the scheduled-retraining example)",
    )
    add_json_flag(p)
    p.set_defaults(func=_demo)


def repo_root() -> Path:
    """Where ``examples/`` lives: the current directory, or the checkout this file is in."""
    for candidate in (Path.cwd(), *Path(__file__).resolve().parents):
        if (candidate / "examples" / "retrain" / "ion.yaml").exists():
            return candidate
    raise FileNotFoundError(
        "cannot find examples/retrain/ion.yaml: run relive demo from the relive checkout"
    )


class _Say:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, step: int, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {step}. {text}", flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"           {text}", flush=True)


def _demo(args: argparse.Namespace) -> int:
    import grpc

    from relive.cli.run import verification_dict
    from relive.client.channel import default_data_dir
    from relive.client.executor import ExecutorClient, state_name
    from relive.client.recorder import RecorderClient
    from relive.client.registry import RegistryClient
    from relive.core.config import Config
    from relive.executor.v1 import executor_pb2 as pb
    from relive.stack.runner import Stack

    say = _Say(args.json)
    root = repo_root()
    data_dir = (
        args.data_dir or default_data_dir() / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    ).resolve()
    ion_file = args.ion or root / "examples" / "retrain" / "ion.yaml"
    config = Config.from_env(data_dir=data_dir, code_path=(str(root),))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

    say(
        1,
        f"starting the stack (embedded store, registry, recorder, executor, local Ray) in "
        f"{data_dir}",
    )
    with Stack(config) as stack:
        endpoints = stack.endpoints()
        for name in ("registry", "recorder", "executor"):
            say.note(f"{name:<9} {endpoints[name]}")
        reg_channel = grpc.insecure_channel(endpoints["registry"])
        exe_channel = grpc.insecure_channel(endpoints["executor"])
        recorder = RecorderClient(endpoints["recorder"])
        try:
            registry = RegistryClient(reg_channel)
            executor = ExecutorClient(exe_channel)

            done = registry.register(ion_file)
            ion = done.ion.name
            say(2, f"registered {ion} revision {done.revision.revision_id} from {ion_file}")

            start = dt.datetime.now(dt.UTC)
            run = executor.launch(
                ion, overrides={"infer.score.fail_batch": str(FAULT_BATCH)}, seed=20181105
            )
            say(
                3,
                f"launched {run.name} (seed {run.spec.seed}); approval by the rule on "
                "stats.accuracy",
            )
            say(
                4,
                f"injecting a fault into inference batch {FAULT_BATCH} "
                f"(--set infer.score.fail_batch={FAULT_BATCH})",
            )
            original = executor.wait(run.name, timeout=900)
            say.note(
                f"{original.name}: {state_name(original.state)} {original.error_message}".rstrip()
            )
            if original.state != pb.RUN_STATE_SUCCEEDED:
                raise SystemExit(f"relive demo: the run failed: {original.error_message}")
            approvals = list(
                recorder.list_events(ion, runs=[original.name], types=["human.approval"])
            )
            for e in approvals[:1]:
                say.note(
                    f"approval: {e.human_action.action} by {e.human_action.user} "
                    f"({e.human_action.comment})"
                )
            faults = list(
                recorder.list_events(ion, runs=[original.name], types=["component.failed"])
            )
            if not faults:
                raise SystemExit("relive demo: the injected fault was not recorded")
            fault = faults[0]
            fault_time = dt.datetime.fromtimestamp(fault.hlc.physical_ms / 1000, dt.UTC)
            say.note(
                f"fault recorded: {fault.name} at {fault.node}.{fault.component}: "
                f"{fault.error.message}"
            )
            swaps = list(recorder.list_events(ion, runs=[original.name], types=["model.swapped"]))
            for e in swaps:
                say.note(f"swap: {e.model.model_version} scores from batch {e.model.batch}")

            end = max(
                fault_time + dt.timedelta(seconds=30),
                original.end_time.ToDatetime(dt.UTC) + dt.timedelta(seconds=1),
            )
            capture_id = f"fault-{dt.datetime.now():%H%M%S}"
            capture = recorder.create_capture(
                ion,
                capture_id,
                start - dt.timedelta(seconds=1),
                end,
                description=f"injected fault at batch {FAULT_BATCH} of {original.name}",
            )
            say(
                5,
                f"captured {capture.name} after the fact: "
                f"{capture.start_time.ToJsonString()} .. {capture.end_time.ToJsonString()}",
            )

            replayed = 0
            deadline = time.monotonic() + REPLAY_SECONDS
            for message in recorder.replay_capture(capture.name, speed=10.0):
                if message.HasField("event"):
                    replayed += 1
                if time.monotonic() > deadline:
                    break
            say(6, f"replayed the capture for {REPLAY_SECONDS:g} s at 10x: {replayed} events")

            export_path = data_dir / f"{capture_id}.tar.gz"
            recorder.export_capture(capture.name, export_path, include_models=True)
            say(
                7,
                f"exported the capture to {export_path} ({export_path.stat().st_size // 1024} KiB)",
            )

            relaunch = executor.relaunch(capture=capture.name)
            say(8, f"relaunching the whole ION from the capture: {relaunch.name}")
            relaunch = executor.wait(relaunch.name, timeout=900)
            if relaunch.state != pb.RUN_STATE_SUCCEEDED:
                raise SystemExit(f"relive demo: the relaunch failed: {relaunch.error_message}")
            verification = executor.verify(original.name, relaunch.name)
            result = verification_dict(verification)
            for node, status in result["nodes"].items():
                say.note(f"{node:<14} {status}")
        finally:
            recorder.close()
            reg_channel.close()
            exe_channel.close()

    report = {
        **result,
        "capture": capture.name,
        "export_path": str(export_path),
        "original_run": original.name,
        "relaunch_run": relaunch.name,
        "data_dir": str(data_dir),
        "logs": str(data_dir / "logs"),
        "fault_event": fault.name,
        "replayed_events": replayed,
    }
    if args.json:
        emit_json(report)
    else:
        say(9, "report")
        print(
            f"  verification   {result['status']} "
            f"({sum(1 for s in result['nodes'].values() if s == 'MATCH')}/"
            f"{len(result['nodes'])} nodes match)"
        )
        print(f"  original run   {original.name}")
        print(f"  relaunch run   {relaunch.name}")
        print(f"  capture        {capture.name}")
        print(f"  export         {export_path}")
        print(f"  data dir       {data_dir}")
        print(f"  service logs   {data_dir / 'logs'}")
    return 0 if result["status"] == "MATCH" else 1
