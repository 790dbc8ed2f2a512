"""Who is calling: set per RPC by the auth interceptor, read by the domain code.

Without RELIVE_AUTH every caller is the local admin of the default project, so one person's
stack behaves like a single-user tool.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from relive.core.errors import FailedPrecondition

DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Identity:
    user: str
    project: str = DEFAULT_PROJECT
    role: str = "member"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL = Identity(user="local", project=DEFAULT_PROJECT, role="admin")
_current: contextvars.ContextVar[Identity] = contextvars.ContextVar(
    "relive_identity", default=LOCAL
)


def current() -> Identity:
    return _current.get()


@contextlib.contextmanager
def acting_as(identity: Identity) -> Iterator[Identity]:
    token = _current.set(identity)
    try:
        yield identity
    finally:
        _current.reset(token)


def load_tokens(path: Path) -> dict[str, Identity]:
    """Reads the tokens file: YAML or JSON, ``{tokens: {TOKEN: {user, project, role}}}``."""
    try:
        raw = (
            yaml.safe_load(path.read_text())
            if path.suffix != ".json"
            else json.loads(path.read_text())
        )
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise FailedPrecondition(
            f"cannot read the auth tokens file {path}: {e}", field="RELIVE_AUTH_TOKENS_FILE"
        ) from e
    if not isinstance(raw, dict):
        raise FailedPrecondition(
            f"auth tokens file {path} must map tokens to users", field="RELIVE_AUTH_TOKENS_FILE"
        )
    entries = raw.get("tokens", raw)
    tokens: dict[str, Identity] = {}
    for token, who in entries.items():
        if not isinstance(who, dict) or not who.get("user"):
            raise FailedPrecondition(
                f"auth tokens file {path}: token entries need a user",
                field="RELIVE_AUTH_TOKENS_FILE",
            )
        tokens[str(token)] = Identity(
            user=str(who["user"]),
            project=str(who.get("project", DEFAULT_PROJECT)),
            role=str(who.get("role", "member")),
        )
    return tokens
