"""Per-component seeds, derived from the run's root seed so a relaunch draws the same numbers."""

from __future__ import annotations

import hashlib


def derive_seed(root: int, *parts: object) -> int:
    """A 63-bit seed from the root seed and a path such as (node, component, round)."""
    text = ":".join([str(int(root)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
