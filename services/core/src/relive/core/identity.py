"""Who is calling: set per RPC by the auth interceptor, read by the domain code.

Without RELIVE_AUTH every caller is the local admin of the default project, so one person's
stack behaves like a single-user tool.

Roles: ``member`` sees its project and changes what it owns; ``admin`` also changes what others
in its project own; ``service`` is another relive service calling on its own behalf (the
recorder asking the registry about an ION, say) and sees every project.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from relive.core import names
from relive.errors import FailedPrecondition

DEFAULT_PROJECT = "default"
ROLES = frozenset({"member", "admin", "service"})


@dataclass(frozen=True)
class Identity:
    user: str
    project: str = DEFAULT_PROJECT
    role: str = "member"
    # A service working for one project (see acting_for) sees only that project.
    scoped: bool = False
    # The bearer token the caller presented: the executor hands it to the components of the
    # caller's runs, so that they act as the caller (never as the executor's service token).
    token: str = field(default="", repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_service(self) -> bool:
        return self.role == "service"

    @property
    def sees_all(self) -> bool:
        return self.is_service and not self.scoped

    def sees(self, project: str) -> bool:
        """Whether resources of ``project`` exist for this caller (else they are NOT_FOUND)."""
        return self.sees_all or project == self.project

    @property
    def scope(self) -> str | None:
        """The project a service calling on this caller's behalf should be limited to; None
        for a service that sees every project."""
        return None if self.sees_all else self.project

    def acting_for(self, project: str) -> Identity:
        """A service working for ``project``: it sees and creates only there."""
        return replace(self, project=project, scoped=True)


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


class ProjectCache:
    """Which project each ION belongs to, as ``lookup`` (the registry) answers, trusted for
    ``ttl_s``: ION ids are unique, but a deleted ION's id may be taken again. Only answers
    that an ION exists are kept."""

    def __init__(self, lookup: Callable[[str], str | None], ttl_s: float = 30.0) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._known: dict[str, tuple[str, float]] = {}

    def get(self, ion: str, fresh: bool = False) -> str | None:
        cached = self._known.get(ion)
        if not fresh and cached is not None and time.monotonic() - cached[1] < self._ttl_s:
            return cached[0]
        project = self._lookup(ion)
        if project is None:
            self._known.pop(ion, None)
            return None
        self.remember(ion, project)
        return project or DEFAULT_PROJECT

    def remember(self, ion: str, project: str) -> None:
        self._known[ion] = (project or DEFAULT_PROJECT, time.monotonic())


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
        role = str(who.get("role", "member"))
        if role not in ROLES:
            raise FailedPrecondition(
                f"auth tokens file {path}: user {who['user']!r} has role {role!r}; "
                f"use one of {', '.join(sorted(ROLES))}",
                field="RELIVE_AUTH_TOKENS_FILE",
            )
        project = str(who.get("project", DEFAULT_PROJECT))
        if not names.ID_PATTERN.match(project):
            raise FailedPrecondition(
                f"auth tokens file {path}: project {project!r} of user {who['user']!r} is not "
                "an id (lowercase letters, digits and '-', starting with a letter)",
                field="RELIVE_AUTH_TOKENS_FILE",
            )
        tokens[str(token)] = Identity(
            user=str(who["user"]), project=project, role=role, token=str(token)
        )
    return tokens
