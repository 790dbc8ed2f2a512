"""What a code snapshot may hold: its size bound and the files left out, from RELIVE_* vars.

Exclude patterns follow git's glob pathspecs, so that a tree in git and a plain directory
leave out the same files: a pattern without ``/`` matches a file or directory name at any
depth (``node_modules``, ``*.pyc``); a pattern with ``/`` matches a path from the code root
(``data/*.csv``); ``*`` and ``?`` stop at ``/``, ``**`` crosses it. A directory that matches
leaves out everything under it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from relive.errors import InvalidArgument

MAX_BYTES_VAR = "RELIVE_CODE_MAX_BYTES"
EXCLUDE_VAR = "RELIVE_CODE_EXCLUDE"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Never code: version control, caches, virtual environments, installed dependencies (those
# are the environment, recorded with their versions) and relive's own data dir.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "*.pyc",
    "*.pyo",
    ".venv",
    "venv",
    "node_modules",
    ".relive",
    ".tools",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
    "*.egg-info",
)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A git-style glob as a regex over a whole relative path."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class CodeSettings:
    """``max_bytes`` bounds a tree's files in total; ``exclude`` are the patterns left out
    (the defaults plus RELIVE_CODE_EXCLUDE's)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CodeSettings:
        env = os.environ if environ is None else environ
        max_bytes = DEFAULT_MAX_BYTES
        if text := env.get(MAX_BYTES_VAR, "").strip():
            try:
                max_bytes = int(text)
            except ValueError:
                max_bytes = 0
            if max_bytes <= 0:
                raise InvalidArgument(
                    f"{MAX_BYTES_VAR} must be a positive number of bytes, not {text!r}",
                    field=MAX_BYTES_VAR,
                )
        extra = tuple(p.strip() for p in env.get(EXCLUDE_VAR, "").split(",") if p.strip())
        for pattern in extra:
            if pattern.startswith(("/", "!")) or ".." in pattern.split("/"):
                raise InvalidArgument(
                    f"{EXCLUDE_VAR}: {pattern!r} is not a pattern relative to the code root",
                    field=EXCLUDE_VAR,
                )
        return cls(max_bytes=max_bytes, exclude=DEFAULT_EXCLUDE + extra)

    @cached_property
    def _names(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_glob_regex(p) for p in self.exclude if "/" not in p.rstrip("/"))

    @cached_property
    def _paths(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_glob_regex(p.rstrip("/")) for p in self.exclude if "/" in p.rstrip("/"))

    def excluded(self, relpath: str) -> bool:
        """True when ``relpath`` (a file or directory, relative to the code root, with ``/``)
        or a directory above it matches an exclude pattern."""
        parts = relpath.split("/")
        for name in parts:
            if any(rx.match(name) for rx in self._names):
                return True
        for n in range(1, len(parts) + 1):
            prefix = "/".join(parts[:n])
            if any(rx.match(prefix) for rx in self._paths):
                return True
        return False

    def pathspecs(self) -> list[str]:
        """The same exclusions as git pathspecs, for ``git ls-files``, ``archive`` and ``diff``."""
        specs = ["."]
        for p in self.exclude:
            p = p.rstrip("/")
            if "/" in p:
                specs += [f":(exclude,glob){p}", f":(exclude,glob){p}/**"]
            else:
                specs += [f":(exclude,glob)**/{p}", f":(exclude,glob)**/{p}/**"]
        return specs
