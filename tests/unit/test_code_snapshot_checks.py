"""Code snapshots' pure logic: names, header checks, and which snapshots an export carries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relive import errors
from relive.recorder import export_code
from relive.registry.model import CodeSnapshot
from relive.registry.snapshots import MAX_FILES, check_header, parse_snapshot_name

SHA = "0123456789abcdef" * 4


def header(**changes: Any) -> CodeSnapshot:
    values: dict[str, Any] = {
        "sha256": SHA,
        "kind": "git",
        "archive_sha256": "f" * 64,
        "files": {"steps.py": "a" * 64, "pkg/util.py": "b" * 64},
        "file_count": 2,
        "repo": "https://example.com/ml.git",
        "commit": "c" * 40,
        "repo_path": "src/ml",
    }
    values.update(changes)
    return CodeSnapshot(**values)


def test_a_name_is_the_prefix_and_a_lowercase_sha256() -> None:
    assert parse_snapshot_name(f"codeSnapshots/{SHA}") == SHA
    for bad in (
        "",
        SHA,
        f"codeSnapshots/{SHA.upper()}",
        f"codeSnapshots/{SHA}0",
        f"codeSnapshots/{SHA[:-1]}",
        f"codeSnapshots/{SHA}/x",
        f"models/{SHA}",
        "codeSnapshots/",
    ):
        with pytest.raises(errors.InvalidArgument) as e:
            parse_snapshot_name(bad, "snapshot")
        assert e.value.field == "snapshot", bad


def test_a_good_header_passes_as_given() -> None:
    good = header()
    assert check_header(good) is good
    assert check_header(header(file_count=0))  # proto3's unset: the registry counts the files
    assert check_header(header(kind="files", repo="", commit="", repo_path="", files={}))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sha256": SHA.upper()}, "header.sha256"),
        ({"sha256": ""}, "header.sha256"),
        ({"archive_sha256": "g" * 64}, "header.archive_sha256"),
        ({"kind": "GIT"}, "header.kind"),
        ({"files": {"": "a" * 64}, "file_count": 1}, "header.files"),
        ({"files": {"a/../b": "a" * 64}, "file_count": 1}, "header.files"),
        ({"files": {"./a": "a" * 64}, "file_count": 1}, "header.files"),
        ({"files": {"a\\b": "a" * 64}, "file_count": 1}, "header.files"),
        ({"files": {"a\nb": "a" * 64}, "file_count": 1}, "header.files"),
        ({"files": {"a": "A" * 64}, "file_count": 1}, "header.files[a]"),
        ({"file_count": 3}, "header.file_count"),
        ({"file_count": -1, "files": {}}, "header.file_count"),
        ({"tree_bytes": -5}, "header.tree_bytes"),
        ({"repo": "r" * 4097}, "header.repo"),
        ({"commit": "c\x00"}, "header.commit"),
        ({"repo_path": "/abs"}, "header.repo_path"),
    ],
)
def test_bad_headers_name_their_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        check_header(header(**changes))
    assert e.value.field == field


def test_files_are_bounded_in_number_and_in_bytes() -> None:
    many = {f"f{i}": "a" * 64 for i in range(MAX_FILES + 1)}
    with pytest.raises(errors.InvalidArgument, match=str(MAX_FILES)):
        check_header(header(files=many, file_count=len(many)))
    long = {f"{i:04d}/" + "p" * 4000: "a" * 64 for i in range(2100)}
    with pytest.raises(errors.InvalidArgument, match="bytes") as e:
        check_header(header(files=long, file_count=len(long)))
    assert e.value.field == "header.files"


def test_the_snapshots_of_a_launch_are_distinct_and_in_order() -> None:
    a, b = f"codeSnapshots/{'a' * 64}", f"codeSnapshots/{'b' * 64}"
    details = {
        "spec": {
            "code_refs": [
                {"module": "m", "snapshot": b},
                {"module": "n", "snapshot": a},
                {"module": "o", "snapshot": b},
                {"module": "old"},  # a ref from before snapshots
                {"module": "p", "snapshot": ""},
                "junk",
                {"snapshot": 7},
            ]
        }
    }
    assert export_code.snapshots_of_launch(details) == [b, a]
    for nothing in ({}, {"spec": "x"}, {"spec": {"code_refs": {"a": 1}}}, {"seed": 7}):
        assert export_code.snapshots_of_launch(nothing) == []


class _Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.root / name

    def discard(self, name: str) -> None:
        self.written.pop(name, None)

    def write_json(self, name: str, value: Any) -> None:
        self.written[name] = value


def test_an_export_refuses_a_snapshot_it_cannot_carry(tmp_path: Path) -> None:
    files = _Files(tmp_path)
    with pytest.raises(errors.FailedPrecondition) as e:
        export_code.write_snapshots({"codeSnapshots/x": "ions/i/runs/r"}, None, files, "cap")
    assert "codeSnapshots/x" in e.value.message and e.value.reason == "CODE_SNAPSHOT_MISSING"
    name = f"codeSnapshots/{SHA}"
    with pytest.raises(errors.FailedPrecondition) as e2:
        export_code.write_snapshots({name: "ions/i/runs/r"}, None, files, "cap")
    assert name in e2.value.message and "no registry" in e2.value.message
    assert export_code.write_snapshots({}, None, files, "cap") == []
    assert files.written == {}


def _package(root: Path, files: dict[str, Any]) -> set[str]:
    for name, value in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value if isinstance(value, str) else json.dumps(value))
    return set(files)


def test_an_import_checks_every_snapshot_before_it_stores_any(tmp_path: Path) -> None:
    meta = {"sha256": SHA, "kind": "files", "archive_sha256": "f" * 64}
    archive, meta_file = export_code.archive_files(SHA)
    # Nothing to restore: no registry needed.
    assert export_code.restore_snapshots(tmp_path, {"events.jsonl"}, None) == []
    cases: list[tuple[dict[str, Any], type[errors.ReliveError], str]] = [
        ({meta_file: meta}, errors.InvalidArgument, f"no {archive}"),
        ({meta_file: "{not json", archive: "x"}, errors.InvalidArgument, "not a code snapshot"),
        ({meta_file: [1, 2], archive: "x"}, errors.InvalidArgument, "not a code snapshot"),
        ({meta_file: {"sha256": 5}, archive: "x"}, errors.InvalidArgument, "not a code snapshot"),
        ({meta_file: {**meta, "sha256": "e" * 64}, archive: "x"}, errors.InvalidArgument, "e" * 64),
        ({meta_file: meta, archive: "x"}, errors.FailedPrecondition, "no registry"),
    ]
    for i, (package, error, words) in enumerate(cases):
        root = tmp_path / str(i)
        with pytest.raises(error) as e:
            export_code.restore_snapshots(root, _package(root, package), None)
        assert words in e.value.message, (i, e.value.message)
