"""Why a relaunch diverged: what differs between two launch specs' recorded inputs (code,
datasets, environment, params, seed), and the likeliest cause named for each node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from relive.executor import inputs
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.verify import verify
from relive.registry.v1 import registry_pb2
from tests.unit.memory_policy_context import ion

STEPS = "examples.patterns.steps"
DEFINITION = ion(f"""\
name: test
nodes:
  train:
    pipeline:
      components:
        load: {{call: {STEPS}:load, params: {{dataset: iris}}}}
        fit: {{call: {STEPS}:fit, after: [load], params: {{model: forest, n_estimators: 5}}}}
      outputs: {{model: fit}}
  gate:
    policy: approval
    params: {{timeout_s: 60}}
  report:
    pipeline:
      components:
        write: {{command: [python, /code/tools/report.py, --fast]}}
edges:
  - {{from: train, to: gate}}
""")


def ref(module: str, tree: str, commit: str, *, dirty: bool = False) -> registry_pb2.CodeRef:
    return registry_pb2.CodeRef(
        module=module,
        commit=commit,
        dirty=dirty,
        tree_sha256=tree,
        snapshot=f"codeSnapshots/{tree}",
        root="/code",
    )


def spec(
    *,
    code_refs: list[registry_pb2.CodeRef] | None = None,
    seed: int = 42,
    params: dict[str, dict[str, Any]] | None = None,
    packages: dict[str, str] | None = None,
) -> pb.LaunchSpec:
    """The original's spec, or with the given inputs changed."""
    s = pb.LaunchSpec(definition=DEFINITION, seed=seed)
    s.code_refs.extend(
        code_refs
        or [ref(STEPS, "t" * 64, "a1b2c3d4e5"), ref("tools/report.py", "t" * 64, "a1b2c3d4e5")]
    )
    s.dataset_refs.add(uri="sklearn://iris", sha256="d" * 64)
    s.environment.CopyFrom(
        pb.Environment(
            python_version="3.11.7",
            platform="Linux",
            ray_version="2.60.0",
            packages={"numpy": "2.0.0", "scikit-learn": "1.5.0", **(packages or {})},
        )
    )
    values: dict[str, dict[str, Any]] = {
        "train.load": {"dataset": "iris"},
        "train.fit": {"model": "forest", "n_estimators": 5},
        "gate": {"timeout_s": 60},
        "report.write": {},
    }
    for key, changed in (params or {}).items():
        values[key] = {**values[key], **changed}
    for key, given in values.items():
        st = struct_pb2.Struct()
        st.update(given)
        s.params[key].CopyFrom(st)
    return s


def snapshot(tree: str, files: dict[str, str]) -> registry_pb2.CodeSnapshot:
    return registry_pb2.CodeSnapshot(name=f"codeSnapshots/{tree}", sha256=tree, files=files)


def test_identical_specs_have_no_differences_and_no_causes() -> None:
    assert inputs.differences(spec(), spec()) == []
    assert inputs.likely_causes(spec(), []) == {}


def test_changed_code_names_the_module_the_commits_and_the_files() -> None:
    new = [ref(STEPS, "u" * 64, "c3d4e5f6a7"), ref("tools/report.py", "t" * 64, "a1b2c3d4e5")]
    snapshots = {
        f"codeSnapshots/{'t' * 64}": snapshot("t" * 64, {"examples/patterns/steps.py": "1"}),
        f"codeSnapshots/{'u' * 64}": snapshot("u" * 64, {"examples/patterns/steps.py": "2"}),
    }
    [d] = inputs.differences(spec(), spec(code_refs=new), snapshots)
    assert (d.kind, d.key, d.original, d.relaunch) == ("code", STEPS, "t" * 64, "u" * 64)
    assert d.detail == (
        f"code of module {STEPS} changed: commit a1b2c3d → c3d4e5f, 1 file changed "
        "(examples/patterns/steps.py)"
    )
    causes = inputs.likely_causes(spec(), [d])
    assert causes["train"] == d.detail
    # The approval gate ran no code of its own: its cause is what fed it.
    assert causes["gate"] == f"{d.detail} (upstream, in node train)"
    assert "report" not in causes  # its script did not change, and nothing feeds it


def test_uncommitted_changes_on_the_same_commit_are_named_as_such() -> None:
    a = [ref(STEPS, "t" * 64, "a1b2c3d4e5", dirty=True)]
    b = [ref(STEPS, "u" * 64, "a1b2c3d4e5", dirty=True)]
    [d] = inputs.differences(spec(code_refs=a), spec(code_refs=b))
    assert d.detail == f"code of module {STEPS} changed: uncommitted changes on commit a1b2c3d"


def test_a_command_components_script_is_its_code() -> None:
    new = [ref(STEPS, "t" * 64, "a1b2c3d4e5"), ref("tools/report.py", "v" * 64, "a1b2c3d4e5")]
    [d] = inputs.differences(spec(), spec(code_refs=new))
    assert d.key == "tools/report.py"
    assert inputs.likely_causes(spec(), [d]) == {"report": d.detail}
    write = DEFINITION.nodes["report"].pipeline.components["write"]
    found = inputs.ref_for(write, new)
    assert found is not None and found.module == "tools/report.py"
    assert inputs.command_in_snapshot(write.command, found) == (
        "python",
        "tools/report.py",
        "--fast",
    )


def test_datasets_params_seed_and_environment_each_differ_on_their_own() -> None:
    changed = spec(
        seed=43,
        params={"train.fit": {"n_estimators": 9}},
        packages={"numpy": "2.1.0", "pandas": "2.2.0"},
    )
    changed.dataset_refs[0].sha256 = "e" * 64
    changed.environment.python_version = "3.12.1"
    found = inputs.differences(spec(), changed)
    by = {(d.kind, d.key): d for d in found}
    assert by[("dataset", "sklearn://iris")].detail == (
        f"dataset sklearn://iris changed: sha256 {'d' * 12} → {'e' * 12}"
    )
    assert by[("params", "train.fit")].detail == "params of train.fit changed: n_estimators 5 → 9"
    assert by[("seed", "seed")].detail == "seed changed: 42 → 43"
    assert by[("environment", "python")].detail == "environment changed: python 3.11.7 → 3.12.1"
    assert by[("environment", "numpy")].relaunch == "2.1.0"
    assert by[("environment", "pandas")].detail == "environment changed: package pandas — → 2.2.0"
    causes = inputs.likely_causes(spec(), found)
    # train reads the dataset first; the gate only what train fed it; report nothing of its own.
    assert causes["train"] == by[("dataset", "sklearn://iris")].detail
    assert causes["gate"].endswith("(upstream, in node train)")
    assert causes["report"] == "seed changed: 42 → 43"


def test_the_environment_is_the_last_resort() -> None:
    changed = spec(packages={"numpy": "2.1.0", "scipy": "1.14.0"})
    found = inputs.differences(spec(), changed)
    causes = inputs.likely_causes(spec(), found)
    assert causes["report"] == "environment changed: package numpy 2.0.0 → 2.1.0 (and 1 more)"


def test_verification_carries_the_differences_and_each_mismatchs_cause() -> None:
    from tests.unit.test_verify import Run

    a, b = Run("a").trained("s1", 0.9), Run("b").trained("s2", 0.9)
    new = [ref(STEPS, "u" * 64, "c3d4e5f6a7")]
    found = inputs.differences(spec(), spec(code_refs=new))
    causes = inputs.likely_causes(spec(), found)
    v = verify("a", "b", ["train", "report"], a.events, b.events, 1e-9, None, found, causes)
    assert v.status == pb.VERIFICATION_STATUS_MISMATCH
    assert [d.key for d in v.differences] == [STEPS, "tools/report.py"]
    train, report = v.nodes
    assert train.likely_cause.startswith(f"code of module {STEPS} changed: commit a1b2c3d")
    assert report.status == pb.VERIFICATION_STATUS_MATCH and not report.likely_cause


def test_a_commands_installed_dependencies_are_found_where_node_looks(tmp_path: Path) -> None:
    from relive.executor.code import installed_dependencies

    root = tmp_path / "code"
    (root / "clients" / "node" / "node_modules").mkdir(parents=True)
    (root / "node_modules").mkdir()
    (root / "clients" / "other" / "node_modules").mkdir(parents=True)  # not on the way up
    script = registry_pb2.CodeRef(module="clients/node/examples/score.js", root=str(root))
    assert installed_dependencies(script, []) == {
        "node_modules": str(root / "node_modules"),
        "clients/node/node_modules": str(root / "clients" / "node" / "node_modules"),
    }
    # The recorded root is gone: the code path's copy of the tree is used.
    moved = tmp_path / "moved"
    root.rename(moved)
    assert installed_dependencies(script, [str(moved)])["node_modules"] == str(
        moved / "node_modules"
    )
    assert installed_dependencies(script, []) == {}
