"""A component that runs from a code snapshot imports from it (its working directory), and
never from live code elsewhere on the import path."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from relive.pipeline.task import _resolve


def module_in(folder: Path, name: str, who: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"def who(ctx):\n    return {who!r}\n")


def test_the_snapshot_wins_over_live_code_earlier_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"steps_{uuid.uuid4().hex[:8]}"
    module_in(tmp_path / "live", name, "live")
    module_in(tmp_path / "snapshot", name, "snapshot")
    monkeypatch.syspath_prepend(str(tmp_path / "live"))
    monkeypatch.chdir(tmp_path / "snapshot")  # Ray's working_dir
    try:
        assert _resolve(f"{name}:who", "codeSnapshots/" + "a" * 64)(None) == "snapshot"
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path / "snapshot")]


def test_a_module_already_imported_from_elsewhere_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"steps_{uuid.uuid4().hex[:8]}"
    module_in(tmp_path / "live", name, "live")
    module_in(tmp_path / "snapshot", name, "snapshot")
    monkeypatch.syspath_prepend(str(tmp_path / "live"))
    try:
        assert _resolve(f"{name}:who")(None) == "live"  # no snapshot: the import path
        monkeypatch.chdir(tmp_path / "snapshot")
        with pytest.raises(ImportError) as e:
            _resolve(f"{name}:who", "codeSnapshots/" + "b" * 64)
        assert "not from the run's code snapshot codeSnapshots/bbbb" in str(e.value)
        assert str(tmp_path / "live") in str(e.value)
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path / "snapshot")]
