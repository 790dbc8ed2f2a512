"""Output shared by every command: --json, plain tables, progress, and errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from relive.errors import ReliveError


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def emit_json(value: Any) -> None:
    if isinstance(value, Message):
        value = to_dict(value)
    print(json.dumps(value, indent=2, sort_keys=False, default=str))


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fail(args: argparse.Namespace, error: ReliveError) -> int:
    """Prints an error (as JSON with --json) and returns the exit code 1."""
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "error": {
                        "code": error.code.name,
                        "message": error.message,
                        "reason": error.reason,
                        "field": error.field,
                    }
                }
            )
        )
    else:
        where = f" (field: {error.field})" if error.field else ""
        print(f"relive: {error.code.name}: {error.message}{where}", file=sys.stderr)
    return 1


class Progress:
    """A progress bar on a terminal, plain lines elsewhere (logs, CI, pipes)."""

    def __init__(self, label: str, total: int | None = None, stream: Any = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_plain = -1

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        if total is not None:
            self.total = total
        if self.tty:
            if self.total:
                frac = min(1.0, done / self.total)
                bar = "#" * int(frac * 30)
                text = f"\r{self.label} [{bar:<30}] {done}/{self.total} {note}"
            else:
                text = f"\r{self.label} {done} {note}"
            self.stream.write(text[:200])
            self.stream.flush()
            return
        # Plain lines: at most one per 10% (or per call when the total is unknown).
        step = int(done * 10 / self.total) if self.total else done
        if step != self._last_plain:
            self._last_plain = step
            total_s = f"/{self.total}" if self.total else ""
            print(f"{self.label}: {done}{total_s} {note}".rstrip(), file=self.stream)

    def close(self, note: str = "done") -> None:
        if self.tty:
            self.stream.write(f"\r{self.label}: {note}\033[K\n")
        else:
            print(f"{self.label}: {note}", file=self.stream)
        self.stream.flush()
