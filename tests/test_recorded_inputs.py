"""Recorded inputs: what the world gave a run, stored once per sha256 per ION, with the time of
every use, against a real recorder and registry on the embedded store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import MongoClient
from test_auth import Deployment, create_ion, deployment  # noqa: F401
from test_recorder_support import T0
from test_recorder_support import create_ion as create_open_ion

from relive import errors
from relive.client.channel import connect_channel
from relive.client.recorder import RecorderClient
from relive.core.config import Config
from relive.core.serving import Server
from relive.recorder.v1 import recorder_pb2

BATCH = "batch"
NPZ = "application/x-npz"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Stored:
    """The recorder's input documents, GridFS files and chunks, read with a plain find (the
    embedded store cannot count a GridFS files collection, and finds chunks by file only)."""

    def __init__(self, mongo: MongoClient[dict[str, Any]], database: str) -> None:
        self.db = mongo[database]

    def counts(self) -> tuple[int, int, int]:
        docs = len(list(self.db["recorded_inputs"].find({}, {"key": 1})))
        files = [f["_id"] for f in self.db["inputs.files"].find({}, {"length": 1})]
        chunks = sum(
            len(list(self.db["inputs.chunks"].find({"files_id": f}, {"n": 1}))) for f in files
        )
        return docs, len(files), chunks


@pytest.fixture
def stored(config: Config) -> Iterator[Stored]:
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(config.mongodb_uri) as mongo:
        yield Stored(mongo, config.database("recorder"))


@pytest.fixture
def client(recorder_server: Server, registry_channel: grpc.Channel) -> Iterator[RecorderClient]:
    create_open_ion(registry_channel, "demo")
    with RecorderClient(f"127.0.0.1:{recorder_server.port}") as c:
        yield c


def test_an_input_round_trips_and_is_stored_once(
    client: RecorderClient, stored: Stored, tmp_path: Path
) -> None:
    small = b"a small batch" * 10
    made = client.create_recorded_input(
        "demo", small, kind=BATCH, media_type=NPZ, labels={"rows": "10"}, use_time=T0
    )
    assert made.name == f"ions/demo/inputs/{sha(small)}"
    assert (made.sha256, made.kind, made.media_type, made.size_bytes) == (
        sha(small),
        BATCH,
        NPZ,
        len(small),
    )
    assert dict(made.labels) == {"rows": "10"}
    assert made.first_use_time.ToMilliseconds() == made.last_use_time.ToMilliseconds() == T0
    assert client.get_recorded_input(made.name) == made
    assert client.download_recorded_input(made.name) == small
    # Small inputs live in their document; large ones in GridFS, in 1 MiB chunks.
    assert stored.counts() == (1, 0, 0)
    large = os.urandom(2 * 1024 * 1024 + 17)
    path = tmp_path / "large.bin"
    path.write_bytes(large)
    big = client.create_recorded_input("demo", path, kind="dataset", media_type="text/csv")
    assert big.size_bytes == len(large) and big.sha256 == sha(large)
    assert stored.counts() == (2, 1, 3)
    out = tmp_path / "out" / "large.bin"
    assert client.download_recorded_input_to(big.name, out) == client.get_recorded_input(big.name)
    assert out.read_bytes() == large
    assert [p.name for p in out.parent.iterdir()] == ["large.bin"]  # no temp file left

    # The same bytes again, and a header alone: one copy, and the use span widens.
    again = client.create_recorded_input(
        "demo", small, kind=BATCH, media_type=NPZ, use_time=T0 + 5000
    )
    assert again.name == made.name and again.create_time == made.create_time
    assert again.last_use_time.ToMilliseconds() == T0 + 5000
    earlier = client.create_recorded_input(
        "demo", small, kind=BATCH, media_type=NPZ, use_time=T0 - 5000, touch_only=True
    )
    assert earlier.first_use_time.ToMilliseconds() == T0 - 5000
    assert earlier.last_use_time.ToMilliseconds() == T0 + 5000
    client.create_recorded_input("demo", path, kind="dataset", media_type="text/csv")
    assert stored.counts() == (2, 1, 3)
    # An empty input is an input too.
    empty = client.create_recorded_input("demo", b"", kind="call", media_type="application/json")
    assert empty.size_bytes == 0 and client.download_recorded_input(empty.name) == b""


def test_a_touch_of_an_unknown_input_asks_for_the_bytes(
    client: RecorderClient, stored: Stored
) -> None:
    with pytest.raises(errors.FailedPrecondition) as e:
        client.create_recorded_input(
            "demo", b"never sent", kind=BATCH, media_type=NPZ, touch_only=True
        )
    assert e.value.field == "chunk" and "send the bytes" in e.value.message
    assert stored.counts() == (0, 0, 0)


def test_bytes_that_do_not_match_their_sha256_store_nothing(
    client: RecorderClient, stored: Stored
) -> None:
    for data in (b"tiny", os.urandom(300_000)):
        with pytest.raises(errors.InvalidArgument) as e:
            client.create_recorded_input(
                "demo", data, sha256=sha(b"other"), kind=BATCH, media_type=NPZ
            )
        assert e.value.field == "header.recorded_input.sha256"
    assert stored.counts() == (0, 0, 0)
    with pytest.raises(errors.NotFound) as nf:
        client.get_recorded_input(f"ions/demo/inputs/{sha(b'other')}")
    assert nf.value.field == "name"
    with pytest.raises(errors.NotFound):
        client.download_recorded_input(f"ions/demo/inputs/{sha(b'tiny')}")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "stream"}, "header.recorded_input.kind"),
        ({"kind": ""}, "header.recorded_input.kind"),
        ({"media_type": "not a media type"}, "header.recorded_input.media_type"),
        ({"media_type": "text/" + "x" * 300}, "header.recorded_input.media_type"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "header.recorded_input.labels"),
        ({"labels": {"k": "v" * 2000}}, "header.recorded_input.labels[k]"),
        ({"labels": {"": "v"}}, "header.recorded_input.labels"),
        ({"sha256": "abc"}, "header.recorded_input.sha256"),
        ({"name": "ions/demo/inputs/" + "0" * 64}, "header.recorded_input.name"),
    ],
)
def test_a_bad_header_is_refused_naming_its_field(
    client: RecorderClient, stored: Stored, change: dict[str, Any], field: str
) -> None:
    data = b"some bytes"
    fields: dict[str, Any] = {"sha256": sha(data), "kind": BATCH, "media_type": NPZ}
    fields.update(change)
    header = recorder_pb2.CreateRecordedInputHeader(
        parent="ions/demo", recorded_input=recorder_pb2.RecordedInput(**fields)
    )
    requests = [
        recorder_pb2.CreateRecordedInputRequest(header=header),
        recorder_pb2.CreateRecordedInputRequest(chunk=data),
    ]
    with pytest.raises(grpc.RpcError) as e:
        client.stub.CreateRecordedInput(iter(requests), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(e.value).field == field
    assert stored.counts() == (0, 0, 0)


def test_the_stream_must_start_with_one_header(client: RecorderClient) -> None:
    chunk = recorder_pb2.CreateRecordedInputRequest(chunk=b"x")
    header = recorder_pb2.CreateRecordedInputRequest(
        header=recorder_pb2.CreateRecordedInputHeader(
            parent="ions/demo",
            recorded_input=recorder_pb2.RecordedInput(sha256=sha(b"x"), kind=BATCH),
        )
    )
    for requests in ([], [chunk], [header, header]):
        with pytest.raises(grpc.RpcError) as e:
            client.stub.CreateRecordedInput(iter(requests), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert errors.from_rpc_error(e.value).field == "header"
    with pytest.raises(errors.InvalidArgument) as bad:
        client.get_recorded_input("ions/demo/inputs/nope")
    assert bad.value.field == "name"
    with pytest.raises(errors.NotFound) as gone:
        client.create_recorded_input("ghost", b"x", kind=BATCH, media_type=NPZ)
    assert gone.value.field == "header.parent"


def test_an_input_over_the_bound_is_refused_naming_the_setting(
    config: Config, registry_server: Server, registry_channel: grpc.Channel, stored: Stored
) -> None:
    from relive.recorder.server import create_server

    create_open_ion(registry_channel, "demo")
    server, port = create_server(
        config.with_(registry_endpoint=f"127.0.0.1:{registry_server.port}", max_input_bytes=100_000)
    )
    server.start()
    try:
        with RecorderClient(f"127.0.0.1:{port}") as client:
            fits = client.create_recorded_input("demo", b"x" * 100_000, kind=BATCH, media_type=NPZ)
            assert fits.size_bytes == 100_000
            with pytest.raises(errors.ResourceExhausted) as e:
                client.create_recorded_input("demo", b"x" * 100_001, kind=BATCH, media_type=NPZ)
            assert e.value.field == "RELIVE_MAX_INPUT_BYTES"
            assert "100000" in e.value.message
        assert stored.counts() == (1, 1, 1)
    finally:
        server.stop(0.5)


def test_another_projects_inputs_do_not_exist_for_you(
    deployment: Deployment,  # noqa: F811
) -> None:
    target = f"127.0.0.1:{deployment.recorder.port}"
    create_ion(deployment.alice, "churn-a")
    data = b"alice's batch"

    def as_(token: str) -> RecorderClient:
        return RecorderClient(connect_channel(target, token=token, environ={}))

    alice, carol, bob = as_("tok-alice"), as_("tok-carol"), as_("tok-bob")
    try:
        made = alice.create_recorded_input("churn-a", data, kind=BATCH, media_type=NPZ)
        assert carol.download_recorded_input(made.name) == data  # the same project
        for call in (
            lambda: bob.get_recorded_input(made.name),
            lambda: bob.download_recorded_input(made.name),
            lambda: bob.create_recorded_input("churn-a", data, kind=BATCH, media_type=NPZ),
            lambda: bob.create_recorded_input(
                "churn-a", data, kind=BATCH, media_type=NPZ, touch_only=True
            ),
        ):
            with pytest.raises(errors.NotFound) as e:
                call()
            assert "churn-a" in e.value.message
        assert alice.get_recorded_input(made.name).last_use_time == made.last_use_time
    finally:
        for c in (alice, carol, bob):
            c.channel.close()
