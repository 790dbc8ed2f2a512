"""A code snapshot on disk: packed into one tar.gz, and materialized again, checked.

The archive holds ``manifest.json`` (every file's path, mode, size and sha256, and the tree
hash) and, for a tree in git, ``git/commit.tar`` (``git archive`` of HEAD under the code
root), ``git/changes.diff`` (``git diff --binary HEAD``: what is uncommitted) and
``tree/`` (the untracked files); for a plain directory, ``tree/`` holds every file.
Materializing extracts the commit, applies the diff, adds ``tree/``, and checks the result
against the manifest: a snapshot either reproduces its tree exactly or is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relive.code.settings import CodeSettings
from relive.code.tree import (
    GIT_TIMEOUT_S,
    MODE_EXEC,
    MODE_LINK,
    HashCache,
    Tree,
    inspect_tree,
    tree_digest,
)
from relive.errors import FailedPrecondition

FORMAT = 1
MANIFEST = "manifest.json"
COMMIT_TAR = "git/commit.tar"
CHANGES = "git/changes.diff"
TREE_DIR = "tree/"


def _manifest(tree: Tree) -> dict[str, object]:
    return {
        "format": FORMAT,
        "sha256": tree.sha256,
        "kind": tree.kind,
        "repo": tree.repo,
        "commit": tree.commit,
        "dirty": tree.dirty,
        "repo_path": tree.repo_path,
        "files": {
            p: {"sha256": tree.files[p], "mode": tree.modes[p], "size": tree.sizes[p]}
            for p in sorted(tree.files)
        },
    }


def _git_output(tree: Tree, *args: str) -> bytes:
    proc = subprocess.run(
        ["git", "-C", str(tree.root), *args],
        capture_output=True,
        check=False,
        timeout=GIT_TIMEOUT_S,
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        raise FailedPrecondition(
            f"cannot snapshot the git repository of {tree.root}: git {args[0]}: {detail}",
            field="RELIVE_CODE_PATH",
        )
    return proc.stdout


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, tree: Tree, rel: str) -> None:
    path = tree.root / rel
    if tree.modes[rel] == MODE_LINK:
        info = tarfile.TarInfo(TREE_DIR + rel)
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        tar.addfile(info)
        return
    info = tarfile.TarInfo(TREE_DIR + rel)
    info.size = path.stat().st_size
    info.mode = 0o755 if tree.modes[rel] == MODE_EXEC else 0o644
    with path.open("rb") as f:
        tar.addfile(info, f)


def pack(tree: Tree, out: Path, settings: CodeSettings | None = None) -> str:
    """Writes ``tree``'s archive to ``out``; returns the archive's sha256. The archive is
    materialized once into a scratch directory and checked, so a tree that changed while it
    was packed, or that git cannot reproduce (``export-ignore`` attributes, say), is refused
    here instead of being stored under a name it does not match."""
    settings = settings or CodeSettings()
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            _add_bytes(tar, MANIFEST, json.dumps(_manifest(tree), sort_keys=True).encode())
            loose = sorted(tree.files)
            if tree.kind == "git":
                specs = ["--", *settings.pathspecs()]
                _add_bytes(
                    tar, COMMIT_TAR, _git_output(tree, "archive", "--format=tar", "HEAD", *specs)
                )
                diff = _git_output(
                    tree,
                    "diff",
                    "--binary",
                    "--relative",
                    "--no-color",
                    "--no-ext-diff",
                    "--no-textconv",
                    "--src-prefix=a/",
                    "--dst-prefix=b/",
                    "HEAD",
                    *specs,
                )
                _add_bytes(tar, CHANGES, diff)
                loose = [p for p in loose if p not in tree.tracked]
            for rel in loose:
                _add_file(tar, tree, rel)
        with tempfile.TemporaryDirectory(prefix="relive-code-check-") as scratch:
            materialize(tmp, Path(scratch) / "tree", expect=tree.sha256)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return file_sha256(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _refused(problem: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the code snapshot does not reproduce its tree: {problem}", field="snapshot"
    )


def _members(tar: tarfile.TarFile, prefix: str) -> Iterator[tarfile.TarInfo]:
    for m in tar.getmembers():
        if m.name.startswith(prefix) and len(m.name) > len(prefix):
            m = m.replace(name=m.name[len(prefix) :], deep=False)
            yield m


def _apply(diff: Path, dest: Path) -> None:
    """Applies the uncommitted diff in ``dest``, as a plain patch: the ceiling stops git
    from finding any repository the destination happens to sit in."""
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(dest.parent))
    proc = subprocess.run(
        ["git", "apply", "--binary", "--whitespace=nowarn", str(diff)],
        cwd=dest,
        env=env,
        capture_output=True,
        check=False,
        timeout=GIT_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise _refused(f"git apply: {proc.stderr.decode(errors='replace').strip()}")


def _check(dest: Path, manifest: dict[str, object], expect: str | None) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _refused("its manifest lists no files")
    found = inspect_tree(
        dest, CodeSettings(max_bytes=2**62, exclude=()), HashCache(), use_git=False
    )
    want = {p: (int(v["mode"]), str(v["sha256"])) for p, v in files.items()}
    have = {p: (found.modes[p], found.files[p]) for p in found.files}
    if have != want:
        wrong = sorted(p for p in set(want) | set(have) if want.get(p) != have.get(p))
        raise _refused(f"{len(wrong)} file(s) differ, first {wrong[0]}")
    digest = tree_digest((p, m, s) for p, (m, s) in want.items())
    if digest != manifest.get("sha256") or (expect is not None and digest != expect):
        raise _refused(f"its tree hash is {digest}, not {expect or manifest.get('sha256')}")


def materialize(archive: Path, dest: Path, expect: str | None = None) -> Path:
    """Unpacks ``archive`` into ``dest`` (which must not exist) and checks every file against
    the manifest, and the tree hash against ``expect`` when given."""
    dest = dest.resolve()
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        try:
            manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError) as e:
            raise _refused("it has no readable manifest.json") from e
        if manifest.get("format") != FORMAT:
            raise _refused(f"unknown archive format {manifest.get('format')!r}")
        if manifest.get("kind") == "git":
            inner = tar.extractfile(COMMIT_TAR)
            if inner is None:
                raise _refused(f"{COMMIT_TAR} is missing")
            with tarfile.open(fileobj=io.BytesIO(inner.read()), mode="r:") as commit:
                commit.extractall(dest, filter="data")
            diff = tar.extractfile(CHANGES)
            if diff is not None and (data := diff.read()):
                patch = dest.parent / f".{dest.name}.diff"
                patch.write_bytes(data)
                try:
                    _apply(patch, dest)
                finally:
                    patch.unlink(missing_ok=True)
        tar.extractall(dest, members=list(_members(tar, TREE_DIR)), filter="data")
    _check(dest, manifest, expect)
    return dest


@dataclass
class SnapshotCache:
    """Materialized trees by sha256, under one directory: ``<dir>/<sha256>/``. A tree is
    placed by renaming a checked scratch directory, so one that exists is complete."""

    directory: Path

    def path(self, sha256: str) -> Path:
        return self.directory / sha256

    def get(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        return path if path.is_dir() else None

    def materialize(self, archive: Path, sha256: str) -> Path:
        if (found := self.get(sha256)) is not None:
            return found
        self.directory = self.directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        scratch = self.directory / f".tmp-{sha256[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            materialize(archive, scratch / "tree", expect=sha256)
            try:
                (scratch / "tree").rename(self.path(sha256))
            except OSError:
                if self.get(sha256) is None:  # not a concurrent materialization of the same
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self.path(sha256)
