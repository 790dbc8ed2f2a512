"""Code snapshots: a tree is hashed exactly, packed, and materialized back byte for byte,
from real git repositories and plain directories (git runs as a subprocess; no sockets)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from relive import errors
from relive.code import (
    CodeSettings,
    HashCache,
    SnapshotCache,
    diff_files,
    inspect_tree,
    locate_module,
    locate_script,
    materialize,
    pack,
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def repo(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "repo"
    root.mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "dev@example.com")
    git(root, "config", "user.name", "dev")
    write(root, files)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    return root


def on_disk(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


SETTINGS = CodeSettings()
CODE: dict[str, str | bytes] = {
    "pkg/__init__.py": "",
    "pkg/steps.py": "def fit(ctx):\n    return 1\n",
    "pkg/data.bin": bytes(range(256)) * 4,
    "README.md": "hello\n",
}


def test_a_plain_directory_is_hashed_by_content_and_leaves_out_caches_and_dependencies(
    tmp_path: Path,
) -> None:
    root = tmp_path / "code"
    write(root, {**CODE, "pkg/__pycache__/steps.cpython-311.pyc": b"x", "node_modules/a.js": "1"})
    tree = inspect_tree(root, SETTINGS)
    assert tree.kind == "files" and not tree.commit
    assert set(tree.files) == set(CODE)
    again = inspect_tree(root, SETTINGS)
    assert again.sha256 == tree.sha256
    (root / "pkg/steps.py").write_text("def fit(ctx):\n    return 2\n")
    changed = inspect_tree(root, SETTINGS)
    assert changed.sha256 != tree.sha256
    assert diff_files(tree.files, changed.files).changed == ("pkg/steps.py",)


def test_the_tree_hash_covers_paths_and_the_executable_bit(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, {"x.py": "1"})
    write(b, {"y.py": "1"})
    assert inspect_tree(a, SETTINGS).sha256 != inspect_tree(b, SETTINGS).sha256
    before = inspect_tree(a, SETTINGS).sha256
    os.chmod(a / "x.py", 0o755)
    assert inspect_tree(a, SETTINGS).sha256 != before


def test_exclude_patterns_match_names_anywhere_and_paths_from_the_root(tmp_path: Path) -> None:
    settings = CodeSettings.from_env({"RELIVE_CODE_EXCLUDE": "data/*.csv, *.log"})
    root = tmp_path / "code"
    write(
        root,
        {
            "data/big.csv": "1",
            "data/keep.txt": "1",
            "deep/data/other.csv": "1",
            "a/b/run.log": "1",
            "m.py": "",
        },
    )
    assert set(inspect_tree(root, settings).files) == {
        "data/keep.txt",
        "deep/data/other.csv",
        "m.py",
    }


def test_a_tree_over_the_bound_is_refused_naming_the_setting(tmp_path: Path) -> None:
    root = tmp_path / "code"
    write(root, {"big/blob.bin": b"0" * 5000, "m.py": "x"})
    with pytest.raises(errors.FailedPrecondition) as caught:
        inspect_tree(root, CodeSettings(max_bytes=1000))
    assert caught.value.field == "RELIVE_CODE_MAX_BYTES"
    assert "big" in caught.value.message and "RELIVE_CODE_EXCLUDE" in caught.value.message


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"RELIVE_CODE_MAX_BYTES": "lots"}, "RELIVE_CODE_MAX_BYTES"),
        ({"RELIVE_CODE_MAX_BYTES": "-1"}, "RELIVE_CODE_MAX_BYTES"),
        ({"RELIVE_CODE_EXCLUDE": "../secrets"}, "RELIVE_CODE_EXCLUDE"),
        ({"RELIVE_CODE_EXCLUDE": "/abs"}, "RELIVE_CODE_EXCLUDE"),
    ],
)
def test_bad_settings_name_their_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        CodeSettings.from_env(env)
    assert caught.value.field == field


def test_a_clean_repository_records_its_commit_and_reproduces_from_git_archive(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path, {**CODE, ".gitignore": "*.tmp\n"})
    (root / "scratch.tmp").write_text("ignored by git")
    tree = inspect_tree(root, SETTINGS)
    assert tree.kind == "git" and tree.commit == git(root, "rev-parse", "HEAD")
    assert not tree.dirty and tree.repo == str(root.resolve())
    assert "scratch.tmp" not in tree.files
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    out = materialize(archive, tmp_path / "out", expect=tree.sha256)
    assert on_disk(out) == {k: v for k, v in on_disk(root).items() if k != "scratch.tmp"}


def test_a_dirty_tree_is_reproduced_from_its_stored_diff_and_untracked_files(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path, {**CODE, "old.py": "gone soon\n"})
    commit = git(root, "rev-parse", "HEAD")
    write(
        root,
        {
            "pkg/steps.py": "def fit(ctx):\n    return 42  # uncommitted\n",
            "pkg/data.bin": bytes(range(255, -1, -1)) * 4,  # a binary change
            "pkg/new_module.py": "NEW = True\n",  # untracked
        },
    )
    (root / "old.py").unlink()
    tree = inspect_tree(root, SETTINGS)
    assert tree.dirty and tree.commit == commit
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    with tarfile.open(archive) as tar:
        diff = tar.extractfile("git/changes.diff").read().decode()  # type: ignore[union-attr]
        names = tar.getnames()
    assert "return 42" in diff and "old.py" in diff
    assert "tree/pkg/new_module.py" in names and "tree/pkg/steps.py" not in names
    out = materialize(archive, tmp_path / "out", expect=tree.sha256)
    assert on_disk(out) == on_disk(root)


def test_a_code_root_inside_a_repository_snapshots_only_its_subtree(tmp_path: Path) -> None:
    root = repo(tmp_path, {"lib/pkg/m.py": "A = 1\n", "elsewhere/x.py": "B = 2\n"})
    (root / "lib/pkg/m.py").write_text("A = 3\n")
    tree = inspect_tree(root / "lib", SETTINGS)
    assert tree.repo_path == "lib" and set(tree.files) == {"pkg/m.py"} and tree.dirty
    ref = tree.code_ref("pkg.m", root / "lib/pkg/m.py")
    assert (ref.path, ref.commit, ref.dirty) == ("lib/pkg/m.py", tree.commit, True)
    assert ref.snapshot == f"codeSnapshots/{tree.sha256}" and ref.tree_sha256 == tree.sha256
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    out = materialize(archive, tmp_path / "out")
    assert (out / "pkg/m.py").read_text() == "A = 3\n"


def test_a_cache_inside_another_repository_still_materializes(tmp_path: Path) -> None:
    """The executor's data dir may sit inside a checkout: applying the diff must not
    mistake that repository for the snapshot's."""
    root = repo(tmp_path, CODE)
    (root / "pkg/steps.py").write_text("changed = True\n")
    tree = inspect_tree(root, SETTINGS)
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    host = repo(tmp_path / "host", {"unrelated.txt": "x"})
    cache = SnapshotCache(host / ".relive" / "code")
    path = cache.materialize(archive, tree.sha256)
    assert (path / "pkg/steps.py").read_text() == "changed = True\n"
    assert cache.materialize(archive, tree.sha256) == path == cache.get(tree.sha256)


def test_a_tampered_archive_is_refused_and_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "code"
    write(root, CODE)
    tree = inspect_tree(root, SETTINGS)
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    forged = tmp_path / "forged.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(forged, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m)
            content = data.read() if data else b""
            if m.name == "tree/pkg/steps.py":
                content = b"import os; os.system('evil')\n"
                m.size = len(content)
            dst.addfile(m, io.BytesIO(content))
    cache = SnapshotCache(tmp_path / "cache")
    with pytest.raises(errors.FailedPrecondition) as caught:
        cache.materialize(forged, tree.sha256)
    assert caught.value.field == "snapshot" and "pkg/steps.py" in caught.value.message
    assert cache.get(tree.sha256) is None and not any((tmp_path / "cache").iterdir())
    with pytest.raises(errors.FailedPrecondition):  # the right archive under a wrong name
        SnapshotCache(tmp_path / "c2").materialize(archive, "0" * 64)


def test_a_tree_that_changes_while_packed_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "code"
    write(root, CODE)
    tree = inspect_tree(root, SETTINGS)
    (root / "pkg/steps.py").write_text("edited after inspection\n")
    with pytest.raises(errors.FailedPrecondition):
        pack(tree, tmp_path / "snap.tar.gz")
    assert not (tmp_path / "snap.tar.gz").exists()


def test_the_manifest_records_every_file(tmp_path: Path) -> None:
    root = tmp_path / "code"
    write(root, CODE)
    tree = inspect_tree(root, SETTINGS)
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["sha256"] == tree.sha256
    assert {p: v["sha256"] for p, v in manifest["files"].items()} == tree.files


def test_the_hash_cache_rehashes_only_changed_files(tmp_path: Path) -> None:
    root = tmp_path / "code"
    write(root, CODE)
    cache = HashCache()
    first = inspect_tree(root, SETTINGS, cache)
    (root / "pkg/steps.py").write_text("v2\n")
    second = inspect_tree(root, SETTINGS, cache)
    assert diff_files(first.files, second.files).changed == ("pkg/steps.py",)


def test_modules_and_scripts_are_found_under_their_code_root(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, {"a/__init__.py": "", "a/m.py": ""})
    write(second, {"b/__init__.py": "", "b/m.py": "", "tools/run.js": "", "x.sh": ""})
    path = [str(first), str(second)]
    assert locate_module("b.m", path) == (second.resolve(), (second / "b/m.py").resolve())
    assert locate_module("json", path) is None  # the standard library is not code of ours
    assert locate_script(["node", "tools/run.js", "--fast"], path) == (
        second.resolve(),
        (second / "tools/run.js").resolve(),
    )
    assert locate_script(["sh", str(second / "x.sh")], path) == (
        second.resolve(),
        (second / "x.sh").resolve(),
    )
    assert locate_script(["echo", "hi"], path) is None


def test_file_diffs_read_as_people_write_them() -> None:
    a = {"x.py": "1", "y.py": "2", "z.py": "3"}
    assert diff_files(a, {**a, "x.py": "9"}).summary() == "1 file changed"
    b = {"x.py": "9", "y.py": "8", "n.py": "0"}
    d = diff_files(a, b)
    assert (d.changed, d.added, d.removed) == (("x.py", "y.py"), ("n.py",), ("z.py",))
    assert d.summary() == "2 files changed, 1 added, 1 removed"
    assert diff_files(a, a).summary() == "no file changed"


def test_git_and_a_plain_walk_leave_out_the_same_files(tmp_path: Path) -> None:
    """Excludes are git pathspecs in a repository and our own matching elsewhere: a tree
    must not change its content because it was committed."""
    settings = CodeSettings.from_env({"RELIVE_CODE_EXCLUDE": "data/*.csv,*.log,build"})
    files: dict[str, str | bytes] = {
        "data/big.csv": "1",
        "data/keep.txt": "1",
        "deep/data/other.csv": "1",
        "a/b/run.log": "1",
        "build/out.o": "1",
        "src/build/x.py": "1",
        "src/m.py": "",
        "node_modules/dep/index.js": "1",
        "pkg/__pycache__/m.pyc": b"x",
    }
    plain = tmp_path / "plain"
    write(plain, files)
    in_git = repo(tmp_path / "g", files)
    assert set(inspect_tree(plain, settings).files) == set(inspect_tree(in_git, settings).files)


def test_a_relative_destination_materializes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = repo(tmp_path, CODE)
    (root / "pkg/steps.py").write_text("dirty = 1\n")
    tree = inspect_tree(root, SETTINGS)
    archive = tmp_path / "snap.tar.gz"
    pack(tree, archive)
    monkeypatch.chdir(tmp_path)
    out = SnapshotCache(Path("cache")).materialize(archive, tree.sha256)
    assert (out / "pkg/steps.py").read_text() == "dirty = 1\n"
