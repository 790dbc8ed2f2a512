"""``relive events ION [--from T] [--to T] [--kind K] [--node N] [--run RUN] [--trace ID]
[--order timeline|arrival] [--follow]``: the timeline of an ION, or its live tail."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format

from relive.cli.output import add_json_flag, emit_json, table
from relive.cli.timeparse import accept_relative_times, format_time, parse_time
from relive.client.channel import load_endpoints
from relive.client.recorder import KIND_NAMES, RecorderClient, ion_parent, make_filter
from relive.errors import InvalidArgument
from relive.recorder.v1 import event_pb2, recorder_pb2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("events", help="list the timeline of an ION, or follow it live")
    accept_relative_times(p)
    p.add_argument("ion", metavar="ION")
    p.add_argument("--from", dest="start", metavar="T", help="ISO 8601 or relative (-2h)")
    p.add_argument("--to", dest="end", metavar="T", help="ISO 8601 or relative (-15m)")
    p.add_argument(
        "--kind",
        action="append",
        default=[],
        metavar="K",
        help=f"event kind ({', '.join(sorted(KIND_NAMES))}); repeatable",
    )
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="event type, e.g. run.launched; repeatable",
    )
    p.add_argument("--node", action="append", default=[], metavar="N")
    p.add_argument("--run", action="append", default=[], metavar="RUN")
    p.add_argument("--trace", default="", metavar="ID", help="trace id (32 hex digits)")
    p.add_argument("--order", choices=("timeline", "arrival"), default="timeline")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new events as they arrive (Ctrl-C stops)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="stop after this many events (0: no limit; default 1000)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def client() -> RecorderClient:
    return RecorderClient(load_endpoints().recorder)


def run_name(ion: str, run: str) -> str:
    return run if run.startswith("ions/") else f"{ion_parent(ion)}/runs/{run}"


def build_filter(args: argparse.Namespace) -> recorder_pb2.EventFilter:
    kinds = []
    for k in args.kind:
        if k.lower() not in KIND_NAMES:
            raise InvalidArgument(
                f"--kind {k!r} is not one of {', '.join(sorted(KIND_NAMES))}", field="--kind"
            )
        kinds.append(k.lower())
    start = parse_time(args.start, field="--from") if args.start else None
    end = parse_time(args.end, field="--to") if args.end else None
    if start and end and end < start:
        raise InvalidArgument("--to comes before --from", field="--to")
    return make_filter(
        start=start,
        end=end,
        kinds=kinds,
        types=args.types,
        nodes=args.node,
        runs=[run_name(args.ion, r) for r in args.run],
        trace_id=args.trace,
    )


def event_time(e: event_pb2.Event) -> str:
    return format_time(dt.datetime.fromtimestamp(e.hlc.physical_ms / 1000, tz=dt.UTC))


def summary(e: event_pb2.Event) -> str:
    which = e.WhichOneof("attributes")
    if which == "stat":
        return f"{e.stat.name}={e.stat.value:g}" + (f" step={e.stat.step}" if e.stat.step else "")
    if which == "lifecycle":
        return e.lifecycle.state
    if which == "model":
        return f"{e.model.action} {e.model.model_version}".strip()
    if which == "dataset":
        return e.dataset.uri
    if which == "human_action":
        h = e.human_action
        return f"{h.user} {h.action}" + (f": {h.comment}" if h.comment else "")
    if which == "error":
        return f"{e.error.error_type}: {e.error.message}".strip(": ")
    if which == "config":
        after = json_format.MessageToDict(e.config.after)
        return "changed " + ", ".join(sorted(after))[:70]
    if which == "span":
        s = e.span
        ms = (s.end_time.ToNanoseconds() - s.start_time.ToNanoseconds()) / 1e6
        return f"{s.name} {ms:.1f}ms"
    if which == "log":
        return f"{e.log.severity} {e.log.message}"
    if which == "custom":
        text = json.dumps(json_format.MessageToDict(e.custom.data), separators=(",", ":"))
        return text if len(text) <= 80 else text[:77] + "..."
    return ""


def event_row(e: event_pb2.Event) -> list[Any]:
    kind = event_pb2.EventKind.Name(e.kind).removeprefix("EVENT_KIND_").lower()
    run = e.run.rsplit("/", 1)[-1] if e.run else ""
    return [e.sequence, event_time(e), kind, e.type, e.node, run, summary(e)]


HEADERS = ["SEQ", "TIME", "KIND", "TYPE", "NODE", "RUN", "SUMMARY"]


def event_json(e: event_pb2.Event) -> dict[str, Any]:
    return json_format.MessageToDict(e, preserving_proto_field_name=True)


def _limited(events: Iterator[event_pb2.Event], limit: int) -> Iterator[event_pb2.Event]:
    for n, e in enumerate(events, 1):
        yield e
        if limit and n >= limit:
            return


def run(args: argparse.Namespace) -> int:
    flt = build_filter(args)
    with contextlib.closing(client()) as c:
        if args.follow:
            return follow(c, args, flt)
        events = list(_limited(c.list_events(args.ion, filter=flt, order=args.order), args.limit))
    if args.json:
        emit_json([event_json(e) for e in events])
    elif events:
        table([event_row(e) for e in events], HEADERS)
    else:
        print("no events", file=sys.stderr)
    return 0


def follow(c: RecorderClient, args: argparse.Namespace, flt: recorder_pb2.EventFilter) -> int:
    """Prints stored events, then new ones as they arrive, one line each."""
    stream = c.watch_events(args.ion, filter=flt)
    shown = 0
    try:
        for message in stream:
            for e in message.events:
                if args.json:
                    print(json.dumps(event_json(e)), flush=True)
                else:
                    print("  ".join(str(v) for v in event_row(e)), flush=True)
                shown += 1
                if args.limit and shown >= args.limit:
                    return 0
    finally:
        with contextlib.suppress(Exception):
            stream.close()  # type: ignore[attr-defined]
    return 0
