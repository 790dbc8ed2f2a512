"""A pipeline author installs the SDK alone: its wheel, in a fresh venv, with no relive-core and
no service. The pipeline SDK runs a component there, and `relive` works, saying which package
the stack commands need.

The wheel is built offline; its dependencies are pinned to uv.lock and installed with uv, which
takes the wheels from its cache and asks PyPI only for the index pages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from relive.pipeline.seeds import derive_seed

REPO = Path(__file__).resolve().parent.parent


def uv() -> str:
    found = REPO / ".tools" / "uv" / "bin" / "uv"
    path = str(found) if found.exists() else shutil.which("uv")
    assert path, "uv is missing: `make setup` installs it under .tools/"
    return path


def run(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=check, timeout=600
    )


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sdk")
    run(uv(), "build", "--wheel", "--offline", "--out-dir", str(work), "clients/python")
    (wheel,) = work.glob("relive-*.whl")
    pins = work / "pins.txt"
    run(uv(), "export", "--frozen", "--no-dev", "--package", "relive", "--no-emit-workspace",
        "--no-hashes", "--no-header", "-q", "-o", str(pins))  # fmt: skip
    venv = work / "venv"
    run(uv(), "venv", "-q", "--python", sys.executable, str(venv))
    python = venv / "bin" / "python"
    run(uv(), "pip", "install", "-q", "--python", str(python), "-c", str(pins), str(wheel))
    return venv


def test_the_sdk_installs_without_relive_core_and_runs_a_component(sdk_venv: Path) -> None:
    python = sdk_venv / "bin" / "python"
    script = textwrap.dedent(
        """
        import importlib.metadata as md, importlib.util as iu, json
        from relive.pipeline import component
        from relive.pipeline.events import ListSink
        from relive.pipeline.models import MemoryModelStore
        from relive.pipeline.task import ComponentTask, execute

        @component
        def fit(ctx, scale=1.0):
            ctx.log_stat("loss", 0.25 * scale)
            return [ctx.rng.integers(0, 100) for _ in range(3)]

        sink = ListSink()
        task = ComponentTask(ion="ions/demo", run="ions/demo/runs/r1", node="train",
                             component="fit", call="__main__:fit", params={"scale": 2.0},
                             root_seed=7)
        result = execute(task, {}, sink=sink, store=MemoryModelStore())
        dists = sorted(d.metadata["Name"] for d in md.distributions())
        print(json.dumps({
            "value": [int(v) for v in result.value],
            "stats": result.stats,
            "types": [e.type for e in sink.events],
            "producers": sorted({e.producer_id for e in sink.events}),
            "relive": [d for d in dists if d.startswith("relive")],
            "core": iu.find_spec("relive.core") is not None,
        }))
        """
    )
    out = run(str(python), "-c", script, cwd=sdk_venv).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["relive"] == ["relive"] and got["core"] is False
    assert got["stats"]["loss"] == 0.5
    assert "component.started" in got["types"] and "component.finished" in got["types"]
    assert len(got["producers"]) == 1  # one producer identity for the component's events
    # Seeded: the same numbers as the workspace's SDK draws for the same task.
    rng = np.random.default_rng(derive_seed(7, "train", "fit", 0))
    assert got["value"] == [int(rng.integers(0, 100)) for _ in range(3)]


def test_relive_works_and_names_the_package_the_stack_needs(sdk_venv: Path) -> None:
    relive = sdk_venv / "bin" / "relive"
    help_text = run(str(relive), "--help", cwd=sdk_venv).stdout
    for command in ("ion", "events", "capture", "run", "up", "demo"):
        assert f"    {command}" in help_text
    up = run(str(relive), "up", "--data-dir", str(sdk_venv / "data"), cwd=sdk_venv, check=False)
    assert up.returncode == 1
    assert "pip install relive-stack" in up.stderr and "FAILED_PRECONDITION" in up.stderr
    assert not (sdk_venv / "data").exists()
