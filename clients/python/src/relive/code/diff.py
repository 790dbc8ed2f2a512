"""How two code trees differ, file by file, from their manifests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FileDiff:
    changed: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.changed) + len(self.added) + len(self.removed)

    def summary(self) -> str:
        """``1 file changed``, ``2 files changed, 1 added``; ``no file changed`` when equal."""
        parts = []
        for n, what in (
            (len(self.changed), "changed"),
            (len(self.added), "added"),
            (len(self.removed), "removed"),
        ):
            if n:
                parts.append(f"{n} {what}")
        if not parts:
            return "no file changed"
        first = parts[0].split(" ", 1)
        noun = "file" if first[0] == "1" else "files"
        parts[0] = f"{first[0]} {noun} {first[1]}"
        return ", ".join(parts)


def diff_files(a: Mapping[str, str], b: Mapping[str, str]) -> FileDiff:
    """What changed from tree ``a`` to tree ``b`` (path -> sha256 maps)."""
    return FileDiff(
        changed=tuple(sorted(p for p in a.keys() & b.keys() if a[p] != b[p])),
        added=tuple(sorted(b.keys() - a.keys())),
        removed=tuple(sorted(a.keys() - b.keys())),
    )
