"""Resource names (AIP-122), ids, and page tokens that survive concurrent writes."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from relive.errors import InvalidArgument

# AIP-122 style ids: lowercase letters, digits and hyphens, starting with a letter.
ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
ID_MAX = 63
MAX_PAGE_SIZE = 1000


def check_id(value: str, field: str) -> str:
    """Validates one resource id, naming ``field`` in the error."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > ID_MAX:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; the limit is {ID_MAX}", field=field
        )
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is malformed: use lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'",
            field=field,
        )
    return value


def parse_name(name: str, pattern: str, field: str = "name") -> dict[str, str]:
    """Parses ``name`` against a pattern like ``ions/{ion}/runs/{run}``.

    Every variable is checked as an id, so a bad name fails with its field named.
    """
    if not name:
        raise InvalidArgument(f"{field} is required", field=field)
    parts = name.split("/")
    want = pattern.split("/")
    if len(parts) != len(want):
        raise InvalidArgument(f"{field} {name!r} does not match {pattern!r}", field=field)
    out: dict[str, str] = {}
    for got, expected in zip(parts, want, strict=True):
        if expected.startswith("{"):
            key = expected[1:-1]
            out[key] = got
        elif got != expected:
            raise InvalidArgument(f"{field} {name!r} does not match {pattern!r}", field=field)
    for key, value in out.items():
        if value == "-" or (
            key in {"revision", "version"} and (value.isdigit() or value == "latest")
        ):
            continue
        check_id(value, f"{field} ({key})")
    return out


def page_size(value: int, default: int = 50, maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        raise InvalidArgument(f"page_size must not be negative, got {value}", field="page_size")
    if value == 0:
        return default
    return min(value, maximum)


def encode_token(payload: dict[str, Any]) -> str:
    """Page tokens carry the last key seen, never an offset, so new rows do not shift pages."""
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decodes a page token; ``expect`` holds request fields that must not change between pages."""
    if not token:
        return {}
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(payload, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument("page_token is malformed", field="page_token") from e
    for key, value in (expect or {}).items():
        if payload.get(key) != value:
            raise InvalidArgument(
                f"page_token was issued for a different {key}", field="page_token"
            )
    return payload
