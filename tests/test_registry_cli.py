"""The registry through its users' doors: RegistryClient.register, `relive ion`, reflection."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from relive.cli.main import main
from relive.client.registry import RegistryClient
from relive.core.config import Config
from relive.core.serving import Server
from relive.errors import InvalidArgument
from relive.registry.server import create_server

REPO = Path(__file__).resolve().parent.parent
CHURN = REPO / "examples" / "churn" / "ion.yaml"
BUF = REPO / "node_modules" / ".bin" / "buf"

ION = """\
name: {name}
nodes:
  train:
    pipeline:
      components:
        fit: {{call: mypkg.steps:fit, params: {{C: {c}}}}}
      outputs: {{model: fit}}
"""


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture
def code_repo(tmp_path: Path) -> Path:
    """A git repository holding a package the ION's component calls."""
    repo = tmp_path / "project"
    (repo / "mypkg").mkdir(parents=True)
    (repo / "mypkg" / "__init__.py").write_text("")
    (repo / "mypkg" / "steps.py").write_text("def fit(ctx, **params):\n    return params\n")
    (repo / "ion.yaml").write_text(ION.format(name="proj", c=1.0))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    return repo


@pytest.fixture
def project_server(config: Config, code_repo: Path) -> Iterator[Server]:
    """A registry whose code path is the project repository."""
    server, _ = create_server(config.with_(code_path=(str(code_repo),)))
    server.start()
    yield server
    server.stop(0.5)


@pytest.fixture
def project_client(project_server: Server) -> Iterator[RegistryClient]:
    with grpc.insecure_channel(f"127.0.0.1:{project_server.port}") as channel:
        yield RegistryClient(channel)


def test_register_creates_then_revises_with_code_refs(
    project_client: RegistryClient, code_repo: Path
) -> None:
    head = git(code_repo, "rev-parse", "HEAD")
    first = project_client.register(code_repo / "ion.yaml")
    assert first.created and first.new_revision
    assert first.ion.name == "ions/proj"
    assert first.revision.revision_id == 1
    [ref] = first.revision.code_refs
    assert ref.module == "mypkg.steps"
    assert ref.path == "mypkg/steps.py"
    assert ref.commit == head
    assert not ref.dirty
    # No remote: the repository's own path stands in for its URL.
    assert Path(ref.repo).resolve() == code_repo.resolve()

    unchanged = project_client.register(code_repo / "ion.yaml")
    assert not unchanged.created and not unchanged.new_revision
    assert unchanged.revision.revision_id == 1

    # Edit the code without committing, point at a remote, and change the definition.
    (code_repo / "mypkg" / "steps.py").write_text("def fit(ctx, **params):\n    return 2\n")
    git(code_repo, "remote", "add", "origin", "https://example.com/team/project.git")
    (code_repo / "ion.yaml").write_text(ION.format(name="proj", c=2.0))
    second = project_client.register(code_repo / "ion.yaml")
    assert not second.created and second.new_revision
    assert second.revision.revision_id == 2
    assert second.ion.latest_revision == 2
    [ref] = second.revision.code_refs
    assert ref.dirty
    assert ref.repo == "https://example.com/team/project.git"
    assert ref.commit == head
    # The older revision keeps the refs it was registered with.
    assert not project_client.get_revision("proj", 1).code_refs[0].dirty
    assert [r.revision_id for r in project_client.list_revisions("proj")] == [2, 1]


def test_register_a_file_outside_git_has_no_code_refs(
    registry_channel: grpc.Channel, tmp_path: Path
) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        "nodes:\n  n:\n    pipeline:\n      components:\n        c: {command: [echo, hi]}\n"
    )
    done = RegistryClient(registry_channel).register(path)
    assert done.ion.name == "ions/plain"  # no name in the file: the file's stem
    assert list(done.revision.code_refs) == []


def test_register_reports_the_line_of_an_error(
    registry_channel: grpc.Channel, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        CHURN.read_text().replace("examples.churn.steps:fit", "examples.churn.steps:fitt")
    )
    with pytest.raises(InvalidArgument) as e:
        RegistryClient(registry_channel).register(path)
    assert e.value.field == "nodes.train.pipeline.components.fit.call"
    assert e.value.message.startswith(f"{path}:11: node 'train'")


def test_client_lists_every_page(registry_channel: grpc.Channel) -> None:
    client = RegistryClient(registry_channel)
    text = CHURN.read_text()
    for i in range(7):
        client.create_ion(f"c{i}", text.replace("name: churn", f"name: c{i}"))
    assert [i.name for i in client.list_ions(page_size=2)] == [f"ions/c{i}" for i in range(7)]
    client.delete_ion("c3")
    assert len(list(client.list_ions())) == 6


@pytest.fixture
def cli_env(registry_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"127.0.0.1:{registry_server.port}"
    monkeypatch.delenv("RELIVE_ENDPOINT", raising=False)
    monkeypatch.delenv("RELIVE_TOKEN", raising=False)
    monkeypatch.setenv("RELIVE_REGISTRY_ENDPOINT", endpoint)
    monkeypatch.setenv("RELIVE_RECORDER_ENDPOINT", "127.0.0.1:1")
    monkeypatch.setenv("RELIVE_EXECUTOR_ENDPOINT", "127.0.0.1:1")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.usefixtures("cli_env")
def test_cli_register_list_show_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    code, out = run_json(capsys, "ion", "register", str(CHURN))
    assert code == 0
    assert out["created"] is True
    assert out["ion"]["name"] == "ions/churn"
    assert out["revision"]["revision_id"] == "1"  # int64 is a string in proto JSON
    assert out["revision"]["definition"]["nodes"]["approve"]["policy"]["type"] == (
        "POLICY_TYPE_APPROVAL"
    )
    [ref] = out["revision"]["code_refs"]
    assert ref["module"] == "examples.churn.steps"
    assert ref["path"] == "examples/churn/steps.py"
    assert len(ref["commit"]) == 40

    changed = tmp_path / "ion.yaml"
    changed.write_text(CHURN.read_text().replace("every_launches: 3", "every_launches: 2"))
    code, out = run_json(capsys, "ion", "register", str(changed))
    assert code == 0
    assert (out["created"], out["new_revision"]) == (False, True)
    assert out["revision"]["revision_id"] == "2"

    code, out = run_json(capsys, "ion", "list")
    assert code == 0
    assert [(i["name"], i["latest_revision"]) for i in out["ions"]] == [("ions/churn", "2")]

    code, out = run_json(capsys, "ion", "show", "churn")
    assert code == 0
    assert out["revision"]["name"] == "ions/churn/revisions/2"
    assert out["revision"]["definition"]["nodes"]["train"]["schedule"]["every_launches"] == 2

    code, out = run_json(capsys, "ion", "show", "churn", "--revision", "1")
    assert code == 0
    assert out["revision"]["definition"]["nodes"]["train"]["schedule"]["every_launches"] == 3


@pytest.mark.usefixtures("cli_env")
def test_cli_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ion", "register", str(CHURN)]) == 0
    assert "created ions/churn at revision 1" in capsys.readouterr().out
    assert main(["ion", "register", str(CHURN)]) == 0
    assert "unchanged, still revision 1" in capsys.readouterr().out
    assert main(["ion", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ION", "REVISION", "RETENTION_DAYS", "UPDATED"]
    assert lines[1].split()[:3] == ["churn", "1", "7"]
    assert main(["ion", "show", "ions/churn"]) == 0
    shown = capsys.readouterr().out
    assert "approve: policy approval" in shown
    assert "train -> approve (model)" in shown


@pytest.mark.usefixtures("cli_env")
def test_cli_errors_name_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "churn.yaml"
    bad.write_text("name: churn\nnodes:\n  train:\n    pipeline: x: y\n")
    code, out = run_json(capsys, "ion", "register", str(bad))
    assert code == 1
    assert out["error"]["code"] == "INVALID_ARGUMENT"
    assert out["error"]["field"] == "definition_yaml"
    assert out["error"]["message"].startswith(f"{bad}:4:")

    code, out = run_json(capsys, "ion", "show", "ghost")
    assert code == 1
    assert out["error"]["code"] == "NOT_FOUND"

    assert main(["ion", "show", "Bad_Name"]) == 1
    assert "field: name" in capsys.readouterr().err


@pytest.mark.skipif(not BUF.exists(), reason="node_modules/.bin/buf is not installed (npm ci)")
def test_reflection_lists_the_services(registry_server: Server) -> None:
    url = f"http://127.0.0.1:{registry_server.port}"
    out = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    methods = set(out.stdout.split())
    for method in ("CreateIon", "ListIons", "CreateModelVersion", "DownloadModelVersion"):
        assert f"relive.registry.v1.RegistryService/{method}" in methods
    assert "grpc.health.v1.Health/Check" in methods

    # And a real call, described by reflection alone.
    listed = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            '{"page_size": 5}',
            f"{url}/relive.registry.v1.RegistryService/ListIons",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(listed.stdout or "{}") == {}


@pytest.mark.parametrize(
    "path", sorted(REPO.glob("examples/*/ion.yaml")), ids=lambda p: p.parent.name
)
def test_every_example_registers(registry_channel: grpc.Channel, path: Path) -> None:
    done = RegistryClient(registry_channel).register(path)
    assert done.created
    assert done.revision.definition.nodes
