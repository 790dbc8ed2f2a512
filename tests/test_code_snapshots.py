"""Code snapshots: stored in the registry once per tree, served back byte for byte, kept per
project, and carried by a capture's export into another deployment's registry."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import MongoClient
from test_auth import NOT_FOUND, Deployment, code, create_ion, deployment  # noqa: F401
from test_recorder_support import T0, event, other_deployment
from test_recorder_support import create_ion as create_open_ion

from relive import errors
from relive.client.channel import connect_channel
from relive.client.recorder import RecorderClient
from relive.client.registry import RegistryClient
from relive.core.config import Config
from relive.core.serving import Server
from relive.recorder.v1 import event_pb2, recorder_pb2
from relive.registry.v1 import registry_pb2 as pb
from relive.registry.v1 import registry_pb2_grpc

TREE = {
    "steps.py": b"def fit(x):\n    return x * 2\n",
    "pkg/__init__.py": b"",
    "pkg/util.py": b"SEED = 7\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_snapshot(
    where: Path, tree: dict[str, bytes], *, mtime: float = 1_700_000_000.0
) -> tuple[pb.CodeSnapshot, Path]:
    """A real tar.gz of ``tree`` and its header; ``mtime`` changes the archive, not the tree."""
    root = where / f"tree-{sha(repr(sorted(tree.items())).encode())[:8]}-{int(mtime)}"
    for rel, data in tree.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    archive = root.with_suffix(".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for rel in sorted(tree):
            info = tar.gettarinfo(root / rel, arcname=rel)
            info.mtime = int(mtime)
            with (root / rel).open("rb") as f:
                tar.addfile(info, f)
    digest = hashlib.sha256()
    for rel in sorted(tree):
        digest.update(rel.encode() + b"\0" + bytes.fromhex(sha(tree[rel])))
    header = pb.CodeSnapshot(
        sha256=digest.hexdigest(),
        kind="files",
        archive_sha256=sha(archive.read_bytes()),
        file_count=len(tree),
        tree_bytes=sum(len(d) for d in tree.values()),
        files={rel: sha(d) for rel, d in tree.items()},
    )
    return header, archive


class Stored:
    """The registry's GridFS files and snapshot records, read with a plain find (the
    embedded store cannot count ``fs.files``)."""

    def __init__(self, mongo: MongoClient[dict[str, Any]], database: str) -> None:
        self.db = mongo[database]

    def counts(self) -> tuple[int, int, int]:
        files = len(list(self.db["models.files"].find({}, {"length": 1})))
        chunks = len(list(self.db["models.chunks"].find({}, {"n": 1})))
        records = len(list(self.db["code_snapshots"].find({})))
        return files, chunks, records


@pytest.fixture
def stored(config: Config) -> Iterator[Stored]:
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(config.mongodb_uri) as mongo:
        yield Stored(mongo, config.database("registry"))


@pytest.fixture
def client(registry_channel: grpc.Channel) -> RegistryClient:
    return RegistryClient(registry_channel)


# ---- the registry ---------------------------------------------------------------------------


def test_upload_get_download_round_trip(client: RegistryClient, tmp_path: Path) -> None:
    header, archive = make_snapshot(tmp_path, TREE)
    header.repo, header.commit, header.repo_path = "git@example.com:ml.git", "a1b2" * 10, "src"
    header.kind, header.dirty = "git", True
    made = client.create_code_snapshot(header, archive, chunk_size=100)
    assert made.name == f"codeSnapshots/{header.sha256}"
    assert made.archive_bytes == archive.stat().st_size
    assert made.archive_sha256 == header.archive_sha256
    assert dict(made.files) == dict(header.files) and made.file_count == 3
    assert (made.kind, made.repo, made.commit, made.repo_path, made.dirty) == (
        "git",
        "git@example.com:ml.git",
        "a1b2" * 10,
        "src",
        True,
    )
    assert made.create_time.seconds > 0
    assert client.get_code_snapshot(made.name) == made
    assert client.get_code_snapshot(header.sha256) == made  # the bare hash names it too

    out = tmp_path / "got" / "code.tar.gz"
    assert client.download_code_snapshot(made.name, out) == made
    assert out.read_bytes() == archive.read_bytes()
    with tarfile.open(out) as tar:
        assert tar.extractfile("pkg/util.py").read() == b"SEED = 7\n"  # type: ignore[union-attr]
    assert sorted(p.name for p in out.parent.iterdir()) == ["code.tar.gz"]


def test_download_streams_in_chunks_of_one_mib(
    client: RegistryClient, registry_channel: grpc.Channel, tmp_path: Path
) -> None:
    header, archive = make_snapshot(tmp_path, {"noise.bin": os.urandom(3 * 1024 * 1024)})
    client.create_code_snapshot(header, archive)
    stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)
    replies = list(
        stub.DownloadCodeSnapshot(
            pb.DownloadCodeSnapshotRequest(name=f"codeSnapshots/{header.sha256}")
        )
    )
    assert replies[0].WhichOneof("payload") == "code_snapshot"
    sizes = [len(r.chunk) for r in replies[1:]]
    assert len(sizes) >= 2 and set(sizes[:-1]) == {1024 * 1024}
    assert b"".join(r.chunk for r in replies[1:]) == archive.read_bytes()


def test_the_same_tree_is_stored_once(
    client: RegistryClient, stored: Stored, tmp_path: Path
) -> None:
    header, archive = make_snapshot(tmp_path, TREE)
    first = client.create_code_snapshot(header, archive)
    before = stored.counts()
    assert before[0] == 1 and before[2] == 1
    # The same tree again, even packed into another archive (another mtime): the stored one.
    again_header, again_archive = make_snapshot(tmp_path, TREE, mtime=1_800_000_000.0)
    assert again_header.sha256 == header.sha256
    assert again_header.archive_sha256 != header.archive_sha256
    assert client.create_code_snapshot(again_header, again_archive) == first
    assert client.create_code_snapshot(header, archive) == first
    assert stored.counts() == before
    # Another tree whose archive has the same bytes: a record of its own, the bytes once.
    other = pb.CodeSnapshot()
    other.CopyFrom(header)
    other.sha256 = "f" * 64
    assert client.create_code_snapshot(other, archive).name == f"codeSnapshots/{'f' * 64}"
    files, chunks, records = stored.counts()
    assert (files, chunks, records) == (before[0], before[1], 2)


def test_a_wrong_archive_sha256_stores_nothing(
    client: RegistryClient, stored: Stored, tmp_path: Path
) -> None:
    header, archive = make_snapshot(tmp_path, TREE)
    header.archive_sha256 = "0" * 64
    with pytest.raises(errors.InvalidArgument) as e:
        client.create_code_snapshot(header, archive, chunk_size=64)
    assert e.value.field == "header.archive_sha256"
    assert stored.counts() == (0, 0, 0)
    with pytest.raises(errors.NotFound):
        client.get_code_snapshot(header.sha256)
    # An empty archive_sha256 is filled in by the client from the file, and an unset
    # file_count by the registry from the files.
    header.archive_sha256 = ""
    header.file_count = 0
    made = client.create_code_snapshot(header, archive)
    assert made.archive_sha256 == sha(archive.read_bytes())
    assert made.file_count == len(TREE)


def _changed(header: pb.CodeSnapshot, **changes: Any) -> pb.CodeSnapshot:
    bad = pb.CodeSnapshot()
    bad.CopyFrom(header)
    for key, value in changes.items():
        if key == "files":
            bad.files.clear()
            bad.files.update(value)
        else:
            setattr(bad, key, value)
    return bad


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sha256": "ABCD" * 16}, "header.sha256"),
        ({"sha256": "abc"}, "header.sha256"),
        ({"sha256": ""}, "header.sha256"),
        ({"kind": "svn"}, "header.kind"),
        ({"kind": ""}, "header.kind"),
        ({"archive_sha256": "xyz"}, "header.archive_sha256"),
        ({"files": {"../outside.py": "a" * 64}}, "header.files"),
        ({"files": {"/etc/passwd": "a" * 64}}, "header.files"),
        ({"files": {"a//b.py": "a" * 64}}, "header.files"),
        ({"files": {"x" * 5000: "a" * 64}}, "header.files"),
        ({"files": {"ok.py": "not a hash"}}, "header.files[ok.py]"),
        ({"file_count": 7}, "header.file_count"),
        ({"tree_bytes": -1}, "header.tree_bytes"),
        ({"commit": "c" * 5000}, "header.commit"),
        ({"repo_path": "../up"}, "header.repo_path"),
        ({"name": "codeSnapshots/" + "e" * 64}, "header.name"),
    ],
)
def test_bad_headers_are_refused_naming_the_field(
    client: RegistryClient, stored: Stored, tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    header, archive = make_snapshot(tmp_path, TREE)
    with pytest.raises(errors.InvalidArgument) as e:
        client.create_code_snapshot(_changed(header, **changes), archive)
    assert e.value.field == field, e.value.message
    assert stored.counts() == (0, 0, 0)


def test_too_many_files_are_refused(client: RegistryClient, tmp_path: Path) -> None:
    header, archive = make_snapshot(tmp_path, TREE)
    many = {f"f{i}.py": "a" * 64 for i in range(100_001)}
    with pytest.raises(errors.InvalidArgument) as e:
        client.create_code_snapshot(_changed(header, files=many, file_count=len(many)), archive)
    assert e.value.field == "header.files" and "100000" in e.value.message


def test_the_header_comes_first_and_once(registry_channel: grpc.Channel, stored: Stored) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)
    header = pb.CodeSnapshot(sha256="a" * 64, kind="files", archive_sha256=sha(b"abc"))
    for messages in (
        [pb.CreateCodeSnapshotRequest(chunk=b"abc")],
        [],
        [
            pb.CreateCodeSnapshotRequest(header=header),
            pb.CreateCodeSnapshotRequest(chunk=b"abc"),
            pb.CreateCodeSnapshotRequest(header=header),
        ],
    ):
        with pytest.raises(grpc.RpcError) as e:
            stub.CreateCodeSnapshot(iter(messages))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored.counts() == (0, 0, 0)


def test_an_archive_over_the_limit_is_refused_naming_the_setting(
    config: Config, tmp_path: Path
) -> None:
    from relive.registry.server import create_server

    server, port = create_server(config.with_(max_code_snapshot_bytes=1000))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = RegistryClient(channel)
            header, archive = make_snapshot(tmp_path, {"big.bin": os.urandom(2000)})
            assert archive.stat().st_size > 1000
            with pytest.raises(errors.ResourceExhausted) as e:
                client.create_code_snapshot(header, archive, chunk_size=300)
            assert "RELIVE_MAX_CODE_SNAPSHOT_BYTES" in e.value.message
            assert e.value.metadata["setting"] == "RELIVE_MAX_CODE_SNAPSHOT_BYTES"
            mongo: MongoClient[dict[str, Any]]
            with MongoClient(config.mongodb_uri) as mongo:
                assert Stored(mongo, config.database("registry")).counts() == (0, 0, 0)
            small_header, small = make_snapshot(tmp_path, {"a.py": b"x = 1\n"})
            assert client.create_code_snapshot(small_header, small).archive_bytes < 1000
    finally:
        server.stop(0.5)


def test_missing_and_malformed_names(client: RegistryClient, tmp_path: Path) -> None:
    missing = "codeSnapshots/" + "0" * 64
    with pytest.raises(errors.NotFound) as e:
        client.get_code_snapshot(missing)
    assert e.value.field == "name" and missing in e.value.message
    out = tmp_path / "dl" / "x.tar.gz"
    with pytest.raises(errors.NotFound):
        client.download_code_snapshot(missing, out)
    assert list(out.parent.iterdir()) == []  # no partial file, no temp file
    for bad in ("codeSnapshots/xyz", "codeSnapshots/" + "A" * 64, "models/m", "codeSnapshots/"):
        with pytest.raises(errors.InvalidArgument) as e2:
            client.get_code_snapshot(bad)
        assert e2.value.field == "name"


def test_a_revision_keeps_its_code_refs_snapshot_fields(client: RegistryClient) -> None:
    ref = pb.CodeRef(
        module="examples.churn.steps",
        repo="/src/ml",
        path="examples/churn/steps.py",
        commit="c" * 40,
        dirty=True,
        tree_sha256="d" * 64,
        snapshot=f"codeSnapshots/{'d' * 64}",
        root="/src/ml",
        file_sha256="e" * 64,
    )
    text = "name: refs\nnodes:\n  t:\n    pipeline:\n      components:\n"
    text += "        load: {call: examples.churn.steps:load}\n"
    client.create_ion("refs", text, code_refs=[ref])
    assert list(client.get_revision("refs", 1).code_refs) == [ref]
    with pytest.raises(errors.InvalidArgument) as e:
        client.create_revision(
            "refs", text + "# changed\n", code_refs=[pb.CodeRef(root="r" * 5000)]
        )
    assert e.value.field == "code_refs[0].root"


# ---- projects -------------------------------------------------------------------------------


def test_another_projects_snapshot_is_not_found(
    deployment: Deployment,  # noqa: F811
    auth_config: Config,
    tmp_path: Path,
) -> None:
    target = f"127.0.0.1:{deployment.registry.port}"
    channels: list[grpc.Channel] = []

    def as_(token: str, project: str | None = None) -> RegistryClient:
        channel = connect_channel(target, token=token, project=project, environ={})
        channels.append(channel)
        return RegistryClient(channel)

    try:
        alice, carol, bob = as_("tok-alice"), as_("tok-carol"), as_("tok-bob")
        header, archive = make_snapshot(tmp_path, TREE)
        mine = alice.create_code_snapshot(header, archive)
        for who in (bob, as_("tok-svc", "fraud")):
            with pytest.raises(errors.NotFound) as e:
                who.get_code_snapshot(mine.name)
            assert e.value.message == f"code snapshot {mine.name} not found"
            with pytest.raises(errors.NotFound):
                who.download_code_snapshot(mine.name, tmp_path / "stolen.tar.gz")
        assert not (tmp_path / "stolen.tar.gz").exists()
        assert carol.get_code_snapshot(mine.name) == mine  # the same project
        assert as_("tok-svc", "churn").get_code_snapshot(mine.name) == mine
        assert as_("tok-svc").get_code_snapshot(mine.name).sha256 == mine.sha256

        # bob storing the same tree makes his project's own record; the bytes stay one copy.
        time.sleep(0.01)
        his = bob.create_code_snapshot(header, archive)
        assert his.name == mine.name and his.create_time != mine.create_time
        assert alice.get_code_snapshot(mine.name) == mine
        assert bob.get_code_snapshot(mine.name) == his
        # The service token stores for the project it works for.
        svc_header, svc_archive = make_snapshot(tmp_path, {"svc.py": b"pass\n"})
        for_churn = as_("tok-svc", "churn").create_code_snapshot(svc_header, svc_archive)
        assert alice.get_code_snapshot(for_churn.name) == for_churn
        with pytest.raises(errors.NotFound):
            bob.get_code_snapshot(for_churn.name)
        mongo: MongoClient[dict[str, Any]]
        with MongoClient(auth_config.mongodb_uri) as mongo:
            assert Stored(mongo, auth_config.database("registry")).counts()[::2] == (2, 3)
    finally:
        for channel in channels:
            channel.close()


def launched(ms: int, run: str, snapshots: list[str]) -> event_pb2.Event:
    """A ``run.launched`` event as the executor writes it: the launch spec in the details."""
    e = event(ms, type="run.launched", run=run)
    e.lifecycle.state = "PENDING"
    refs = [{"module": f"m{i}", "snapshot": s} for i, s in enumerate(snapshots)]
    e.lifecycle.details.update({"spec": {"revision": "ions/demo/revisions/1", "code_refs": refs}})
    return e


def test_an_export_never_takes_another_projects_code(
    deployment: Deployment,  # noqa: F811
    tmp_path: Path,
) -> None:
    """alice's run names a snapshot only bob's project holds: her export refuses, naming it."""
    target = f"127.0.0.1:{deployment.registry.port}"
    with connect_channel(target, token="tok-bob", environ={}) as channel:
        header, archive = make_snapshot(tmp_path, TREE)
        theirs = RegistryClient(channel).create_code_snapshot(header, archive)
    create_ion(deployment.alice, "churn-a")
    deployment.alice.recorder.AppendEvents(
        recorder_pb2.AppendEventsRequest(
            parent="ions/churn-a", events=[launched(T0 + 1, "ions/churn-a/runs/r1", [theirs.name])]
        )
    )
    cap = recorder_pb2.Capture()
    cap.start_time.FromMilliseconds(T0)
    cap.end_time.FromMilliseconds(T0 + 100)
    deployment.alice.recorder.CreateCapture(
        recorder_pb2.CreateCaptureRequest(parent="ions/churn-a", capture_id="c", capture=cap)
    )
    request = recorder_pb2.ExportCaptureRequest(name="ions/churn-a/captures/c")
    with pytest.raises(grpc.RpcError) as e:
        list(deployment.alice.recorder.ExportCapture(request))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert theirs.name in (e.value.details() or "")


# ---- export and import ----------------------------------------------------------------------


@pytest.fixture
def recorder(recorder_server: Server, registry_channel: grpc.Channel) -> RecorderClient:
    create_open_ion(registry_channel, "demo")
    return RecorderClient(f"127.0.0.1:{recorder_server.port}")


def test_an_export_carries_the_code_its_runs_ran_into_another_deployment(
    recorder: RecorderClient, client: RegistryClient, config: Config, tmp_path: Path
) -> None:
    header, archive = make_snapshot(tmp_path, TREE)
    snap = client.create_code_snapshot(header, archive)
    second_header, second_archive = make_snapshot(tmp_path, {"other.py": b"print(1)\n"})
    second = client.create_code_snapshot(second_header, second_archive)
    recorder.append(
        "demo",
        [
            # Two runs share one snapshot; one names it twice; an older run names none.
            launched(T0 + 1, "ions/demo/runs/r1", [snap.name, snap.name]),
            launched(T0 + 2, "ions/demo/runs/r2", [second.name, snap.name]),
            launched(T0 + 3, "ions/demo/runs/old", []),
            event(T0 + 4, run="ions/demo/runs/r1", value=0.5),
        ],
    )
    recorder.create_capture("demo", "inc", T0, T0 + 1000)
    path = tmp_path / "inc.tar.gz"
    stages: list[str] = []
    recorder.export_capture(
        "ions/demo/captures/inc", path, progress=lambda p: stages.append(p.stage)
    )
    assert "code" in stages and stages[-1] == "done"

    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
        capture = json.loads(tar.extractfile("capture.json").read())  # type: ignore[union-attr]
        carried = {n: tar.extractfile(n).read() for n in names if n.startswith("code/")}  # type: ignore[union-attr]
    assert set(carried) == {
        f"code/{snap.sha256}.tar.gz",
        f"code/{snap.sha256}.json",
        f"code/{second.sha256}.tar.gz",
        f"code/{second.sha256}.json",
    }
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    for name, data in carried.items():
        assert manifest["files"][name] == {"sha256": sha(data), "bytes": len(data)}
    assert carried[f"code/{snap.sha256}.tar.gz"] == archive.read_bytes()
    meta = json.loads(carried[f"code/{snap.sha256}.json"])
    assert meta["name"] == snap.name and meta["archive_sha256"] == snap.archive_sha256
    assert meta["files"] == dict(snap.files)
    assert capture["code_snapshots"] == sorted([snap.name, second.name])

    with (
        other_deployment(config, tmp_path) as other,
        grpc.insecure_channel(other.registry_target) as channel,
    ):
        there = RegistryClient(channel)
        with pytest.raises(errors.NotFound):
            there.get_code_snapshot(snap.name)
        far = RecorderClient(other.recorder_target)
        assert far.import_capture(path).events_imported == 4
        restored = there.get_code_snapshot(snap.name)
        assert restored.archive_sha256 == snap.archive_sha256
        assert dict(restored.files) == dict(snap.files)
        got = tmp_path / "there.tar.gz"
        there.download_code_snapshot(snap.name, got)
        assert got.read_bytes() == archive.read_bytes()
        there.download_code_snapshot(second.name, got)
        assert got.read_bytes() == second_archive.read_bytes()
        # A second import stores no snapshot again.
        mongo: MongoClient[dict[str, Any]]
        with MongoClient(config.mongodb_uri) as mongo:
            far_store = Stored(mongo, other.config.database("registry"))
            before = far_store.counts()
            assert before[::2] == (2, 2)
            again = far.import_capture(path, capture_id="inc-2")
            assert again.events_already_present == 4
            assert far_store.counts() == before
            assert there.get_code_snapshot(snap.name) == restored


def test_an_export_refuses_a_snapshot_the_registry_lacks(
    recorder: RecorderClient, tmp_path: Path
) -> None:
    missing = "codeSnapshots/" + "9" * 64
    recorder.append("demo", [launched(T0 + 1, "ions/demo/runs/r1", [missing])])
    recorder.create_capture("demo", "c", T0, T0 + 10)
    path = tmp_path / "c.tar.gz"
    with pytest.raises(errors.FailedPrecondition) as e:
        recorder.export_capture("ions/demo/captures/c", path)
    assert missing in e.value.message and "ions/demo/runs/r1" in e.value.message
    assert e.value.reason == "CODE_SNAPSHOT_MISSING"
    assert e.value.metadata["snapshot"] == missing
    assert not path.exists() and not path.with_name(path.name + ".part").exists()


def test_an_import_with_a_broken_snapshot_writes_nothing(
    recorder: RecorderClient, client: RegistryClient, config: Config, tmp_path: Path
) -> None:
    """A snapshot whose metadata names another tree stops the import before its events."""
    header, archive = make_snapshot(tmp_path, TREE)
    snap = client.create_code_snapshot(header, archive)
    recorder.append("demo", [launched(T0 + 1, "ions/demo/runs/r1", [snap.name])])
    recorder.create_capture("demo", "c", T0, T0 + 10)
    path = recorder.export_capture("ions/demo/captures/c", tmp_path / "c.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    meta_name = f"code/{snap.sha256}.json"
    with tarfile.open(path) as src:
        members = {m.name: src.extractfile(m).read() for m in src if m.isfile()}  # type: ignore[union-attr]
    meta = json.loads(members[meta_name])
    meta["sha256"] = "1" * 64
    members[meta_name] = json.dumps(meta).encode()
    manifest = json.loads(members["MANIFEST.json"])
    manifest["files"][meta_name] = {"sha256": sha(members[meta_name]), "bytes": 0}
    members["MANIFEST.json"] = json.dumps(manifest).encode()
    with tarfile.open(bad, "w:gz") as dst:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    with other_deployment(config, tmp_path) as other:
        far = RecorderClient(other.recorder_target)
        with pytest.raises(errors.InvalidArgument) as e:
            far.import_capture(bad)
        assert meta_name in e.value.message
        with (
            grpc.insecure_channel(other.registry_target) as channel,
            pytest.raises(errors.NotFound),
        ):
            RegistryClient(channel).get_ion("demo")
