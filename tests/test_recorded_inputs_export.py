"""A capture pins what a relaunch needs (its live batches, the launch records of the runs it
overlaps, their dataset snapshots), and its export carries all of it, with the models and the
code, into a second deployment, where exporting it again gives the same package."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymongo import MongoClient
from test_code_snapshots import make_snapshot
from test_recorded_inputs import Stored
from test_recorder_support import T0, other_deployment
from test_recorder_support import create_ion as create_open_ion

from relive import errors, notebook
from relive.client.recorder import RecorderClient
from relive.client.registry import RegistryClient
from relive.client.sink import EventSink
from relive.core.config import Config
from relive.core.serving import Server
from relive.events import EventFactory
from relive.hlc import HybridLogicalClock
from relive.recorder.v1 import event_pb2

DAY = 86_400_000
PARQUET = "application/vnd.apache.parquet"
NPZ = "application/x-npz"
RUN = "ions/demo/runs/r1"
IDLE_RUN = "ions/demo/runs/r0"
INCIDENT = T0 + 10 * DAY
TREE = {"steps.py": b"def score(x):\n    return x\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parquet_batch(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    return out.getvalue()


def npz_batch(x: np.ndarray, y: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, x=x, y=y)
    return out.getvalue()


@dataclass
class Stream:
    """A long streaming run, launched ten days before the incident a capture covers."""

    client: RecorderClient
    registry: RegistryClient
    frames: list[pd.DataFrame]
    arrays: list[tuple[np.ndarray, np.ndarray]]
    batch_inputs: list[str] = field(default_factory=list)
    snapshot_input: str = ""
    models: list[str] = field(default_factory=list)
    code: str = ""
    window_events: int = 0


class Recording:
    """Events stamped at chosen times, as the executor and its components write them."""

    def __init__(self, target: str) -> None:
        self.now = T0
        self.sink = EventSink(
            target, "demo", producer_id="test-executor", clock=HybridLogicalClock(lambda: self.now)
        )

    def at(self, ms: int, event: event_pb2.Event) -> None:
        self.now = ms
        self.sink.emit(event)
        self.sink.flush()


@pytest.fixture
def stream(
    recorder_server: Server, registry_channel: grpc.Channel, tmp_path: Path
) -> Iterator[Stream]:
    create_open_ion(registry_channel, "demo")
    client = RecorderClient(f"127.0.0.1:{recorder_server.port}")
    registry = RegistryClient(registry_channel)
    rng = np.random.default_rng(7)
    s = Stream(
        client,
        registry,
        frames=[
            pd.DataFrame({"a": rng.normal(size=4), "b": rng.normal(size=4), "label": [0, 1, 0, 1]})
            for _ in range(2)
        ],
        arrays=[(rng.normal(size=(3, 2)), np.array([1, 0, 1])) for _ in range(2)],
    )
    upstream = registry.upload_model("churn", b"model one")
    swapped = registry.upload_model("churn", b"model two")
    s.models = [upstream.name, swapped.name]
    header, archive = make_snapshot(tmp_path, TREE)
    s.code = registry.create_code_snapshot(header, archive).name

    rec = Recording(f"127.0.0.1:{recorder_server.port}")
    run = EventFactory("ions/demo", RUN, node="infer")
    spec = {
        "revision": "ions/demo/revisions/1",
        "seed": 7,
        "code_refs": [{"module": "steps", "snapshot": s.code}],
        "pinned_models": {"train.model": upstream.name},
    }
    rec.at(T0, run.lifecycle("run.launched", "PENDING", {"spec": spec, "relaunch_of": ""}))
    idle = EventFactory("ions/demo", IDLE_RUN, node="train")
    rec.at(T0 + 5, idle.lifecycle("run.launched", "PENDING", {"spec": {"seed": 1}}))
    dataset = b"a,b\n1,2\n3,4\n"
    snapshot = client.create_recorded_input(
        "demo", dataset, kind="dataset", media_type="text/csv", use_time=T0 + 10
    )
    s.snapshot_input = snapshot.name
    rec.at(T0 + 10, run.dataset("file:///data.csv", sha(dataset), len(dataset), snapshot.name))

    batches = [
        (parquet_batch(s.frames[0]), PARQUET, 4),
        (npz_batch(*s.arrays[0]), NPZ, 3),
        (parquet_batch(s.frames[1]), PARQUET, 4),
        (npz_batch(*s.arrays[1]), NPZ, 3),
        (npz_batch(*s.arrays[1]), NPZ, 3),  # the same batch twice: stored once
    ]
    for i, (data, media_type, rows) in enumerate(batches):
        at = INCIDENT + i * 1000
        made = client.create_recorded_input(
            "demo", data, kind="batch", media_type=media_type, use_time=at, labels={"rows": "n"}
        )
        s.batch_inputs.append(made.name)
        data_fields = {"batch": i, "rows": rows, "sha256": sha(data), "input": made.name}
        rec.at(at, run.custom("stream.batch", data_fields))
    rec.at(INCIDENT + 1500, run.model("swapped", swapped.name, swapped.sha256, batch=2))
    rec.sink.close()
    s.window_events = len(batches) + 1
    client.create_capture("demo", "inc", INCIDENT - 500, INCIDENT + 10_000)
    yield s
    client.close()


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _without_place(d: dict[str, Any]) -> dict[str, Any]:
    """An exported event without what the storing deployment assigns."""
    return {k: v for k, v in d.items() if k not in ("sequence", "name")}


def _comparable(members: dict[str, bytes]) -> dict[str, Any]:
    """An export's content, minus what a deployment assigns (sequences, event names, and the
    registry's creation times of revisions, models and code snapshots)."""
    out: dict[str, Any] = {}
    for name, data in members.items():
        if name in ("MANIFEST.json", "events.csv", "stats.csv"):
            continue
        if name == "events.jsonl":
            out[name] = [_without_place(json.loads(x)) for x in data.splitlines()]
        elif name.startswith("runs/"):
            run = json.loads(data)
            run["event"] = _without_place(run["event"])
            run["datasets"] = [_without_place(d) for d in run.get("datasets", [])]
            out[name] = run
        elif name == "ion/ion.json" or (
            name.startswith(("models/", "code/")) and name.endswith(".json")
        ):
            meta = json.loads(data)
            for item in [meta, *meta.get("revisions", [])]:
                item.pop("create_time", None)
            out[name] = meta
        elif name == "capture.json":
            meta = json.loads(data)
            out[name] = {
                k: meta[k] for k in ("recorded_inputs", "model_versions", "code_snapshots")
            }
        else:
            out[name] = data
    return out


def test_retention_keeps_an_old_input_while_a_capture_covers_its_use(
    stream: Stream, config: Config
) -> None:
    client = stream.client
    client.set_retention("demo", 7)
    old = client.create_recorded_input(
        "demo", os.urandom(100_000), kind="call", media_type="application/json", use_time=T0 + 20
    )
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(config.mongodb_uri) as mongo:
        stored = Stored(mongo, config.database("recorder"))
        before = stored.counts()
        client.run_retention("demo", as_of=INCIDENT + 20 * DAY)
        # Nothing of the capture went: its batches (used in the window), the dataset snapshot
        # its run read at launch; the uncaptured call result went, file and all.
        for name in (*stream.batch_inputs, stream.snapshot_input):
            assert client.get_recorded_input(name).name == name
        with pytest.raises(errors.NotFound):
            client.get_recorded_input(old.name)
        assert stored.counts() == (before[0] - 1, before[1] - 1, before[2] - 1)
        # The capture's launch record stays, the idle run's launch does not.
        launched = list(client.list_events("demo", types=["run.launched", "dataset.used"]))
        assert [(e.type, e.run) for e in launched] == [("run.launched", RUN), ("dataset.used", RUN)]
        assert len(list(client.list_events("demo"))) == stream.window_events + 2
        # Deleting the capture releases all of it.
        client.delete_capture("ions/demo/captures/inc")
        client.run_retention("demo", as_of=INCIDENT + 20 * DAY)
        assert stored.counts() == (0, 0, 0)
        assert list(client.list_events("demo")) == []


def test_a_capture_exports_what_a_relaunch_needs_and_imports_it_elsewhere(
    stream: Stream, config: Config, tmp_path: Path
) -> None:
    client, registry = stream.client, stream.registry
    client.set_retention("demo", 7)
    client.run_retention("demo", as_of=INCIDENT + 20 * DAY)  # the launch is long past
    path = tmp_path / "inc.tar.gz"
    stages: list[str] = []
    client.export_capture(
        "ions/demo/captures/inc",
        path,
        include_models=True,
        progress=lambda p: stages.append(p.stage),
    )
    assert {"runs", "code", "inputs", "models"} <= set(stages)
    members = _members(path)
    manifest = json.loads(members["MANIFEST.json"])
    assert set(manifest["files"]) == set(members) - {"MANIFEST.json"}
    run = json.loads(members["runs/r1.json"])
    assert run["before_window"] is True and run["spec"]["spec"]["seed"] == 7
    assert [d["dataset"]["input"] for d in run["datasets"]] == [stream.snapshot_input]
    assert "runs/r0.json" not in members
    inputs = sorted({*stream.batch_inputs, stream.snapshot_input})
    assert json.loads(members["capture.json"])["recorded_inputs"] == inputs
    for name in inputs:
        digest = name.rsplit("/", 1)[1]
        meta = json.loads(members[f"inputs/{digest}.json"])
        ext = "parquet" if meta["media_type"] == PARQUET else "bin"
        assert sha(members[f"inputs/{digest}.{ext}"]) == digest
        assert client.download_recorded_input(name) == members[f"inputs/{digest}.{ext}"]
    for version in stream.models:
        blob = members[f"models/{version.replace('/', '_')}.bin"]
        out = io.BytesIO()
        registry.download_model(version, out)
        assert blob == out.getvalue()

    mongo: MongoClient[dict[str, Any]]
    with (
        other_deployment(config, tmp_path) as other,
        grpc.insecure_channel(other.registry_target) as channel,
        RecorderClient(other.recorder_target) as far,
        MongoClient(config.mongodb_uri) as mongo,
    ):
        there = RegistryClient(channel)
        result = far.import_capture(path)
        assert result.events_imported == stream.window_events + 2
        # The launch record came along, before the window.
        launched = list(far.list_events("demo", types=["run.launched"]))
        assert [e.run for e in launched] == [RUN] and launched[0].hlc.physical_ms == T0
        for name in inputs:
            here, far_one = client.get_recorded_input(name), far.get_recorded_input(name)
            assert far_one == here
            assert far.download_recorded_input(name) == client.download_recorded_input(name)
        for version in stream.models:
            restored = there.get_model_version(version)
            assert restored.name == version
            assert restored.sha256 == registry.get_model_version(version).sha256
        assert there.get_code_snapshot(stream.code).name == stream.code
        # A model made there after the import takes the next id.
        assert there.upload_model("churn", b"model three").version_id == 3

        far_inputs = Stored(mongo, other.config.database("recorder"))
        counted = far_inputs.counts()
        versions = [v.name for v in there.list_model_versions("churn")]
        again = far.import_capture(path, capture_id="inc-2")
        assert again.events_imported == 0
        assert again.events_already_present == stream.window_events + 2
        assert far_inputs.counts() == counted
        assert [v.name for v in there.list_model_versions("churn")] == versions

        path2 = tmp_path / "again.tar.gz"
        far.export_capture("ions/demo/captures/inc", path2, include_models=True)
        assert _comparable(_members(path2)) == _comparable(members)


def test_the_notebook_gives_the_live_batches_as_dataframes(stream: Stream, tmp_path: Path) -> None:
    path = stream.client.export_capture("ions/demo/captures/inc", tmp_path / "inc.tar.gz")
    data = notebook.load(path)
    batches = data.batches
    assert list(batches.columns[:4]) == ["run", "node", "batch", "time"]
    assert batches.groupby("batch").size().to_dict() == {0: 4, 1: 3, 2: 4, 3: 3, 4: 3}
    assert set(batches["run"]) == {RUN} and set(batches["node"]) == {"infer"}
    first = batches[batches["batch"] == 0][["a", "b", "label"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, stream.frames[0])
    second = batches[batches["batch"] == 1]
    np.testing.assert_array_equal(second[["x0", "x1"]].to_numpy(), stream.arrays[0][0])
    np.testing.assert_array_equal(second["label"].to_numpy(), stream.arrays[0][1])
    # Any one input, by name: a frame when tabular, else its bytes.
    assert data.input(stream.snapshot_input) == b"a,b\n1,2\n3,4\n"
    one = data.input(stream.batch_inputs[3])
    assert isinstance(one, pd.DataFrame) and list(one.columns) == ["x0", "x1", "label"]
    assert data.inputs[stream.batch_inputs[0]]["media_type"] == PARQUET


def test_an_event_naming_a_missing_input_fails_the_export(stream: Stream, tmp_path: Path) -> None:
    missing = f"ions/demo/inputs/{'9' * 64}"
    e = EventFactory("ions/demo", RUN, node="infer").custom("stream.batch", {"input": missing})
    e.producer_id, e.producer_sequence = "test-other", 1
    e.hlc.physical_ms = INCIDENT + 100
    stream.client.append("demo", [e])
    path = tmp_path / "inc.tar.gz"
    with pytest.raises(errors.FailedPrecondition) as refused:
        stream.client.export_capture("ions/demo/captures/inc", path)
    assert refused.value.reason == "RECORDED_INPUT_MISSING"
    assert refused.value.metadata["input"] == missing
    assert not path.exists()
