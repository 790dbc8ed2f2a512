"""``relive run launch|list|show|watch|approve|cancel``, ``relive relaunch``, ``relive verify``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from relive.cli.output import Progress, add_json_flag, emit_json, table, to_dict
from relive.client.channel import connect_channel, load_endpoints
from relive.client.executor import ExecutorClient, state_name, status_name
from relive.errors import InvalidArgument
from relive.executor.v1 import executor_pb2 as pb


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="launch, list, show, watch and approve runs")
    commands = parser.add_subparsers(dest="run_command", metavar="COMMAND", required=True)

    p = commands.add_parser("launch", help="launch a run of an ION")
    p.add_argument("ion", metavar="ION")
    p.add_argument("--revision", type=int, default=0, help="revision number (default: newest)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter: NODE.COMPONENT.PARAM=VALUE (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0, help="root seed (default: a random one)")
    p.add_argument("--wait", action="store_true", help="wait until the run ends")
    add_json_flag(p)
    p.set_defaults(func=_launch)

    p = commands.add_parser("list", help="list the runs of an ION, newest first")
    p.add_argument("ion", metavar="ION")
    p.add_argument("--limit", type=int, default=50)
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = commands.add_parser("show", help="show a run and its nodes")
    p.add_argument("run", metavar="RUN")
    add_json_flag(p)
    p.set_defaults(func=_show)

    p = commands.add_parser("watch", help="follow a run until it ends")
    p.add_argument("run", metavar="RUN")
    add_json_flag(p)
    p.set_defaults(func=_watch)

    p = commands.add_parser("approve", help="decide at an approval gate that is waiting")
    p.add_argument("run", metavar="RUN")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--reject", action="store_true", help="reject instead of approving")
    p.add_argument("--comment", default="", metavar="TEXT")
    add_json_flag(p)
    p.set_defaults(func=_approve)

    p = commands.add_parser("cancel", help="cancel a run and stop its Ray tasks")
    p.add_argument("run", metavar="RUN")
    add_json_flag(p)
    p.set_defaults(func=_cancel)

    p = subparsers.add_parser("relaunch", help="relaunch a recorded run or a capture")
    p.add_argument(
        "source", metavar="RUN|CAPTURE", help="ions/ION/runs/RUN or ions/ION/captures/CAPTURE"
    )
    p.add_argument(
        "--pipeline",
        dest="pipelines",
        action="append",
        default=[],
        metavar="NODE",
        help="re-execute only this pipeline (repeatable); the others reuse their recorded models",
    )
    p.add_argument(
        "--code",
        choices=("recorded", "current"),
        default="recorded",
        help="recorded: the code snapshots the original ran (default); current: the code on "
        "the executor's code path now, snapshotted and recorded",
    )
    p.add_argument(
        "--allow-drift",
        action="store_true",
        help="run even if a dataset's hash changed",
    )
    p.add_argument("--wait", action="store_true", help="wait until the relaunch ends")
    add_json_flag(p)
    p.set_defaults(func=_relaunch)

    p = subparsers.add_parser("verify", help="compare a relaunch with its original, node by node")
    p.add_argument("original", metavar="ORIGINAL")
    p.add_argument("relaunch", metavar="RELAUNCH")
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="relative tolerance on stats (default 1e-9)"
    )
    add_json_flag(p)
    p.set_defaults(func=_verify)


@contextmanager
def client() -> Iterator[ExecutorClient]:
    endpoints = load_endpoints()
    channel = connect_channel(endpoints.executor)
    try:
        yield ExecutorClient(channel)
    finally:
        channel.close()


def run_name(text: str) -> str:
    """``ions/ION/runs/RUN``, or the shorthand ``ION/RUN``."""
    if text.startswith("ions/"):
        return text
    ion, _, run = text.partition("/")
    if not run:
        raise InvalidArgument(
            f"{text!r} is not a run: use ions/ION/runs/RUN or ION/RUN", field="run"
        )
    return f"ions/{ion}/runs/{run}"


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--set {item!r}: use KEY=VALUE", field="--set")
        out[key.strip()] = value
    return out


def _time(ts: Any) -> str:
    return ts.ToDatetime().isoformat(timespec="seconds") + "Z" if ts.seconds else ""


def run_dict(run: pb.Run) -> dict[str, Any]:
    """A run as JSON, without the bulky environment package list."""
    d = to_dict(run)
    d.get("spec", {}).get("environment", {}).pop("packages", None)
    d.get("spec", {}).pop("definition", None)
    d["state"] = state_name(run.state)
    return d


def _print_run(run: pb.Run) -> None:
    print(f"run       {run.name}")
    print(
        f"state     {state_name(run.state)}"
        + (f": {run.error_message}" if run.error_message else "")
    )
    print(f"revision  {run.spec.revision}  seed {run.spec.seed}  launch #{run.spec.launch_number}")
    if run.relaunch_of:
        print(
            f"relaunch  of {run.relaunch_of}"
            + (f" (from capture {run.source_capture})" if run.source_capture else "")
        )
    print(f"started   {_time(run.start_time)}  ended {_time(run.end_time) or '-'}")
    rows = []
    for n in run.nodes:
        outputs = ", ".join(f"{k}={v}" for k, v in sorted(n.outputs.items()))
        note = n.error_message or (
            "" if n.executed or n.state == pb.RUN_STATE_PENDING else "reused recorded models"
        )
        rows.append([n.node, state_name(n.state), outputs or "-", note])
    table(rows, ["NODE", "STATE", "OUTPUTS", "NOTE"])


def wait_with_progress(c: ExecutorClient, name: str, label: str = "run") -> pb.Run:
    progress = Progress(f"{label} {name}")

    def changed(run: pb.Run) -> None:
        done = sum(
            1
            for n in run.nodes
            if n.state in (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)
        )
        waiting = [n.node for n in run.nodes if n.state == pb.RUN_STATE_WAITING]
        note = state_name(run.state) + (f" (waiting at {', '.join(waiting)})" if waiting else "")
        progress.update(done, len(run.nodes), note)

    run = c.wait(name, timeout=24 * 3600, on_change=changed)
    progress.close(state_name(run.state))
    return run


def _exit(run: pb.Run) -> int:
    return (
        0
        if run.state
        in (
            pb.RUN_STATE_SUCCEEDED,
            pb.RUN_STATE_RUNNING,
            pb.RUN_STATE_PENDING,
            pb.RUN_STATE_WAITING,
        )
        else 1
    )


def _launch(args: argparse.Namespace) -> int:
    with client() as c:
        run = c.launch(
            args.ion,
            revision=args.revision,
            overrides=parse_overrides(args.overrides),
            seed=args.seed,
        )
        if args.wait:
            run = wait_with_progress(c, run.name) if not args.json else c.wait(run.name, 24 * 3600)
    if args.json:
        emit_json(run_dict(run))
    else:
        _print_run(run)
    return _exit(run)


def _list(args: argparse.Namespace) -> int:
    with client() as c:
        runs = []
        for run in c.list(args.ion):
            runs.append(run)
            if len(runs) >= args.limit:
                break
    if args.json:
        emit_json({"runs": [run_dict(r) for r in runs]})
        return 0
    table(
        [
            [
                r.name,
                state_name(r.state),
                r.spec.launch_number,
                r.relaunch_of or "-",
                _time(r.create_time),
                r.error_message[:60],
            ]
            for r in runs
        ],
        ["RUN", "STATE", "LAUNCH", "RELAUNCH OF", "CREATED", "ERROR"],
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    with client() as c:
        run = c.get(run_name(args.run))
    if args.json:
        emit_json(run_dict(run))
    else:
        _print_run(run)
    return 0


def _watch(args: argparse.Namespace) -> int:
    last = None
    with client() as c:
        for run in c.watch(run_name(args.run)):
            last = run
            if args.json:
                emit_json(run_dict(run))
            else:
                nodes = " ".join(f"{n.node}:{state_name(n.state)}" for n in run.nodes)
                print(f"{state_name(run.state):<10} {nodes}", flush=True)
    return _exit(last) if last is not None else 1


def _approve(args: argparse.Namespace) -> int:
    with client() as c:
        run = c.approve(
            run_name(args.run), args.node, approve=not args.reject, comment=args.comment
        )
    if args.json:
        emit_json(run_dict(run))
    else:
        print(
            f"{'rejected' if args.reject else 'approved'} {args.node} of {run.name}; "
            f"the run is {state_name(run.state)}"
        )
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with client() as c:
        run = c.cancel(run_name(args.run))
    if args.json:
        emit_json(run_dict(run))
    else:
        print(f"{run.name}: {state_name(run.state)}")
    return 0


def _relaunch(args: argparse.Namespace) -> int:
    source = args.source
    with client() as c:
        where = {"capture": source} if "/captures/" in source else {"run": run_name(source)}
        run = c.relaunch(
            **where, pipelines=args.pipelines, allow_drift=args.allow_drift, code=args.code
        )
        if args.wait:
            run = (
                c.wait(run.name, 24 * 3600)
                if args.json
                else wait_with_progress(c, run.name, "relaunch")
            )
    if args.json:
        emit_json(run_dict(run))
    else:
        _print_run(run)
    return _exit(run)


def verification_dict(v: pb.Verification) -> dict[str, Any]:
    return {
        "status": status_name(v.status),
        "original": v.original,
        "relaunch": v.relaunch,
        "tolerance": v.tolerance,
        "nodes": {n.node: status_name(n.status) for n in v.nodes},
        "details": [
            {
                "node": n.node,
                "status": status_name(n.status),
                "compared": n.compared,
                "reused": n.reused,
                "first_divergent_event": n.first_divergent_event,
                "reason": n.reason,
                "likely_cause": n.likely_cause,
            }
            for n in v.nodes
        ],
        "differences": [
            {
                "kind": d.kind,
                "key": d.key,
                "original": d.original,
                "relaunch": d.relaunch,
                "detail": d.detail,
            }
            for d in v.differences
        ],
    }


def _verify(args: argparse.Namespace) -> int:
    with client() as c:
        v = c.verify(run_name(args.original), run_name(args.relaunch), args.tolerance)
    if args.json:
        emit_json(verification_dict(v))
    else:
        print(
            f"{status_name(v.status)}: {v.relaunch} against {v.original} "
            f"(tolerance {v.tolerance:g})"
        )
        table(
            [
                [
                    n.node,
                    status_name(n.status),
                    n.compared,
                    "reused" if n.reused else "",
                    n.first_divergent_event,
                    n.reason,
                ]
                for n in v.nodes
            ],
            ["NODE", "STATUS", "COMPARED", "", "FIRST DIVERGENT EVENT", "REASON"],
        )
        for n in v.nodes:
            if n.likely_cause:
                print(f"likely cause of {n.node}: {n.likely_cause}")
        if v.differences:
            print(f"inputs that differ ({len(v.differences)}):")
            for d in v.differences:
                print(f"  {d.kind:<12} {d.detail}")
    return 0 if v.status == pb.VERIFICATION_STATUS_MATCH else 1
