"""Ingest throughput, side by side in one run, printed as one JSON object:

- relive: the SDK's EventSink -> StreamEvents -> recorder (a child process) -> embedded store;
- raw: pymongo insert_many of one document per event into the same store;
- MLflow: MlflowClient.log_batch into a local SQLite store (the optional ``bench`` group).

    python bench/ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recorder_stack import RecorderStack
from pymongo import MongoClient

from relive.client.recorder import RecorderClient
from relive.client.sink import EventSink


def bench_relive(stack: RecorderStack, n: int, producers: int = 1) -> float:
    ion = stack.create_ion("ingest")
    sinks = [
        EventSink(
            stack.recorder_target,
            ion,
            run="ions/ingest/runs/r1",
            node="train",
            batch_size=2000,
            max_queue=50_000,
            window=3,
        )
        for _ in range(producers)
    ]
    # Warm up the stream.
    sinks[0].log_stat("warmup", 0.0)
    sinks[0].flush()
    per = n // producers
    started = time.perf_counter()
    for k, sink in enumerate(sinks):
        for i in range(per):
            sink.log_stat("loss", i * 0.001, step=i, labels=None)
        del k
    for sink in sinks:
        sink.close(timeout=600)
    elapsed = time.perf_counter() - started
    stored = sum(s.stats.stored for s in sinks) - 1
    assert stored == per * producers, (stored, per * producers)
    with RecorderClient(stack.recorder_target) as client:
        page = client.list_events_page(ion, page_size=1)
        assert page.events
    return stored / elapsed


def bench_raw(uri: str, n: int) -> float:
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    collection = client["bench_raw"]["events"]
    collection.drop()
    collection.create_index("seq")
    started = time.perf_counter()
    batch = []
    for i in range(n):
        batch.append(
            {
                "ion": "ions/ingest",
                "seq": i + 1,
                "producer_id": "bench-producer",
                "producer_sequence": i + 1,
                "hlc": {"physical_ms": 1_790_000_000_000 + i, "logical": 0},
                "type": "stat",
                "run": "ions/ingest/runs/r1",
                "node": "train",
                "stat": {"name": "loss", "value": i * 0.001, "step": i},
            }
        )
        if len(batch) == 1000:
            collection.insert_many(batch, ordered=False)
            batch = []
    if batch:
        collection.insert_many(batch, ordered=False)
    elapsed = time.perf_counter() - started
    client.close()
    return n / elapsed


def bench_mlflow(n: int) -> tuple[float | None, str]:
    try:
        import mlflow  # noqa: F401
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError:
        return None, "mlflow is not installed: uv sync --group bench"
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        experiment = client.create_experiment("bench", artifact_location=f"{tmp}/artifacts")
        run = client.create_run(experiment)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            metrics = [
                Metric("loss", i * 0.001, now + i, i) for i in range(start, min(n, start + 1000))
            ]
            client.log_batch(run_id, metrics=metrics)
        elapsed = time.perf_counter() - started
        client.set_terminated(run_id)
    return n / elapsed, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 60 s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_relive = 200_000 if args.quick else 1_000_000
    n_raw = 30_000 if args.quick else 60_000
    n_mlflow = 20_000 if args.quick else 100_000
    with RecorderStack() as stack:
        relive = bench_relive(stack, n_relive)
        raw = bench_raw(stack.store.uri, n_raw)
    mlflow_rate, note = bench_mlflow(n_mlflow)
    result = {
        "relive_events_per_s": round(relive),
        "raw_insert_events_per_s": round(raw),
        "mlflow_points_per_s": round(mlflow_rate) if mlflow_rate else None,
        "ratio_vs_raw": round(relive / raw, 2),
        "ratio_vs_mlflow": round(relive / mlflow_rate, 2) if mlflow_rate else None,
        "events": {"relive": n_relive, "raw": n_raw, "mlflow": n_mlflow},
        "quick": args.quick,
    }
    if note:
        result["note"] = note
    print(json.dumps(result))


if __name__ == "__main__":
    main()
