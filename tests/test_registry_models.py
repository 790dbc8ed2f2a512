"""Model versions: chunked upload and download through GridFS, dedup by sha256, lineage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import MongoClient

from relive.client.registry import RegistryClient
from relive.core.config import Config
from relive.errors import AlreadyExists, InvalidArgument, NotFound
from relive.registry.v1 import registry_pb2 as pb
from relive.registry.v1 import registry_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(registry_channel: grpc.Channel) -> RegistryClient:
    return RegistryClient(registry_channel)


@pytest.fixture
def stub(registry_channel: grpc.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(registry_channel)


@pytest.fixture
def files(config: Config) -> Iterator[Any]:
    """The registry's GridFS files collection, read with a plain find."""
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(config.mongodb_uri) as mongo:
        yield mongo[config.database("registry")]["models.files"]


def test_upload_download_with_lineage(client: RegistryClient, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    mv = client.upload_model(
        "churn-model",
        data,
        producing_run="ions/churn/runs/r1",
        producing_node="train",
        dataset_refs=[pb.DatasetRef(uri="sklearn://breast_cancer", sha256="a" * 64, size_bytes=9)],
        labels={"framework": "sklearn", "accuracy": "0.95"},
        chunk_size=256 * 1024,
    )
    assert mv.name == "models/churn-model/versions/1"
    assert mv.version_id == 1
    assert mv.sha256 == hashlib.sha256(data).hexdigest()
    assert mv.size_bytes == len(data)
    assert mv.producing_run == "ions/churn/runs/r1"
    assert mv.producing_node == "train"
    assert mv.dataset_refs[0].uri == "sklearn://breast_cancer"
    assert mv.dataset_refs[0].size_bytes == 9
    assert dict(mv.labels) == {"framework": "sklearn", "accuracy": "0.95"}
    assert mv.create_time.seconds > 0

    assert client.get_model_version(mv.name) == mv
    assert client.get_model_version("models/churn-model/versions/latest") == mv

    out = io.BytesIO()
    got = client.download_model(mv.name, out, chunk_size=100_000)
    assert got == mv
    assert out.getvalue() == data

    # From a path, and into a file.
    src = tmp_path / "model.bin"
    src.write_bytes(data[:1000])
    v2 = client.upload_model("churn-model", src)
    assert v2.version_id == 2
    dest = tmp_path / "out.bin"
    with dest.open("wb") as f:
        client.download_model("models/churn-model/versions/latest", f)
    assert dest.read_bytes() == data[:1000]


def test_download_streams_in_chunks_of_the_asked_size(
    client: RegistryClient, stub: registry_pb2_grpc.RegistryServiceStub
) -> None:
    data = os.urandom(1_000_000)
    mv = client.upload_model("m", data)
    messages = list(
        stub.DownloadModelVersion(pb.DownloadModelVersionRequest(name=mv.name, chunk_size=64_000))
    )
    assert messages[0].HasField("model_version")
    chunks = [m.chunk for m in messages[1:]]
    assert len(chunks) == 16
    assert max(len(c) for c in chunks) <= 64_000
    assert b"".join(chunks) == data


def test_empty_model(client: RegistryClient) -> None:
    mv = client.upload_model("empty", b"")
    assert mv.size_bytes == 0
    assert mv.sha256 == hashlib.sha256(b"").hexdigest()
    out = io.BytesIO()
    client.download_model(mv.name, out)
    assert out.getvalue() == b""


def test_identical_bytes_are_stored_once(client: RegistryClient, files: Any) -> None:
    data = os.urandom(600_000)
    a = client.upload_model("alpha", data)
    b = client.upload_model("alpha", data)
    c = client.upload_model("beta", data)  # another model, same bytes
    assert (a.version_id, b.version_id, c.version_id) == (1, 2, 1)
    assert a.sha256 == b.sha256 == c.sha256
    stored = list(files.find({}))
    assert len(stored) == 1
    assert stored[0]["length"] == len(data)

    d = client.upload_model("alpha", data + b"!")
    assert d.sha256 != a.sha256
    assert len(list(files.find({}))) == 2
    for name in (a.name, b.name, c.name):
        out = io.BytesIO()
        client.download_model(name, out)
        assert out.getvalue() == data


def test_versions_are_listed_per_model_oldest_first(client: RegistryClient) -> None:
    for i in range(7):
        client.upload_model("alpha", f"a{i}".encode())
    client.upload_model("beta", b"b")
    client.upload_model("alpha-2", b"c")  # shares a prefix with alpha
    alpha = list(client.list_model_versions("alpha", page_size=3))
    assert [v.version_id for v in alpha] == [1, 2, 3, 4, 5, 6, 7]
    assert all(v.name.startswith("models/alpha/") for v in alpha)
    assert [v.name for v in client.list_model_versions("beta")] == ["models/beta/versions/1"]
    assert list(client.list_model_versions("nobody")) == []


def test_paging_model_versions_while_more_arrive(
    client: RegistryClient, stub: registry_pb2_grpc.RegistryServiceStub
) -> None:
    for i in range(4):
        client.upload_model("m", bytes([i]))
    page = stub.ListModelVersions(pb.ListModelVersionsRequest(parent="models/m", page_size=3))
    assert [v.version_id for v in page.model_versions] == [1, 2, 3]
    client.upload_model("m", b"late")
    rest = stub.ListModelVersions(
        pb.ListModelVersionsRequest(parent="models/m", page_size=3, page_token=page.next_page_token)
    )
    assert [v.version_id for v in rest.model_versions] == [4, 5]
    assert rest.next_page_token == ""


def test_upload_with_request_id_is_idempotent(client: RegistryClient, files: Any) -> None:
    data = os.urandom(100_000)
    first = client.upload_model("m", data, request_id="upload-1")
    again = client.upload_model("m", data, request_id="upload-1")
    assert again == first
    assert [v.version_id for v in client.list_model_versions("m")] == [1]
    assert len(list(files.find({}))) == 1


def test_expected_sha256_mismatch_keeps_nothing(client: RegistryClient, files: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.upload_model("m", b"some bytes", expected_sha256="0" * 64)
    assert e.value.field == "header.expected_sha256"
    assert list(files.find({})) == []
    assert list(client.list_model_versions("m")) == []
    ok = client.upload_model("m", b"x", expected_sha256=hashlib.sha256(b"x").hexdigest())
    assert ok.version_id == 1


def test_upload_without_header(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateModelVersion(iter([pb.CreateModelVersionRequest(chunk=b"abc")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    from relive.errors import from_rpc_error

    assert from_rpc_error(e.value).field == "header"


@pytest.mark.parametrize(
    ("model", "field"),
    [("Bad_Model", "header.parent"), ("m" * 64, "header.parent")],
)
def test_bad_model_ids(client: RegistryClient, model: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.upload_model(model, b"x")
    assert e.value.field.startswith(field)


def test_bad_lineage(client: RegistryClient) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.upload_model("m", b"x", producing_node="Not A Node")
    assert e.value.field == "header.model_version.producing_node"
    with pytest.raises(InvalidArgument) as e:
        client.upload_model("m", b"x", dataset_refs=[pb.DatasetRef(uri="d", sha256="xyz")])
    assert e.value.field == "header.model_version.dataset_refs[0].sha256"


def test_missing_versions(client: RegistryClient) -> None:
    with pytest.raises(NotFound):
        client.get_model_version("models/m/versions/1")
    with pytest.raises(NotFound):
        client.download_model("models/m/versions/latest", io.BytesIO())
    with pytest.raises(InvalidArgument) as e:
        client.get_model_version("models/m/versions/zero")
    assert e.value.field == "name"
    with pytest.raises(InvalidArgument) as e:
        client.download_model("models/m/versions/1", io.BytesIO(), chunk_size=-1)
    assert e.value.field == "chunk_size"


# The transfer runs in a child process holding both the server and the client, so that its
# peak RSS (ru_maxrss) counts every copy either side could make of the model.
MEMORY_CHILD = textwrap.dedent(
    """
    import hashlib, io, json, random, resource, sys
    from relive.client.channel import connect_channel
    from relive.client.registry import RegistryClient
    from relive.core.config import Config
    from relive.registry.server import create_server

    SIZE = 50 * 1024 * 1024

    class Source(io.RawIOBase):
        # Pseudo-random bytes made on demand: the test never holds the model.
        def __init__(self, size):
            self.left, self.rng, self.sha = size, random.Random(7), hashlib.sha256()
        def readable(self):
            return True
        def read(self, n=-1):
            n = self.left if n < 0 else min(n, self.left)
            self.left -= n
            chunk = self.rng.randbytes(n)
            self.sha.update(chunk)
            return chunk

    class Sink(io.RawIOBase):
        def __init__(self):
            self.sha, self.size = hashlib.sha256(), 0
        def writable(self):
            return True
        def write(self, b):
            self.sha.update(b)
            self.size += len(b)
            return len(b)

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    config = Config(mongodb_uri=sys.argv[1], db_prefix=sys.argv[2], code_path=())
    server, port = create_server(config)
    server.start()
    client = RegistryClient(connect_channel(f"127.0.0.1:{port}"))
    # Warm up every code path with a small model first.
    small = client.upload_model("warm", Source(2 * 1024 * 1024))
    client.download_model(small.name, Sink())
    before = peak_mb()
    source = Source(SIZE)
    mv = client.upload_model("big", source)
    after_upload = peak_mb()
    sink = Sink()
    client.download_model(mv.name, sink)
    after_download = peak_mb()
    server.stop(0)
    print(json.dumps({
        "before_mb": before, "after_upload_mb": after_upload,
        "after_download_mb": after_download, "size": mv.size_bytes,
        "sha_sent": source.sha.hexdigest(), "sha_stored": mv.sha256,
        "sha_received": sink.sha.hexdigest(), "received": sink.size,
    }))
    """
)


def test_50mb_model_round_trip_stays_well_below_its_size(config: Config) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(config.mongodb_uri), config.db_prefix],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    size = 50 * 1024 * 1024
    assert report["size"] == size == report["received"]
    assert report["sha_sent"] == report["sha_stored"] == report["sha_received"]
    growth = report["after_download_mb"] - report["before_mb"]
    # Holding the model even once would add 50 MB to the peak; chunks add a few.
    assert growth < 20, report


def test_a_restored_version_keeps_its_id_and_the_counter_moves_past_it(
    client: RegistryClient, files: Any
) -> None:
    """An import stores models/m/versions/5 as 5, so the names its events recorded resolve."""
    first = client.upload_model("restored", b"v1")
    assert first.version_id == 1
    five = client.upload_model("restored", b"exported v5", restore_version_id=5, labels={"a": "b"})
    assert five.name == "models/restored/versions/5" and five.version_id == 5
    assert client.get_model_version("models/restored/versions/latest") == five
    out = io.BytesIO()
    client.download_model(five.name, out)
    assert out.getvalue() == b"exported v5"
    # The same id with the same bytes is the stored version (a second import).
    stored = len(list(files.find({}, {"length": 1})))
    assert client.upload_model("restored", b"exported v5", restore_version_id=5) == five
    assert len(list(files.find({}, {"length": 1}))) == stored
    # An id restored below the counter is taken as it is; new versions go past both.
    three = client.upload_model("restored", b"exported v3", restore_version_id=3)
    assert three.version_id == 3
    assert client.upload_model("restored", b"new").version_id == 6
    assert [v.version_id for v in client.list_model_versions("restored")] == [1, 3, 5, 6]


def test_a_restore_over_other_bytes_is_refused_and_stores_nothing(
    client: RegistryClient, files: Any
) -> None:
    client.upload_model("clash", b"ours")
    stored = len(list(files.find({}, {"length": 1})))
    with pytest.raises(AlreadyExists) as e:
        client.upload_model("clash", b"theirs", restore_version_id=1)
    assert e.value.field == "header.restore_version_id"
    assert len(list(files.find({}, {"length": 1}))) == stored
    for bad in (-1, 10**10):
        with pytest.raises(InvalidArgument) as bad_id:
            client.upload_model("clash", b"theirs", restore_version_id=bad)
        assert bad_id.value.field == "header.restore_version_id"
    assert [v.version_id for v in client.list_model_versions("clash")] == [1]
