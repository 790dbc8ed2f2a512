"""Times on the command line: ISO 8601 (``2026-11-27T10:00:00Z``, a date, or a time with an
offset) or relative to now (``-2h``, ``-15m``, ``-30s``, ``-1d``, ``now``)."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from relive.errors import InvalidArgument

_RELATIVE = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {
    "ms": dt.timedelta(milliseconds=1),
    "s": dt.timedelta(seconds=1),
    "m": dt.timedelta(minutes=1),
    "h": dt.timedelta(hours=1),
    "d": dt.timedelta(days=1),
    "w": dt.timedelta(weeks=1),
}


# What argparse must read as a value, not an option: "-2h", "-15m", "-1.5d".
RELATIVE_ARG = re.compile(r"^-\d+(\.\d+)?\s*(ms|s|m|h|d|w)?$")


def accept_relative_times(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Lets ``--from -2h`` through: argparse takes any "-..." for an option unless it looks
    like a negative number, so this parser's idea of a negative number includes "-2h"."""
    parser._negative_number_matcher = RELATIVE_ARG
    return parser


def parse_time(text: str, *, now: dt.datetime | None = None, field: str = "time") -> dt.datetime:
    """An aware UTC datetime; a naive ISO time is taken as UTC. Raises InvalidArgument naming
    ``field`` on anything else."""
    value = text.strip()
    current = now or dt.datetime.now(dt.UTC)
    if value.lower() == "now":
        return current
    m = _RELATIVE.match(value.lower())
    if m:
        sign, amount, unit = m.groups()
        delta = _UNITS[unit] * float(amount)
        return current + delta if sign == "+" else current - delta
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{field} {text!r} is neither an ISO 8601 time nor a relative one like -2h or -15m",
            field=field,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
