"""Property tests of the recorder: causal order, retention, and export/import round trips."""

from __future__ import annotations

import hashlib
import itertools
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_recorder_support import T0, content, create_ion, event, other_deployment

from relive.client.recorder import RecorderClient
from relive.core.config import Config
from relive.hlc import HybridLogicalClock, Stamp
from relive.recorder.v1 import event_pb2

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ions = itertools.count(1)


def new_ion(registry: grpc.Channel, prefix: str) -> str:
    return create_ion(registry, f"{prefix}-{next(_ions)}")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    producers = draw(st.integers(2, 4))
    skews = draw(st.lists(st.integers(-5000, 5000), min_size=producers, max_size=producers))
    # Each op: (producer, target) where target == producer means a local event.
    ops = draw(
        st.lists(
            st.tuples(st.integers(0, producers - 1), st.integers(0, producers - 1)),
            min_size=5,
            max_size=60,
        )
    )
    steps = draw(st.lists(st.integers(0, 3), min_size=len(ops), max_size=len(ops)))
    return skews, ops, steps


@SETTINGS
@given(history=histories(), data=st.data())
def test_causal_order_survives_skew_and_interleaving(
    recorder_channel: grpc.Channel, registry_channel: grpc.Channel, history, data
) -> None:
    skews, ops, steps = history
    client = RecorderClient(recorder_channel)
    ion = new_ion(registry_channel, "order")
    now = [T0]

    def wall(skew: int) -> Callable[[], int]:
        return lambda: now[0] + skew

    clocks = [HybridLogicalClock(physical=wall(s)) for s in skews]
    pseq = [0] * len(skews)
    queues: list[list[event_pb2.Event]] = [[] for _ in skews]
    causal: list[tuple[tuple[str, int], tuple[str, int]]] = []

    def emit(p: int, stamp: Stamp) -> tuple[str, int]:
        pseq[p] += 1
        e = event(stamp.physical_ms, logical=stamp.logical, producer=f"p{p}", pseq=pseq[p])
        queues[p].append(e)
        return (f"p{p}", pseq[p])

    for (src, dst), step in zip(ops, steps, strict=True):
        now[0] += step
        sent = emit(src, clocks[src].now())
        if dst != src:
            h = queues[src][-1].hlc
            received = emit(dst, clocks[dst].update(Stamp(h.physical_ms, h.logical)))
            causal.append((sent, received))
    # Deliver: each producer in order, in random batches, producers interleaved at random.
    batches: list[list[event_pb2.Event]] = []
    cursors = [0] * len(queues)
    while any(c < len(q) for c, q in zip(cursors, queues, strict=True)):
        live = [p for p, q in enumerate(queues) if cursors[p] < len(q)]
        p = data.draw(st.sampled_from(live))
        size = data.draw(st.integers(1, len(queues[p]) - cursors[p]))
        batches.append(queues[p][cursors[p] : cursors[p] + size])
        cursors[p] += size
    previous_max = 0
    for batch in batches:
        r = client.append(ion, batch)
        assert r.stored_count == len(batch)
        assert min(r.sequences) > previous_max
        previous_max = max(r.sequences)

    page = data.draw(st.integers(3, 50))
    timeline = list(client.list_events(ion, page_size=page))
    position = {(e.producer_id, e.producer_sequence): i for i, e in enumerate(timeline)}
    assert len(position) == sum(len(q) for q in queues)
    for a, b in causal:
        assert position[a] < position[b]
    for p in range(len(queues)):
        mine = [e.producer_sequence for e in timeline if e.producer_id == f"p{p}"]
        assert mine == sorted(mine)
    arrival = [e.sequence for e in client.list_events(ion, order="arrival", page_size=page)]
    assert arrival == sorted(set(arrival)) and len(arrival) == len(timeline)


DAY = 86_400_000


@SETTINGS
@given(
    offsets=st.lists(st.integers(0, 5 * DAY), min_size=5, max_size=80),
    windows=st.lists(
        st.tuples(st.integers(0, 5 * DAY), st.integers(1, DAY)), min_size=0, max_size=3
    ),
    sweeps=st.lists(st.tuples(st.integers(0, 3 * DAY), st.booleans()), min_size=1, max_size=3),
)
def test_retention_never_deletes_captured_and_deletes_the_rest(
    recorder_channel: grpc.Channel, registry_channel: grpc.Channel, offsets, windows, sweeps
) -> None:
    client = RecorderClient(recorder_channel)
    ion = new_ion(registry_channel, "ret")
    client.set_retention(ion, 1)
    events = [event(T0 + o, producer="p", pseq=i + 1) for i, o in enumerate(sorted(offsets))]
    half = len(events) // 2
    client.append(ion, events[half:])
    client.append(ion, events[:half])
    live: dict[str, tuple[int, int]] = {}
    for k, (start, length) in enumerate(windows):
        client.create_capture(ion, f"w{k}", T0 + start, T0 + start + length)
        live[f"w{k}"] = (T0 + start, T0 + start + length)
    alive = {e.producer_sequence: e.hlc.physical_ms for e in events}
    as_of = T0 + DAY
    for advance, drop_one in sweeps:
        as_of += advance
        if drop_one and live:
            name = sorted(live)[0]
            client.delete_capture(f"ions/{ion}/captures/{name}")
            del live[name]
        cutoff = as_of - DAY
        r = client.run_retention(ion, as_of=as_of)
        doomed = {
            p
            for p, ms in alive.items()
            if ms < cutoff and not any(s <= ms < e for s, e in live.values())
        }
        assert r.events_deleted == len(doomed)
        for p in doomed:
            del alive[p]
        left = {e.producer_sequence: e.hlc.physical_ms for e in client.list_events(ion)}
        assert left == alive


# Runs that several events share, so a window can hold a run launched before it.
SHARED_RUNS = ["ions/x/runs/ra", "ions/x/runs/rb"]


@st.composite
def rich_event(draw: st.DrawFn, pseq: int, ion: str, payloads: dict[str, bytes]) -> event_pb2.Event:
    """An event of any kind; a ``stream.batch`` names a recorded input whose bytes it adds
    to ``payloads`` (name -> bytes), for the test to store."""
    ms = T0 + draw(st.integers(0, 5000))
    kinds = ["stat", "log", "custom", "span", "run.launched", "launch", "batch"]
    kind = draw(st.sampled_from(kinds))
    producer = draw(st.sampled_from(["a", "b"]))
    e = event(ms, producer=producer, pseq=pseq, type="stat" if kind == "stat" else "log")
    if kind == "stat":
        e.stat.value = draw(st.floats(-1e6, 1e6, allow_nan=False))
        e.stat.labels["k"] = draw(st.text("abc", max_size=3))
        e.run = draw(st.sampled_from(["", *SHARED_RUNS]))
    elif kind == "log":
        e.log.message = draw(st.text(max_size=20))
    elif kind == "custom":
        e.type = "custom.thing"
        e.custom.data.update({"x": draw(st.integers(-100, 100)), "s": draw(st.text(max_size=5))})
    elif kind == "span":
        e.type = "span"
        e.trace_id = "ab" * 16
        e.span_id = f"{pseq:016x}"
        e.span.name = "op"
        e.span.start_time.FromMilliseconds(ms)
        e.span.end_time.FromMilliseconds(ms + draw(st.integers(0, 100)))
    elif kind == "batch":
        data = draw(st.binary(max_size=200))
        name = f"ions/{ion}/inputs/{hashlib.sha256(data).hexdigest()}"
        payloads[name] = data
        e.type = "stream.batch"
        e.run = draw(st.sampled_from(SHARED_RUNS))
        e.custom.data.update({"batch": pseq, "input": name})
    else:
        e.type = "run.launched"
        e.run = (
            f"ions/x/runs/r{pseq}" if kind == "run.launched" else draw(st.sampled_from(SHARED_RUNS))
        )
        e.lifecycle.details.update({"seed": draw(st.integers(0, 9))})
    return e


def test_export_import_round_trip_property(
    recorder_channel: grpc.Channel, registry_channel: grpc.Channel, config: Config, tmp_path: Path
) -> None:
    client = RecorderClient(recorder_channel)
    with other_deployment(config, tmp_path) as other:
        far = RecorderClient(other.recorder_target)

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def round_trip(data: st.DataObject) -> None:
            ion = new_ion(registry_channel, "exp")
            n = data.draw(st.integers(1, 40))
            payloads: dict[str, bytes] = {}
            events = [data.draw(rich_event(i + 1, ion, payloads)) for i in range(n)]
            # Producer sequences must grow with each producer's clock.
            by_producer: dict[str, list[event_pb2.Event]] = {}
            for e in events:
                by_producer.setdefault(e.producer_id, []).append(e)
            for mine in by_producer.values():
                mine.sort(key=lambda e: (e.hlc.physical_ms, e.producer_sequence))
                for k, e in enumerate(mine, 1):
                    e.producer_sequence = k
            for payload in payloads.values():
                client.create_recorded_input(
                    ion, payload, kind="batch", media_type="application/octet-stream"
                )
            client.append(ion, events)
            lo = T0 + data.draw(st.integers(0, 2500))
            hi = lo + data.draw(st.integers(1, 3000))
            client.create_capture(ion, "cap", lo, hi)
            path = tmp_path / f"{ion}.tar.gz"
            client.export_capture(f"ions/{ion}/captures/cap", path)
            result = far.import_capture(path)
            original = list(client.list_events(ion, start=lo, end=hi))
            # A run with an event in the window and its launch before it: the latest such
            # launch comes along.
            before = list(client.list_events(ion, end=lo, types=["run.launched"]))
            inside = {e.run for e in original if e.run}
            launched_inside = {e.run for e in original if e.type == "run.launched"}
            pinned = {e.run: e for e in before if e.run in inside - launched_inside}
            assert result.events_imported == len(original) + len(pinned)
            restored = list(far.list_events(ion, start=lo, end=hi))
            assert [content(e) for e in restored] == [content(e) for e in original]
            restored_before = list(far.list_events(ion, end=lo))
            assert [content(e) for e in restored_before] == [
                content(e)
                for e in sorted(
                    pinned.values(), key=lambda e: (e.hlc.physical_ms, e.hlc.logical, e.producer_id)
                )
            ]
            named = {str(e.custom.data["input"]) for e in original if e.type == "stream.batch"}
            for name in named:
                assert far.download_recorded_input(name) == payloads[name]
            again = tmp_path / f"{ion}-again.tar.gz"
            far.export_capture(f"ions/{ion}/captures/cap", again)
            assert _events_jsonl(again) == _events_jsonl(path)
            assert _carried(again) == _carried(path)

        round_trip()


def _carried(path: Path) -> dict[str, object]:
    """What an export carries besides its events: the launch specs and the recorded inputs
    (less what the storing deployment assigns: event sequences and names)."""
    out: dict[str, object] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith("inputs/"):
                out[member.name] = data
            elif member.name.startswith("runs/"):
                run = json.loads(data)
                for d in [run["event"], *run.get("datasets", [])]:
                    d.pop("sequence", None)
                    d.pop("name", None)
                out[member.name] = run
    return out


def _events_jsonl(path: Path) -> list[dict[str, object]]:
    with tarfile.open(path) as tar:
        raw = tar.extractfile("events.jsonl").read()  # type: ignore[union-attr]
    out = []
    for line in raw.splitlines():
        d = json.loads(line)
        for k in ("sequence", "name"):
            d.pop(k, None)
        out.append(d)
    return out


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(-50, 50),  # the wall clock may go backwards
            st.one_of(st.none(), st.tuples(st.integers(0, 2000), st.integers(0, 5))),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_hlc_stamps_increase_and_follow_what_they_saw(steps) -> None:
    wall = [1000]
    clock = HybridLogicalClock(physical=lambda: wall[0])
    last = Stamp(0, 0)
    for delta, remote in steps:
        wall[0] = max(0, wall[0] + delta)
        if remote is None:
            stamp = clock.now()
        else:
            stamp = clock.update(Stamp(*remote))
            assert stamp > Stamp(*remote)
        assert stamp > last
        assert stamp.physical_ms >= wall[0]
        last = stamp
    assert Stamp.decode(last.encode()) == last
