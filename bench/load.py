"""Load: producers stream events through the SDK while users list, watch and capture.

20 producers (threads spread over a few processes, each with its own EventSink and producer
id) send at a steady rate for 60 seconds (``--quick``: 15 s). Meanwhile users page through
the recent window with ListEvents, tail the timeline with WatchEvents, and make, read and
list captures. At the end every sink is flushed and the stored events are counted by
(producer id, producer sequence) through ListEvents. Prints one JSON object:

- ``events_sent``, ``events_stored``, ``lost`` (sent but not stored), ``duplicates``;
- ``ack_p50_ms``, ``ack_p99_ms``: from the moment an event is handed to the sink to the
  moment the recorder acknowledged its batch;
- ``events_per_s``: stored events over the streaming time;
- latencies of the users' calls, how many live events the watcher saw, and so on.

    python bench/load.py [--quick] [--producers 20] [--seconds 60] [--rate 500]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from relive.client.recorder import RecorderClient, make_filter
from relive.client.sink import EventSink
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc

TICK_S = 0.01


@dataclass
class ProducerResult:
    producer_id: str
    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    reconnects: int = 0
    ack_ms: list[float] = field(default_factory=list)
    error: str = ""
    started: float = 0.0
    finished: float = 0.0


def _produce(
    target: str,
    ion: str,
    producer_id: str,
    seconds: float,
    rate: float,
    result: ProducerResult,
    sample_every: int,
) -> None:
    """Sends ``rate`` events a second for ``seconds``, and measures emit-to-ack latency.

    A sink acknowledges its batches in order, so once ``stats.acknowledged`` reaches n, every
    event up to the n-th was acknowledged; a watcher thread turns that into latencies.
    """
    sink = EventSink(target, ion, producer_id=producer_id, max_queue=200_000, max_backoff_s=0.5)
    emitted_at: list[float] = []
    done = threading.Event()

    def watch_acks() -> None:
        seen = 0
        while True:
            finished = done.is_set()
            acked = sink.stats.acknowledged
            now = time.perf_counter()
            for i in range(seen, min(acked, len(emitted_at))):
                if i % sample_every == 0:
                    result.ack_ms.append((now - emitted_at[i]) * 1000)
            seen = max(seen, min(acked, len(emitted_at)))
            if finished and seen >= len(emitted_at):
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_acks, daemon=True)
    watcher.start()
    result.started = time.time()
    per_tick = rate * TICK_S
    owed = 0.0
    start = time.perf_counter()
    next_tick = start
    try:
        while time.perf_counter() - start < seconds:
            owed += per_tick
            n = int(owed)
            owed -= n
            for _ in range(n):
                emitted_at.append(time.perf_counter())
                step = len(emitted_at)
                sink.log_stat("load", float(step % 997), step=step, node=f"node-{step % 4}")
            next_tick += TICK_S
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        stats = sink.close(timeout=300)
        result.finished = time.time()
        result.stored, result.duplicates = stats.stored, stats.duplicates
        result.failed, result.reconnects = stats.failed, stats.reconnects
    except Exception as e:  # reported, so the run still prints its numbers
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.sent = len(emitted_at)
        done.set()
        watcher.join(60)


def _worker(
    target: str,
    ion: str,
    ids: list[str],
    seconds: float,
    rate: float,
    sample_every: int,
    out: Any,
) -> None:
    """One process: a thread per producer id; sends back a list of ProducerResult dicts."""
    logging.basicConfig(level=logging.WARNING)
    results = [ProducerResult(pid) for pid in ids]
    threads = [
        threading.Thread(target=_produce, args=(target, ion, pid, seconds, rate, r, sample_every))
        for pid, r in zip(ids, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put([asdict(r) for r in results])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


class Users:
    """People using the recorder while it ingests: listing, watching, capturing."""

    def __init__(self, target: str, ion: str) -> None:
        self.target = target
        self.ion = ion
        self.stop = threading.Event()
        self.list_ms: list[float] = []
        self.capture_ms: list[float] = []
        self.watch_events = 0
        self.watch_caught_up = False
        self.captures = 0
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._guard, args=(fn,), daemon=True)
            for fn in (self._lister, self._lister, self._watcher, self._capturer)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as e:
            self.errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")

    def _lister(self) -> None:
        with RecorderClient(self.target) as client:
            while not self.stop.is_set():
                now = dt.datetime.now(dt.UTC)
                t0 = time.perf_counter()
                window = make_filter(start=now - dt.timedelta(seconds=5), end=now)
                page = client.list_events_page(self.ion, filter=window, page_size=1000)
                if page.next_page_token:  # and the next page, with the cursor
                    client.list_events_page(
                        self.ion, filter=window, page_size=1000, page_token=page.next_page_token
                    )
                self.list_ms.append((time.perf_counter() - t0) * 1000)
                self.stop.wait(0.2)

    def _watcher(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = recorder_pb2_grpc.RecorderServiceStub(channel)
            call = stub.WatchEvents(recorder_pb2.WatchEventsRequest(parent=f"ions/{self.ion}"))
            threading.Thread(target=lambda: (self.stop.wait(), call.cancel()), daemon=True).start()
            try:
                for response in call:
                    self.watch_events += len(response.events)
                    self.watch_caught_up |= response.caught_up
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    raise

    def _capturer(self) -> None:
        with RecorderClient(self.target) as client:
            k = 0
            while not self.stop.wait(1.0):
                now = dt.datetime.now(dt.UTC)
                t0 = time.perf_counter()
                cap = client.create_capture(
                    self.ion, f"load-{k}", now - dt.timedelta(seconds=5), now
                )
                client.get_capture(cap.name)
                list(client.list_captures(self.ion))
                self.capture_ms.append((time.perf_counter() - t0) * 1000)
                self.captures += 1
                k += 1


def count_stored(target: str, ion: str) -> Counter[tuple[str, int]]:
    """Stored events by (producer id, producer sequence), through ListEvents."""
    counts: Counter[tuple[str, int]] = Counter()
    with RecorderClient(target, timeout=120) as client:
        for e in client.list_events(ion, order="arrival", page_size=10_000):
            if e.producer_id.startswith("load-"):
                counts[(e.producer_id, e.producer_sequence)] += 1
    return counts


def run_load(
    target: str,
    ion: str,
    *,
    producers: int = 20,
    seconds: float = 60.0,
    rate: float = 500.0,
    processes: int = 4,
    sample_every: int = 10,
) -> dict[str, Any]:
    """Runs the load against a recorder at ``target`` on an existing ION; returns the report."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ids = [f"load-{k:02d}" for k in range(producers)]
    groups = [ids[i::processes] for i in range(processes) if ids[i::processes]]
    workers = [
        ctx.Process(target=_worker, args=(target, ion, g, seconds, rate, sample_every, out))
        for g in groups
    ]
    users = Users(target, ion)
    users.start()
    started = time.perf_counter()
    for w in workers:
        w.start()
    results: list[dict[str, Any]] = []
    for _ in workers:
        results.extend(out.get(timeout=seconds + 600))
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join(30)
    time.sleep(0.5)  # the watcher's last live events
    users.finish()

    counts = count_stored(target, ion)
    sent = sum(r["sent"] for r in results)
    expected = {(r["producer_id"], i) for r in results for i in range(1, r["sent"] + 1)}
    stored_unique = set(counts)
    acks = [ms for r in results for ms in r["ack_ms"]]
    # Streaming time: from the first event sent to the last one acknowledged.
    streamed = max(r["finished"] for r in results) - min(r["started"] for r in results)
    return {
        "producers": producers,
        "seconds": seconds,
        "rate_per_producer": rate,
        "events_sent": sent,
        "events_stored": sum(counts.values()),
        "lost": len(expected - stored_unique),
        "duplicates": sum(c - 1 for c in counts.values()),
        "unexpected": len(stored_unique - expected),
        "acknowledged": sum(r["stored"] + r["duplicates"] for r in results),
        "refused": sum(r["failed"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
        "ack_p50_ms": _percentile(acks, 0.50),
        "ack_p99_ms": _percentile(acks, 0.99),
        "ack_max_ms": _percentile(acks, 1.0),
        "events_per_s": round(sum(counts.values()) / max(streamed, 1e-9), 1),
        "streamed_s": round(streamed, 2),
        "elapsed_s": round(elapsed, 2),
        "list_calls": len(users.list_ms),
        "list_p50_ms": _percentile(users.list_ms, 0.50),
        "list_p99_ms": _percentile(users.list_ms, 0.99),
        "captures": users.captures,
        "capture_p50_ms": _percentile(users.capture_ms, 0.50),
        "watch_events": users.watch_events,
        "watch_caught_up": users.watch_caught_up,
        "user_errors": users.errors,
        "producer_errors": [r["error"] for r in results if r["error"]],
        "ack_mean_ms": round(statistics.fmean(acks), 2) if acks else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="stream for 15 s instead of 60")
    parser.add_argument("--producers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s per producer")
    parser.add_argument("--processes", type=int, default=4, help="producer processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    seconds = args.seconds if args.seconds is not None else (15.0 if args.quick else 60.0)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _recorder_stack import RecorderStack

    with RecorderStack() as stack:
        ion = stack.create_ion("load")
        report = run_load(
            stack.recorder_target,
            ion,
            producers=args.producers,
            seconds=seconds,
            rate=args.rate,
            processes=args.processes,
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
