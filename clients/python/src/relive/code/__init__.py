"""Code snapshots: what code a run really ran, content-addressed, and how to get it back.

- ``locate_module`` / ``locate_script``: the code root a component's module or script
  comes from.
- ``inspect_tree``: what that root holds now (git commit, dirty flag, every file's sha256,
  the tree hash), cheap enough for every launch.
- ``pack`` / ``materialize`` / ``SnapshotCache``: the tree as one archive (git archive of
  the commit + the uncommitted diff + untracked files, or the files), and back, checked.
- ``diff_files``: how two trees differ, for "why did the relaunch diverge".

docs/code-provenance.md describes how the executor uses them.
"""

from relive.code.archive import SnapshotCache, file_sha256, materialize, pack
from relive.code.diff import FileDiff, diff_files
from relive.code.settings import DEFAULT_EXCLUDE, EXCLUDE_VAR, MAX_BYTES_VAR, CodeSettings
from relive.code.tree import (
    CODE_PATH_VAR,
    HashCache,
    Tree,
    find_module_file,
    inspect_tree,
    locate_module,
    locate_script,
    snapshot_name,
)

__all__ = [
    "CODE_PATH_VAR",
    "DEFAULT_EXCLUDE",
    "EXCLUDE_VAR",
    "MAX_BYTES_VAR",
    "CodeSettings",
    "FileDiff",
    "HashCache",
    "SnapshotCache",
    "Tree",
    "diff_files",
    "file_sha256",
    "find_module_file",
    "inspect_tree",
    "locate_module",
    "locate_script",
    "materialize",
    "pack",
    "snapshot_name",
]
