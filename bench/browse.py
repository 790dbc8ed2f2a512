"""Browsing a large timeline, printed as one JSON object:

- page_p50_ms / page_p99_ms: one ListEvents page of 1,000 events at a random window;
- read_100k_s: reading 100,000 events in timeline order (pages of 10,000);
- capture_1k_s / capture_1m_s: creating a capture on a 1,000-event timeline and on the
  large one (capture_ratio is their quotient: a capture is a marker, never a copy).

The main timeline has one producer; ``two_producers`` repeats the page and read figures on a
timeline where two producers write at the same instants (every bucket overlaps another).
Timelines are loaded straight through the recorder's service (same storage path as
StreamEvents, without the network), then read over gRPC from a recorder child process.

    python bench/browse.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recorder_stack import RecorderStack

from relive.client.recorder import RecorderClient
from relive.recorder.service import RecorderService
from relive.recorder.store import Store
from relive.recorder.v1 import recorder_pb2

T0 = 1_790_000_000_000


def load(service: RecorderService, ion: str, n: int, producers: int) -> float:
    """n events, 1 ms apart per producer, producers interleaved in time; batches of 1,000."""
    started = time.perf_counter()
    per = n // producers
    batch = 1000
    for start in range(0, per, batch):
        for p in range(producers):
            request = recorder_pb2.AppendEventsRequest(parent=f"ions/{ion}")
            for i in range(start, min(per, start + batch)):
                e = request.events.add(
                    type="stat",
                    producer_id=f"producer-{p}",
                    producer_sequence=i + 1,
                    run=f"ions/{ion}/runs/r1",
                    node=f"node-{p}",
                )
                e.hlc.physical_ms = T0 + i
                e.hlc.logical = p
                s = e.stat
                s.name = "loss"
                s.value = i * 0.001
                s.step = i
            result = service.append(request.parent, request.events, batch_bytes=request.ByteSize())
            assert result.stored == len(request.events), result.rejections[:1]
    return n / (time.perf_counter() - started)


def measure(
    client: RecorderClient, ion: str, span_ms: int, samples: int, rng: random.Random
) -> tuple[list[float], float]:
    """Page latencies (ms) at random windows, and the median time to read 100,000 events."""
    client.list_events_page(ion, page_size=10)  # warm the channel
    pages = []
    for _ in range(samples):
        flt = recorder_pb2.EventFilter()
        flt.start_time.FromMilliseconds(T0 + rng.randrange(0, span_ms - 2000))
        began = time.perf_counter()
        page = client.list_events_page(ion, filter=flt, page_size=1000)
        pages.append((time.perf_counter() - began) * 1000)
        assert len(page.events) == 1000
    reads = []
    for _ in range(3):
        flt = recorder_pb2.EventFilter()
        flt.start_time.FromMilliseconds(T0 + rng.randrange(0, max(1, span_ms // 4)))
        began = time.perf_counter()
        got = 0
        for _e in client.list_events(ion, filter=flt, page_size=10_000):
            got += 1
            if got == 100_000:
                break
        reads.append(time.perf_counter() - began)
        assert got == 100_000
    pages.sort()
    return pages, statistics.median(reads)


def p(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 60 s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = 300_000 if args.quick else 1_000_000
    n_mixed = 200_000 if args.quick else 400_000
    samples = 40 if args.quick else 100
    rng = random.Random(7)
    with RecorderStack() as stack:
        assert stack.config is not None
        big, small, mixed = (stack.create_ion(x) for x in ("big", "small", "mixed"))
        store = Store(stack.config)
        service = RecorderService(stack.config, store, registry=None)
        load_rate = load(service, big, n, 1)
        load(service, small, 1000, 1)
        load(service, mixed, n_mixed, 2)
        with RecorderClient(stack.recorder_target) as client:
            pages, read_100k = measure(client, big, n, samples, rng)
            mixed_pages, mixed_read = measure(client, mixed, n_mixed // 2, samples // 2, rng)
            caps: dict[str, list[float]] = {big: [], small: []}
            for k in range(7):
                for ion in (small, big):
                    began = time.perf_counter()
                    client.create_capture(ion, f"c{k}", T0 + 100, T0 + 900)
                    caps[ion].append(time.perf_counter() - began)
        store.close()
    capture_1k = statistics.median(caps[small])
    capture_1m = statistics.median(caps[big])
    print(
        json.dumps(
            {
                "events": n,
                "page_p50_ms": p(pages, 0.5),
                "page_p99_ms": p(pages, 0.99),
                "read_100k_s": round(read_100k, 3),
                "capture_1k_s": round(capture_1k, 4),
                "capture_1m_s": round(capture_1m, 4),
                "capture_ratio": round(capture_1m / capture_1k, 2),
                "load_events_per_s": round(load_rate),
                # The same reads on a timeline where two producers write at the same instants,
                # so every bucket overlaps another and pages are merged event by event.
                "two_producers": {
                    "events": n_mixed,
                    "page_p50_ms": p(mixed_pages, 0.5),
                    "page_p99_ms": p(mixed_pages, 0.99),
                    "read_100k_s": round(mixed_read, 3),
                },
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
