"""``relive retention set ION --days N | run ION [--as-of T] | show ION``."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from relive.cli.events import client
from relive.cli.output import add_json_flag, emit_json, to_dict
from relive.cli.timeparse import accept_relative_times, parse_time


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("retention", help="how long an ION's events are kept")
    commands = parser.add_subparsers(dest="retention_command", metavar="COMMAND", required=True)

    p = commands.add_parser("set", help="keep an ION's events for N days")
    p.add_argument("ion", metavar="ION")
    p.add_argument("--days", type=int, required=True)
    add_json_flag(p)
    p.set_defaults(func=_set)

    p = commands.add_parser("show", help="show an ION's retention policy")
    p.add_argument("ion", metavar="ION")
    add_json_flag(p)
    p.set_defaults(func=_show)

    p = commands.add_parser(
        "run", help="sweep now: delete events older than the period, outside every capture"
    )
    accept_relative_times(p)
    p.add_argument("ion", metavar="ION")
    p.add_argument("--as-of", metavar="T", help="sweep as if now were T (ISO 8601 or -2h)")
    add_json_flag(p)
    p.set_defaults(func=_run)


def _set(args: argparse.Namespace) -> int:
    with contextlib.closing(client()) as c:
        policy = c.set_retention(args.ion, args.days)
    if args.json:
        emit_json(policy)
    else:
        print(f"{args.ion}: events are kept {policy.retention_days} days")
    return 0


def _show(args: argparse.Namespace) -> int:
    with contextlib.closing(client()) as c:
        policy = c.get_retention_policy(args.ion)
    if args.json:
        emit_json(policy)
    else:
        swept = (
            policy.last_sweep_time.ToJsonString() if policy.HasField("last_sweep_time") else "never"
        )
        print(f"{args.ion}: kept {policy.retention_days} days; last sweep: {swept}")
    return 0


def _run(args: argparse.Namespace) -> int:
    as_of = parse_time(args.as_of, field="--as-of") if args.as_of else None
    with contextlib.closing(client()) as c:
        result = c.run_retention(args.ion, as_of=as_of)
    if args.json:
        emit_json(
            to_dict(result)
            | {
                "events_deleted": result.events_deleted,
                "events_kept_by_captures": result.events_kept_by_captures,
            }
        )
    else:
        cutoff = result.cutoff_time.ToJsonString()
        print(
            f"{args.ion}: deleted {result.events_deleted} events older than {cutoff}; "
            f"{result.events_kept_by_captures} kept by captures"
        )
    return 0
