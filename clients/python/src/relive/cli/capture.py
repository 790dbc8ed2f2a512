"""``relive capture create|list|show|update|delete|export|import|replay``."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from relive.cli.events import HEADERS, client, event_json, event_row
from relive.cli.output import Progress, add_json_flag, emit_json, table, to_dict
from relive.cli.timeparse import accept_relative_times, format_time, parse_time
from relive.client.recorder import ion_parent
from relive.errors import InvalidArgument
from relive.recorder.v1 import recorder_pb2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("capture", help="mark, browse, export and replay windows")
    commands = parser.add_subparsers(dest="capture_command", metavar="COMMAND", required=True)

    p = commands.add_parser("create", help="mark a window of an ION's timeline (copies nothing)")
    accept_relative_times(p)
    p.add_argument("ion", metavar="ION")
    p.add_argument("--name", required=True)
    p.add_argument("--from", dest="start", required=True, metavar="T")
    p.add_argument("--to", dest="end", required=True, metavar="T")
    p.add_argument("--description", default="")
    add_json_flag(p)
    p.set_defaults(func=_create)

    p = commands.add_parser("list", help="list the captures of an ION ('-' for every ION)")
    p.add_argument("ion", metavar="ION", nargs="?", default="-")
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = commands.add_parser("show", help="show one capture")
    p.add_argument("capture", metavar="CAPTURE", help="ions/ION/captures/NAME or ION/NAME")
    add_json_flag(p)
    p.set_defaults(func=_show)

    p = commands.add_parser("update", help="change a capture's description")
    p.add_argument("capture", metavar="CAPTURE")
    p.add_argument("--description", required=True)
    add_json_flag(p)
    p.set_defaults(func=_update)

    p = commands.add_parser("delete", help="delete a capture; retention may then reclaim it")
    p.add_argument("capture", metavar="CAPTURE")
    add_json_flag(p)
    p.set_defaults(func=_delete)

    p = commands.add_parser("export", help="write a capture to a .tar.gz")
    p.add_argument("capture", metavar="CAPTURE")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument(
        "--models",
        action="store_true",
        help="include the model versions its runs used (an import restores them, same names)",
    )
    add_json_flag(p)
    p.set_defaults(func=_export)

    p = commands.add_parser("import", help="restore an exported capture into this deployment")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", default="", help="import under this capture name")
    add_json_flag(p)
    p.set_defaults(func=_import)

    p = commands.add_parser("replay", help="re-live a capture in the terminal")
    accept_relative_times(p)
    p.add_argument("capture", metavar="CAPTURE")
    p.add_argument("--speed", type=float, default=1.0, help="1 is real time, 0 as fast as possible")
    p.add_argument("--from", dest="start", metavar="T", help="seek to this time in the window")
    add_json_flag(p)
    p.set_defaults(func=_replay)


def capture_name(text: str) -> str:
    if text.startswith("ions/"):
        return text
    ion, sep, name = text.partition("/")
    if not sep or not name:
        raise InvalidArgument(
            f"capture {text!r}: give ions/ION/captures/NAME or ION/NAME", field="CAPTURE"
        )
    return f"{ion_parent(ion)}/captures/{name}"


def _ts(value: Any) -> str:
    return format_time(value.ToDatetime(dt.UTC)) if value.ByteSize() else ""


def _row(c: recorder_pb2.Capture) -> list[str]:
    return [c.name, _ts(c.start_time), _ts(c.end_time), c.owner, c.description]


def _print_one(c: recorder_pb2.Capture) -> None:
    for key, value in (
        ("name", c.name),
        ("window", f"{_ts(c.start_time)} .. {_ts(c.end_time)}"),
        ("owner", c.owner),
        ("project", c.project),
        ("description", c.description),
        ("created", _ts(c.create_time)),
        ("imported from", c.imported_from),
    ):
        if value:
            print(f"{key + ':':<15}{value}")


def _create(args: argparse.Namespace) -> int:
    start = parse_time(args.start, field="--from")
    end = parse_time(args.end, field="--to")
    with contextlib.closing(client()) as c:
        cap = c.create_capture(args.ion, args.name, start, end, description=args.description)
    if args.json:
        emit_json(cap)
    else:
        print(f"created {cap.name}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with contextlib.closing(client()) as c:
        captures = list(c.list_captures(args.ion))
    if args.json:
        emit_json([to_dict(x) for x in captures])
    else:
        table([_row(x) for x in captures], ["NAME", "FROM", "TO", "OWNER", "DESCRIPTION"])
    return 0


def _show(args: argparse.Namespace) -> int:
    with contextlib.closing(client()) as c:
        cap = c.get_capture(capture_name(args.capture))
    if args.json:
        emit_json(cap)
    else:
        _print_one(cap)
    return 0


def _update(args: argparse.Namespace) -> int:
    with contextlib.closing(client()) as c:
        cap = c.update_capture(capture_name(args.capture), args.description)
    if args.json:
        emit_json(cap)
    else:
        _print_one(cap)
    return 0


def _delete(args: argparse.Namespace) -> int:
    name = capture_name(args.capture)
    with contextlib.closing(client()) as c:
        c.delete_capture(name)
    if args.json:
        emit_json({"deleted": name})
    else:
        print(f"deleted {name}")
    return 0


def _export(args: argparse.Namespace) -> int:
    name = capture_name(args.capture)
    bar = Progress(f"export {name}")
    last: dict[str, int] = {}

    def progress(p: recorder_pb2.ExportProgress) -> None:
        last.update(events=p.events_written, total=p.events_total)
        bar.update(p.events_written, p.events_total or None, p.stage)

    with contextlib.closing(client()) as c:
        path = c.export_capture(name, args.output, include_models=args.models, progress=progress)
    size = Path(path).stat().st_size
    bar.close(f"wrote {path} ({size} bytes)")
    if args.json:
        emit_json(
            {"capture": name, "path": str(path), "bytes": size, "events": last.get("events", 0)}
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    bar = Progress(f"import {args.file}")
    with contextlib.closing(client()) as c:
        result = c.import_capture(
            args.file, capture_id=args.name, progress=lambda done, total: bar.update(done, total)
        )
    bar.close(
        f"{result.events_imported} events imported, {result.events_already_present} already present"
    )
    if args.json:
        emit_json(
            {
                "capture": to_dict(result.capture),
                "events_imported": result.events_imported,
                "events_already_present": result.events_already_present,
            }
        )
    else:
        print(f"imported {result.capture.name}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    name = capture_name(args.capture)
    start = parse_time(args.start, field="--from") if args.start else None
    began = time.monotonic()
    n = 0
    with contextlib.closing(client()) as c:
        for message in c.replay_capture(name, speed=args.speed, start=start):
            n += 1
            e = message.event
            if args.json:
                print(
                    json.dumps(
                        {"playback_time": _ts(message.playback_time), "event": event_json(e)}
                    ),
                    flush=True,
                )
            else:
                if n == 1:
                    print("  ".join(HEADERS), flush=True)
                print("  ".join(str(v) for v in event_row(e)), flush=True)
    if not args.json:
        print(f"replayed {n} events in {time.monotonic() - began:.1f}s")
    return 0
