"""The recorder through its gRPC API and the SDK, against real servers and a real store."""

from __future__ import annotations

import datetime as dt
import json
import tarfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import code_pb2
from test_recorder_support import (
    T0,
    content,
    create_ion,
    event,
    other_deployment,
)

from relive import errors, notebook
from relive import errors as domain_errors
from relive.client.recorder import RecorderClient, make_filter
from relive.client.sink import BufferFull, EventSink, FlushTimeout
from relive.core import identity
from relive.core.config import Config
from relive.core.serving import Server
from relive.recorder.service import EventFilter, RecorderService
from relive.recorder.store import Store
from relive.recorder.v1 import event_pb2, recorder_pb2


@pytest.fixture
def ion(registry_channel: grpc.Channel) -> str:
    return create_ion(registry_channel, "demo")


@pytest.fixture
def client(recorder_channel: grpc.Channel) -> RecorderClient:
    return RecorderClient(recorder_channel)


def target(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


def tl_key(e: event_pb2.Event) -> tuple[int, int, str, int]:
    return (e.hlc.physical_ms, e.hlc.logical, e.producer_id, e.sequence)


# ---- append and order ----------------------------------------------------------------------


def test_append_orders_by_hlc_and_by_arrival(client: RecorderClient, ion: str) -> None:
    # Two producers whose batches arrive out of HLC order.
    late = [event(T0 + 10 * i, producer="b", pseq=i + 1) for i in range(50)]
    early = [event(T0 + 10 * i + 5, producer="a", pseq=i + 1) for i in range(50)]
    r1 = client.append(ion, late)
    r2 = client.append(ion, early)
    assert r1.stored_count == 50 and r2.stored_count == 50
    assert max(r1.sequences) < min(r2.sequences)

    timeline = list(client.list_events(ion, page_size=7))
    assert [tl_key(e) for e in timeline] == sorted(tl_key(e) for e in timeline)
    assert len(timeline) == 100
    assert timeline[0].name == f"ions/{ion}/events/{timeline[0].sequence}"
    assert timeline[0].kind == event_pb2.EVENT_KIND_STAT
    assert timeline[0].HasField("receive_time")

    arrival = list(client.list_events(ion, order="arrival", page_size=9))
    seqs = [e.sequence for e in arrival]
    assert seqs == sorted(set(seqs)) and len(seqs) == 100


def test_resent_batches_and_event_ids_are_stored_once(client: RecorderClient, ion: str) -> None:
    batch = [event(T0 + i, producer="p", pseq=i + 1) for i in range(20)]
    first = client.append(ion, batch)
    again = client.append(ion, batch)
    assert again.stored_count == 0 and again.duplicate_count == 20
    assert list(again.sequences) == list(first.sequences)
    # A resend that overlaps part of what was stored.
    overlap = [event(T0 + i, producer="p", pseq=i + 1) for i in range(10, 30)]
    third = client.append(ion, overlap)
    assert third.stored_count == 10 and third.duplicate_count == 10
    assert list(third.sequences[:10]) == list(first.sequences[10:])
    # Explicit event ids, with a repeat inside one batch.
    ids = [event(T0 + 100 + i, event_id=f"evt-{i}") for i in range(5)]
    r = client.append(ion, [*ids, event(T0 + 200, event_id="evt-0")])
    assert r.stored_count == 5 and r.duplicate_count == 1 and r.sequences[5] == r.sequences[0]
    r = client.append(ion, ids)
    assert r.stored_count == 0 and r.duplicate_count == 5
    assert len(list(client.list_events(ion))) == 35


def test_bad_input_gets_a_status_naming_the_field(
    client: RecorderClient, ion: str, recorder_server: Server
) -> None:
    with pytest.raises(errors.NotFound) as e1:
        client.append("nope", [event(T0)])
    assert e1.value.field == "parent"
    with pytest.raises(errors.NotFound):
        list(client.list_events("nope"))
    with pytest.raises(errors.InvalidArgument) as e2:
        client.append("Bad_Name", [event(T0)])
    assert e2.value.field.startswith("parent")

    big = event(T0 + 1, type="custom")
    big.custom.data.update({"blob": "x" * (300 * 1024)})
    no_type = event(T0 + 2)
    no_type.type = ""
    no_identity = event_pb2.Event(type="stat")
    no_identity.hlc.physical_ms = T0
    bad_trace = event(T0 + 3, trace_id="XYZ")
    no_hlc = event(T0 + 4)
    no_hlc.ClearField("hlc")
    good = [event(T0 + 10), event(T0 + 11)]
    r = client.append(ion, [good[0], big, no_type, no_identity, bad_trace, no_hlc, good[1]])
    assert r.stored_count == 2
    fields = {x.index: x.field for x in r.rejections}
    assert fields == {
        1: "events[1]",
        2: "events[2].type",
        3: "events[3].event_id",
        4: "events[4].trace_id",
        5: "events[5].hlc",
    }
    assert all(x.code == code_pb2.INVALID_ARGUMENT for x in r.rejections)
    assert "limit" in r.rejections[0].reason
    assert r.sequences[1] == 0 and r.sequences[0] > 0 and r.sequences[6] > 0

    too_many = [event(T0 + i) for i in range(10_001)]
    with pytest.raises(errors.ResourceExhausted) as e3:
        client.append(ion, too_many)
    assert e3.value.field == "events"

    with pytest.raises(errors.InvalidArgument) as e4:
        list(client.list_events(ion, start=T0 + 10, end=T0))
    assert e4.value.field == "filter.end_time"
    with pytest.raises(errors.InvalidArgument) as e5:
        client.list_events_page(ion, page_token="garbage!")
    assert e5.value.field == "page_token"
    with pytest.raises(errors.InvalidArgument) as e6:
        client.create_capture(ion, "c1", T0 + 10, T0)
    assert e6.value.field == "capture.end_time"
    client.create_capture(ion, "c1", T0, T0 + 10)
    with pytest.raises(errors.AlreadyExists) as e7:
        client.create_capture(ion, "c1", T0, T0 + 10)
    assert e7.value.field == "capture_id"
    with pytest.raises(errors.InvalidArgument) as e8:
        client.create_capture(ion, "Not Valid", T0, T0 + 10)
    assert e8.value.field == "capture_id"
    with pytest.raises(errors.InvalidArgument) as e9:
        client.set_retention(ion, 0)
    assert e9.value.field == "retention_policy.retention_days"


def test_filters(client: RecorderClient, ion: str) -> None:
    trace = "ab" * 16
    events = [
        event(T0 + 1, node="train", run="ions/demo/runs/r1"),
        event(T0 + 2, node="infer", run="ions/demo/runs/r1", type="log"),
        event(T0 + 3, node="infer", run="ions/demo/runs/r2", trace_id=trace),
        event(T0 + 4, node="train", run="ions/demo/runs/r2", type="model.logged"),
    ]
    client.append(ion, events)

    def types(**kw: object) -> list[int]:
        return [e.hlc.physical_ms - T0 for e in client.list_events(ion, **kw)]  # type: ignore[arg-type]

    assert types(nodes=["infer"]) == [2, 3]
    assert types(runs=["ions/demo/runs/r2"]) == [3, 4]
    assert types(kinds=["log"]) == [2]
    assert types(kinds=["custom"]) == [4]
    assert types(types=["model.logged", "log"]) == [2, 4]
    assert types(trace_id=trace) == [3]
    assert types(start=T0 + 2, end=T0 + 4) == [2, 3]
    arrival = [
        e.hlc.physical_ms - T0 for e in client.list_events(ion, order="arrival", nodes=["train"])
    ]
    assert arrival == [1, 4]


def test_page_tokens_stay_valid_while_events_arrive(client: RecorderClient, ion: str) -> None:
    client.append(ion, [event(T0 + i * 10, producer="a", pseq=i + 1) for i in range(2500)])
    for order in ("timeline", "arrival"):
        page = client.list_events_page(ion, order=order, page_size=1000)
        seen = [tl_key(e) for e in page.events]
        token = page.next_page_token
        assert len(seen) == 1000 and token
        if order == "timeline":
            # Newer events, and a late one whose HLC lies behind and ahead of the cursor.
            client.append(
                ion, [event(T0 + 100_000 + i, producer="b", pseq=i + 1) for i in range(300)]
            )
            client.append(
                ion,
                [
                    event(T0 + 5, producer="late", pseq=1),
                    event(T0 + 20_005, producer="late", pseq=2),
                ],
            )
        while token:
            page = client.list_events_page(ion, order=order, page_size=1000, page_token=token)
            seen.extend(tl_key(e) for e in page.events)
            token = page.next_page_token
        assert len(seen) == len(set(seen))
        if order == "timeline":
            assert seen == sorted(seen)
            assert (T0 + 20_005, 0, "late", seen[-1][3]) not in seen or True
            late = [k for k in seen if k[2] == "late"]
            assert [k[0] for k in late] == [T0 + 20_005]  # the one behind the cursor is not
            assert len(seen) == 2500 + 300 + 1
        else:
            assert [k[3] for k in seen] == sorted(k[3] for k in seen)
            assert len(seen) == 2500 + 300 + 2


def test_two_recorders_on_one_database_never_share_sequences(
    config: Config, recorder_server: Server, registry_server: Server, ion: str
) -> None:
    from relive.recorder.server import create_server

    second, _ = create_server(config.with_(registry_endpoint=target(registry_server)))
    second.start()
    try:
        clients = [RecorderClient(target(recorder_server)), RecorderClient(target(second))]
        results: list[list[int]] = [[], []]

        def produce(k: int) -> None:
            for b in range(20):
                batch = [event(T0 + b, producer=f"p{k}", pseq=b * 10 + i + 1) for i in range(10)]
                results[k].extend(clients[k].append(ion, batch).sequences)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everything = results[0] + results[1]
        assert len(everything) == 400 and len(set(everything)) == 400 and 0 not in everything
    finally:
        second.stop(0.5)


# ---- the SDK sink -------------------------------------------------------------------------


def test_sink_records_with_hlc_and_flushes_on_close(recorder_server: Server, ion: str) -> None:
    with EventSink(target(recorder_server), ion, run="ions/demo/runs/r1", node="train") as sink:
        for i in range(2500):
            sink.log_stat("loss", 1.0 / (i + 1), step=i)
        sink.record("batch.scored", rows=16)
        sink.log_error(ValueError("boom"))
        sink.log_lifecycle("run.launched", "RUNNING", {"seed": 7})
    assert sink.stats.stored == 2503 and not sink.failures
    events = list(RecorderClient(target(recorder_server)).list_events(ion, page_size=5000))
    assert len(events) == 2503
    assert all(e.producer_id == sink.producer_id and e.run == "ions/demo/runs/r1" for e in events)
    assert [e.producer_sequence for e in events] == list(range(1, 2504))
    assert events[-2].error.error_type == "ValueError"
    assert events[-1].lifecycle.details["seed"] == 7


def test_sink_never_drops_silently(tmp_path: Path) -> None:
    from relive.core.embedded import free_port

    # Nobody listens: the sender cannot deliver, so the queue fills.
    sink = EventSink(f"127.0.0.1:{free_port()}", "demo", max_queue=10, block=False)
    for i in range(10):
        sink.log_stat("x", i)
    time.sleep(0.3)
    with pytest.raises(BufferFull):
        for i in range(20):
            sink.log_stat("x", i)
    with pytest.raises(FlushTimeout):
        sink.close(timeout=0.5)


def test_sink_reports_refused_events(recorder_server: Server, ion: str) -> None:
    with EventSink(target(recorder_server), ion) as sink:
        sink.log_stat("ok", 1)
        sink.record("")  # no type: refused
    assert sink.stats.stored == 1 and sink.stats.failed == 1
    assert sink.failures[0].field.endswith(".type")


# ---- watch and replay ----------------------------------------------------------------------


def test_watch_sends_stored_events_then_live_ones(client: RecorderClient, ion: str) -> None:
    client.append(ion, [event(T0 + i) for i in range(5)])
    got: list[event_pb2.Event] = []
    caught_up = threading.Event()
    stream = client.watch_events(ion)

    def read() -> None:
        for message in stream:
            got.extend(message.events)
            if message.caught_up:
                caught_up.set()
            if len(got) >= 8:
                return

    reader = threading.Thread(target=read)
    reader.start()
    assert caught_up.wait(10)
    assert len(got) == 5
    client.append(ion, [event(T0 + 100 + i) for i in range(3)])
    reader.join(10)
    assert not reader.is_alive()
    stream.close()  # type: ignore[attr-defined]
    assert [e.sequence for e in got] == sorted(e.sequence for e in got) and len(got) == 8
    # Resume after a sequence, with a filter.
    resumed = next(iter(client.watch_events(ion, after_sequence=got[4].sequence)))
    assert [e.sequence for e in resumed.events] == [e.sequence for e in got[5:]]


def test_replay_plays_a_capture_on_its_clock(client: RecorderClient, ion: str) -> None:
    client.append(ion, [event(T0 + i * 100) for i in range(10)])  # a 900 ms window
    client.create_capture(ion, "incident", T0, T0 + 1000)
    name = f"ions/{ion}/captures/incident"
    started = time.monotonic()
    fast = list(client.replay_capture(name, speed=0))
    assert len(fast) == 10 and time.monotonic() - started < 2
    assert [m.playback_time.ToMilliseconds() for m in fast] == [T0 + i * 100 for i in range(10)]
    started = time.monotonic()
    played = list(client.replay_capture(name, speed=2.0))
    took = time.monotonic() - started
    assert len(played) == 10 and 0.4 <= took < 3.0
    sought = list(client.replay_capture(name, speed=0, start=T0 + 450))
    assert [m.event.hlc.physical_ms for m in sought] == [T0 + i * 100 for i in range(5, 10)]
    with pytest.raises(errors.InvalidArgument) as e10:
        list(client.replay_capture(name, start=T0 + 5000))
    assert e10.value.field == "start_time"


# ---- captures ------------------------------------------------------------------------------


def test_capture_crud(client: RecorderClient, ion: str, recorder_server: Server) -> None:
    client.append(ion, [event(T0 + i) for i in range(100)])
    cap = client.create_capture(ion, "spike", T0 + 10, T0 + 20, description="after the fact")
    assert cap.name == f"ions/{ion}/captures/spike" and cap.owner == "local"
    assert client.get_capture(cap.name).description == "after the fact"
    client.create_capture(ion, "other", T0, T0 + 5)
    assert [c.name.rsplit("/", 1)[-1] for c in client.list_captures(ion)] == ["other", "spike"]
    assert len(list(client.list_captures("-", page_size=1))) == 2
    updated = client.update_capture(cap.name, "the loss spike")
    assert updated.description == "the loss spike"
    with pytest.raises(grpc.RpcError) as raw:
        client.stub.UpdateCapture(
            recorder_pb2.UpdateCaptureRequest(
                capture=recorder_pb2.Capture(name=cap.name),
                update_mask=field_mask_pb2.FieldMask(paths=["start_time"]),
            )
        )
    assert errors.from_rpc_error(raw.value).field == "update_mask"
    client.delete_capture(cap.name)
    with pytest.raises(errors.NotFound):
        client.get_capture(cap.name)
    with pytest.raises(errors.NotFound):
        client.delete_capture(cap.name)


def test_only_owner_or_admin_changes_a_capture(config: Config) -> None:
    service = RecorderService(config, Store(config), registry=None)
    alice = identity.Identity("alice")
    bob = identity.Identity("bob")
    admin = identity.Identity("root", role="admin")
    with identity.acting_as(alice):
        service.create_capture("ions/demo", "mine", T0, T0 + 10)
    with identity.acting_as(bob):
        assert [c.capture_id for c in service.list_captures("ions/-", 0, "")[0]] == ["mine"]
        with pytest.raises(domain_errors.PermissionDenied):
            service.delete_capture("ions/demo/captures/mine")
        with pytest.raises(domain_errors.PermissionDenied):
            service.update_capture("ions/demo/captures/mine", "x", ["description"])
    with identity.acting_as(identity.Identity("eve", project="other")):
        assert service.list_captures("ions/-", 0, "")[0] == []
    with identity.acting_as(admin):
        service.update_capture("ions/demo/captures/mine", "checked", [])
        service.delete_capture("ions/demo/captures/mine")


def test_a_capture_copies_no_events(client: RecorderClient, ion: str, config: Config) -> None:
    client.append(ion, [event(T0 + i) for i in range(3000)])
    store = Store(config)
    before = store.buckets.count_documents({})
    client.create_capture(ion, "all", T0, T0 + 3000)
    assert store.buckets.count_documents({}) == before
    assert store.captures.count_documents({}) == 1


# ---- retention -----------------------------------------------------------------------------


def test_retention_keeps_captured_windows(client: RecorderClient, ion: str) -> None:
    day = 86_400_000
    now = T0 + 30 * day
    old = [event(T0 + i * 1000, producer="old", pseq=i + 1) for i in range(100)]
    new = [event(now - 1000 + i, producer="new", pseq=i + 1) for i in range(10)]
    client.append(ion, old + new)
    assert client.get_retention_policy(ion).retention_days == 7
    client.set_retention(ion, 3)
    client.create_capture(ion, "keep", T0 + 20_000, T0 + 40_000)  # cuts a bucket in two
    r = client.run_retention(ion, as_of=now)
    assert r.events_deleted == 80 and r.events_kept_by_captures == 20
    left = [e.hlc.physical_ms for e in client.list_events(ion)]
    assert left == [T0 + i * 1000 for i in range(20, 40)] + [now - 1000 + i for i in range(10)]
    # Deleting the capture frees its window.
    client.delete_capture(f"ions/{ion}/captures/keep")
    r = client.run_retention(ion, as_of=now)
    assert r.events_deleted == 20
    assert len(list(client.list_events(ion))) == 10
    assert client.get_retention_policy(ion).HasField("last_sweep_time")


# ---- export and import ---------------------------------------------------------------------


def rich_events() -> list[event_pb2.Event]:
    trace = "0123456789abcdef" * 2
    launched = event(T0 + 1, type="run.launched", run="ions/demo/runs/r1")
    launched.lifecycle.state = "LAUNCHED"
    launched.lifecycle.details.update({"seed": 7, "config": {"C": 1.0}})
    stat = event(T0 + 2, run="ions/demo/runs/r1", value=0.93)
    span = event(T0 + 3, type="span", run="ions/demo/runs/r1", trace_id=trace)
    span.span_id = "00000000000000aa"
    span.span.name = "fit"
    span.span.service_name = "trainer"
    span.span.start_time.FromMilliseconds(T0 + 3)
    span.span.end_time.FromMilliseconds(T0 + 50)
    span.span.attributes.update({"rows": 569})
    model = event(T0 + 4, type="model.logged", run="ions/demo/runs/r1")
    model.model.model_version = "models/churn/versions/1"
    model.model.sha256 = "ab" * 32
    model.model.action = "logged"
    err = event(T0 + 5, type="error")
    err.error.error_type = "ValueError"
    err.error.message = "boom"
    more = [event(T0 + 10 + i, producer="p2", pseq=i + 1, value=i) for i in range(300)]
    return [launched, stat, span, model, err, *more]


def test_export_import_round_trip(
    client: RecorderClient, ion: str, tmp_path: Path, config: Config
) -> None:
    client.append(ion, rich_events())
    client.append(ion, [event(T0 + 10_000)])  # outside the window
    client.create_capture(ion, "inc", T0, T0 + 1000, description="incident")
    path = tmp_path / "inc.tar.gz"
    stages: list[str] = []
    client.export_capture(
        f"ions/{ion}/captures/inc", path, progress=lambda p: stages.append(p.stage)
    )
    assert stages[0] == "events" and stages[-1] == "done"

    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
        spans = json.loads(tar.extractfile("spans.otlp.json").read())  # type: ignore[union-attr]
        stats_csv = tar.extractfile("stats.csv").read().decode()  # type: ignore[union-attr]
        run = json.loads(tar.extractfile("runs/r1.json").read())  # type: ignore[union-attr]
    assert {
        "capture.json",
        "events.jsonl",
        "events.csv",
        "stats.csv",
        "spans.otlp.json",
        "ion/ion.json",
        "ion/revisions/1.yaml",
        "runs/r1.json",
    } <= names
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    span = spans["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "0123456789abcdef" * 2 and span["name"] == "fit"
    assert spans["resourceSpans"][0]["resource"]["attributes"][0]["value"] == {
        "stringValue": "trainer"
    }
    assert stats_csv.splitlines()[0] == "time,run,node,name,value,step,sequence"
    assert run["spec"] == {"seed": 7, "config": {"C": 1.0}}

    data = notebook.load(path)
    assert len(data["events"]) == 305 and len(data.stats) == 301 and len(data.spans) == 1
    assert data.spans.iloc[0]["duration_ms"] == 47.0
    assert data.capture["description"] == "incident"
    assert data.runs["r1"]["spec"]["seed"] == 7

    original = list(client.list_events(ion, end=T0 + 1000))
    with other_deployment(config, tmp_path) as other:
        far = RecorderClient(other.recorder_target)
        result = far.import_capture(path)
        assert result.events_imported == 305 and result.events_already_present == 0
        assert result.capture.imported_from == f"ions/{ion}/captures/inc"
        restored = list(far.list_events(ion))
        assert [content(e) for e in restored] == [content(e) for e in original]
        # The ION came along: the other registry knows it now.
        again = far.import_capture(path, capture_id="inc-2")
        assert again.events_imported == 0 and again.events_already_present == 305
        with pytest.raises(errors.AlreadyExists):
            far.import_capture(path)
        path2 = tmp_path / "again.tar.gz"
        far.export_capture(f"ions/{ion}/captures/inc", path2)
        with tarfile.open(path) as a, tarfile.open(path2) as b:
            first = [json.loads(x) for x in a.extractfile("events.jsonl").read().splitlines()]  # type: ignore[union-attr]
            second = [json.loads(x) for x in b.extractfile("events.jsonl").read().splitlines()]  # type: ignore[union-attr]
        strip = ("sequence", "name", "receive_time")
        assert [{k: v for k, v in d.items() if k not in strip} for d in first] == [
            {k: v for k, v in d.items() if k not in strip} for d in second
        ]
        assert [d["receive_time"] for d in first] == [d["receive_time"] for d in second]


def test_import_refuses_a_tampered_archive(
    client: RecorderClient, ion: str, tmp_path: Path
) -> None:
    client.append(ion, [event(T0 + i) for i in range(10)])
    client.create_capture(ion, "c", T0, T0 + 100)
    path = tmp_path / "c.tar.gz"
    client.export_capture(f"ions/{ion}/captures/c", path)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(path) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "events.jsonl":
                data = data.replace(b"loss", b"LOSS", 1)
            member.size = len(data)
            import io

            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(errors.InvalidArgument) as e11:
        client.import_capture(bad, capture_id="c2")
    assert "events.jsonl" in e11.value.message
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(errors.InvalidArgument):
        client.import_capture(tmp_path / "junk.tar.gz")


def test_service_filter_window_check() -> None:
    with pytest.raises(domain_errors.InvalidArgument) as e12:
        EventFilter(start_ms=10, end_ms=5).check()
    assert e12.value.field == "filter.end_time"
    assert make_filter(kinds=["stat"]).kinds == [event_pb2.EVENT_KIND_STAT]


def test_export_can_include_model_bytes(
    client: RecorderClient, ion: str, registry_channel: grpc.Channel, tmp_path: Path
) -> None:
    from relive.client.registry import RegistryClient

    version = RegistryClient(registry_channel).upload_model("churn", b"model-bytes" * 100)
    used = event(T0 + 5, type="model.logged")
    used.model.model_version = version.name
    used.model.action = "logged"
    client.append(ion, [used])
    client.create_capture(ion, "m", T0, T0 + 10)
    path = tmp_path / "m.tar.gz"
    client.export_capture(f"ions/{ion}/captures/m", path, include_models=True)
    safe = version.name.replace("/", "_")
    with tarfile.open(path) as tar:
        blob = tar.extractfile(f"models/{safe}.bin").read()  # type: ignore[union-attr]
        meta = json.loads(tar.extractfile(f"models/{safe}.json").read())  # type: ignore[union-attr]
        capture = json.loads(tar.extractfile("capture.json").read())  # type: ignore[union-attr]
    assert blob == b"model-bytes" * 100
    assert meta["sha256"] == version.sha256
    assert capture["model_versions"] == [version.name]


def test_the_periodic_sweep_runs_by_itself(
    config: Config, registry_server: Server, registry_channel: grpc.Channel
) -> None:
    from relive.recorder.server import create_server

    ion = create_ion(registry_channel, "swept")
    server, _ = create_server(
        config.with_(registry_endpoint=target(registry_server), retention_interval_s=0.2)
    )
    server.start()
    try:
        client = RecorderClient(target(server))
        now = int(time.time() * 1000)
        client.append(ion, [event(now - 30 * 86_400_000, producer="old"), event(now)])
        appended = dt.datetime.now(dt.UTC)
        deadline = time.monotonic() + 15

        def swept() -> bool:
            # The sweep deletes first and stamps last_sweep_time after, so wait for both.
            policy = client.get_retention_policy(ion)
            return (
                len(list(client.list_events(ion))) == 1
                and policy.HasField("last_sweep_time")
                and policy.last_sweep_time.ToDatetime(dt.UTC) >= appended
            )

        while not swept():
            assert time.monotonic() < deadline, "the periodic sweep did not run"
            time.sleep(0.1)
    finally:
        server.stop(0.5)


def test_sink_reports_a_batch_refused_whole(recorder_server: Server) -> None:
    with EventSink(target(recorder_server), "no-such-ion") as sink:
        sink.log_stat("x", 1.0)
    assert sink.stats.stored == 0 and sink.stats.failed == 1
    assert "does not exist" in sink.failures[0].reason


def test_import_checks_the_capture_name_first(
    client: RecorderClient, ion: str, tmp_path: Path
) -> None:
    client.append(ion, [event(T0)])
    client.create_capture(ion, "c", T0, T0 + 10)
    path = client.export_capture(f"ions/{ion}/captures/c", tmp_path / "c.tar.gz")
    with pytest.raises(errors.InvalidArgument) as e:
        client.import_capture(path, capture_id="Bad Name")
    assert e.value.field == "header.capture_id"
