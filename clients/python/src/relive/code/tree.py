"""The code a component runs: which code root a module or script comes from, and what that
tree holds, content-addressed.

A **code root** is an entry of the code path (``RELIVE_CODE_PATH``) that a module is found
under. Its **tree** is every file under it that is not excluded: for a git repository, the
tracked files as they are on disk plus the untracked ones git does not ignore; otherwise
the files themselves. The tree's sha256 covers each file's path, mode and content, so it
names the code exactly; git's commit and dirty flag say where it came from.

``inspect_tree`` runs at every launch, so it hashes a file only when its size, mtime or
inode changed since the last look (``HashCache``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.machinery import PathFinder
from pathlib import Path

from relive.code.settings import MAX_BYTES_VAR, CodeSettings
from relive.errors import FailedPrecondition, InvalidArgument
from relive.registry.v1 import registry_pb2

CODE_PATH_VAR = "RELIVE_CODE_PATH"
SNAPSHOT_PREFIX = "codeSnapshots/"
GIT_TIMEOUT_S = 60.0
MODE_FILE, MODE_EXEC, MODE_LINK = 0o100644, 0o100755, 0o120000


def snapshot_name(sha256: str) -> str:
    return f"{SNAPSHOT_PREFIX}{sha256}"


# ---- where code comes from -------------------------------------------------------------


def find_module_file(module: str, search: Sequence[str]) -> Path | None:
    """A module's source file, found without importing it (or any parent package); an empty
    ``search`` means the interpreter's own path."""
    parts = module.split(".")
    locations: list[str] | None = list(search) if search else None
    spec = None
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), locations)
        if spec is None:
            return None
        if i < len(parts) - 1:
            if not spec.submodule_search_locations:
                return None
            locations = list(spec.submodule_search_locations)
    if spec is not None and spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        return Path(spec.origin)
    return None


def locate_module(module: str, code_path: Sequence[str]) -> tuple[Path, Path] | None:
    """(code root, file) of a ``call:`` module found under a code root, first root first;
    None when it is not under one (an installed package is environment, not code)."""
    for entry in code_path:
        if not entry:
            continue
        found = find_module_file(module, [entry])
        if found is not None:
            return Path(entry).resolve(), found.resolve()
    return None


def locate_script(command: Sequence[str], code_path: Sequence[str]) -> tuple[Path, Path] | None:
    """(code root, file) of a command component's script: the first argument that is a file
    under a code root, given relative to the root (commands run there) or absolutely."""
    roots = [Path(e).resolve() for e in code_path if e]
    for arg in command:
        if not arg or arg.startswith("-"):
            continue
        given = Path(arg)
        for root in roots:
            candidate = given if given.is_absolute() else root / given
            if candidate.is_file():
                resolved = candidate.resolve()
                if resolved.is_relative_to(root):
                    return root, resolved
    return None


# ---- what a tree holds -----------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """The content of a code root. ``files`` maps each path (relative, with ``/``) to its
    sha256; ``modes`` to its git-style mode; ``tracked`` are the paths git tracks."""

    root: Path
    sha256: str
    files: dict[str, str]
    modes: dict[str, int]
    sizes: dict[str, int]
    kind: str  # "git" or "files"
    repo: str = ""
    commit: str = ""
    dirty: bool = False
    repo_path: str = ""
    toplevel: Path | None = None
    tracked: frozenset[str] = field(default_factory=frozenset)

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def tree_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def name(self) -> str:
        return snapshot_name(self.sha256)

    def snapshot_proto(self) -> registry_pb2.CodeSnapshot:
        """The snapshot's metadata; the archive's size and sha256 are the uploader's."""
        return registry_pb2.CodeSnapshot(
            name=self.name,
            sha256=self.sha256,
            kind=self.kind,
            file_count=self.file_count,
            tree_bytes=self.tree_bytes,
            files=self.files,
            repo=self.repo,
            commit=self.commit,
            dirty=self.dirty,
            repo_path=self.repo_path,
        )

    def code_ref(self, module: str, file: Path) -> registry_pb2.CodeRef:
        """The ref of one module (or script) of this tree: where it is, and the tree."""
        rel = file.resolve().relative_to(self.root).as_posix()
        base = self.toplevel if self.toplevel is not None else self.root
        return registry_pb2.CodeRef(
            module=module,
            repo=self.repo,
            path=file.resolve().relative_to(base).as_posix(),
            commit=self.commit,
            dirty=self.dirty,
            tree_sha256=self.sha256,
            snapshot=self.name,
            root=str(self.root),
            file_sha256=self.files.get(rel, ""),
        )


def tree_digest(entries: Iterator[tuple[str, int, str]]) -> str:
    """The tree hash: sha256 over ``path NUL mode NUL sha256 LF`` of every file, by path."""
    h = hashlib.sha256()
    for path, mode, digest in sorted(entries):
        h.update(f"{path}\0{mode:o}\0{digest}\n".encode())
    return h.hexdigest()


class HashCache:
    """sha256 of files, recomputed only when a file's size, mtime or inode changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, int, int, str]] = {}

    def sha256(self, path: Path, st: os.stat_result) -> str:
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            known = self._known.get(str(path))
        if known is not None and known[:3] == key:
            return known[3]
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            self._known[str(path)] = (*key, digest)
        return digest


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, check=False, timeout=GIT_TIMEOUT_S
    )


def _unreadable(root: Path, what: str, proc: subprocess.CompletedProcess[bytes]) -> Exception:
    detail = proc.stderr.decode(errors="replace").strip().splitlines()
    return FailedPrecondition(
        f"cannot read the git repository of code root {root} ({what}): "
        f"{detail[-1] if detail else f'git exited with {proc.returncode}'}",
        field=CODE_PATH_VAR,
    )


def _z(out: bytes) -> list[str]:
    return [p for p in out.decode("utf-8", errors="surrogateescape").split("\0") if p]


@dataclass
class _Listing:
    paths: list[str]
    tracked: frozenset[str] = frozenset()
    kind: str = "files"
    repo: str = ""
    commit: str = ""
    dirty: bool = False
    repo_path: str = ""
    toplevel: Path | None = None


def _git_listing(root: Path, settings: CodeSettings) -> _Listing | None:
    """The files git sees under ``root`` (tracked, and untracked not ignored); None when
    ``root`` is not in a git work tree with a commit."""
    if shutil.which("git") is None:
        return None
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return None  # not a repository
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if head.returncode != 0:
        return None  # a repository without a commit: its files are all there is
    toplevel = Path(top.stdout.decode().strip()).resolve()
    specs = ["--", *settings.pathspecs()]
    tracked_run = _git(root, "ls-files", "-z", "--cached", *specs)
    if tracked_run.returncode != 0:
        raise _unreadable(root, "ls-files", tracked_run)
    untracked_run = _git(root, "ls-files", "-z", "--others", "--exclude-standard", *specs)
    if untracked_run.returncode != 0:
        raise _unreadable(root, "ls-files --others", untracked_run)
    # The pathspecs already left out what settings exclude, as settings.excluded would.
    tracked = _z(tracked_run.stdout)
    untracked = _z(untracked_run.stdout)
    present = [p for p in tracked if os.path.lexists(root / p)]
    changed = _git(root, "diff", "--quiet", "HEAD", *specs)
    if changed.returncode not in (0, 1):
        raise _unreadable(root, "diff", changed)
    remote = _git(root, "remote", "get-url", "origin")
    return _Listing(
        paths=present + untracked,
        tracked=frozenset(present),
        kind="git",
        repo=remote.stdout.decode().strip() if remote.returncode == 0 else str(toplevel),
        commit=head.stdout.decode().strip(),
        dirty=bool(untracked) or len(present) < len(tracked) or changed.returncode == 1,
        repo_path="" if toplevel == root else root.relative_to(toplevel).as_posix(),
        toplevel=toplevel,
    )


def _walk(root: Path, settings: CodeSettings) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        dirnames[:] = sorted(d for d in dirnames if not settings.excluded(prefix + d))
        out += [prefix + f for f in sorted(filenames) if not settings.excluded(prefix + f)]
    return out


def _too_big(root: Path, sizes: dict[str, int], settings: CodeSettings) -> FailedPrecondition:
    by_top: dict[str, int] = {}
    for path, size in sizes.items():
        top = path.split("/", 1)[0]
        by_top[top] = by_top.get(top, 0) + size
    biggest = sorted(by_top.items(), key=lambda kv: -kv[1])[:3]
    listed = ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in biggest)
    return FailedPrecondition(
        f"the code tree at {root} holds {sum(sizes.values()) / 1e6:.1f} MB, over the "
        f"{settings.max_bytes / 1e6:.1f} MB that {MAX_BYTES_VAR} allows (largest: {listed}); "
        "raise the bound, or leave files out with RELIVE_CODE_EXCLUDE",
        field=MAX_BYTES_VAR,
    )


def inspect_tree(
    root: Path, settings: CodeSettings, cache: HashCache | None = None, *, use_git: bool = True
) -> Tree:
    """What ``root`` holds now, hashed. Raises ``FailedPrecondition`` naming
    RELIVE_CODE_MAX_BYTES when the tree is over the bound, and RELIVE_CODE_PATH when the
    root is not a directory or its repository cannot be read. ``use_git=False`` reads the
    directory as plain files even inside a repository (to check a materialized snapshot)."""
    root = root.resolve()
    if not root.is_dir():
        raise InvalidArgument(f"code root {root} is not a directory", field=CODE_PATH_VAR)
    listing = (_git_listing(root, settings) if use_git else None) or _Listing(
        paths=_walk(root, settings)
    )
    stats: dict[str, os.stat_result] = {}
    for rel in listing.paths:
        st = os.lstat(root / rel)
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            stats[rel] = st  # directories (git submodules) and sockets are not code
    sizes = {rel: st.st_size for rel, st in stats.items()}
    if sum(sizes.values()) > settings.max_bytes:
        raise _too_big(root, sizes, settings)
    cache = cache or HashCache()
    files: dict[str, str] = {}
    modes: dict[str, int] = {}
    for rel, st in stats.items():
        path = root / rel
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            files[rel] = hashlib.sha256(b"symlink:" + os.fsencode(target)).hexdigest()
            modes[rel] = MODE_LINK
        else:
            files[rel] = cache.sha256(path, st)
            modes[rel] = MODE_EXEC if st.st_mode & stat.S_IXUSR else MODE_FILE
    digest = tree_digest((p, modes[p], files[p]) for p in files)
    return Tree(
        root=root,
        sha256=digest,
        files=files,
        modes=modes,
        sizes=sizes,
        kind=listing.kind,
        repo=listing.repo,
        commit=listing.commit,
        dirty=listing.dirty,
        repo_path=listing.repo_path,
        toplevel=listing.toplevel,
        tracked=listing.tracked,
    )
