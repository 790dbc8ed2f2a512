"""Builds stored bucket documents the way the recorder's writer does, without a store.

Each producer's events are sorted in timeline order, given a contiguous run of sequences, cut
into buckets and stamped with ``relive.recorder.bucket``, so the documents are exactly what
``insert_buckets`` would store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from relive.recorder import bucket as bk
from relive.recorder.bucket import Item, StampContext, TimelineKey, timeline_key
from relive.recorder.v1 import event_pb2

T0 = 1_700_000_000_000
ION = "demo"
PARENT = f"ions/{ION}"
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def event(
    ms: int,
    logical: int = 0,
    *,
    producer: str = "p",
    pseq: int = 0,
    type: str = "stat.loss",
    node: str = "",
    run: str = "",
    trace_id: str = "",
    event_id: str = "",
) -> event_pb2.Event:
    e = event_pb2.Event(
        type=type,
        producer_id=producer,
        producer_sequence=pseq,
        node=node,
        run=run,
        trace_id=trace_id,
        event_id=event_id,
    )
    e.hlc.physical_ms = ms
    e.hlc.logical = logical
    e.stat.value = 0.5
    return e


def items_of(events: Sequence[event_pb2.Event]) -> list[Item]:
    """The writer's items, in timeline order."""
    return sorted(
        (e.hlc.physical_ms, e.hlc.logical, e.producer_sequence, i) for i, e in enumerate(events)
    )


def stamp_parts(
    events: Sequence[event_pb2.Event],
    parts: Sequence[list[Item]],
    first_seq: int,
    producer: str,
    ctx: StampContext | None = None,
) -> list[dict[str, Any]]:
    """Stamps ``parts`` (in timeline order) into bucket documents from ``first_seq`` on."""
    ctx = ctx or StampContext.now(ION, PARENT, restore=False)
    docs = []
    seq = first_seq
    for part in parts:
        seqs = range(seq, seq + len(part))
        seq += len(part)
        pkey = (
            bk.producer_key(ION, producer, min(it[2] for it in part))
            if producer
            else bk.anonymous_key(ION, seqs[0])
        )
        docs.append(bk.stamp_bucket(ctx, events, part, seqs, pkey, producer, NOW))
    return docs


def timeline(
    batches: Sequence[tuple[str, Sequence[tuple[int, int]], Sequence[int]]],
) -> tuple[list[dict[str, Any]], list[event_pb2.Event]]:
    """Buckets of several producers' batches, appended one after another.

    Each batch is (producer, [(ms offset, logical)], bucket sizes); the sizes cut the batch in
    timeline order (what is left after the sizes is one more bucket). An event's type is
    ``t<offset % 3>`` and its node ``n<offset % 5>``, for filters to pick. Returns the documents
    by min time, as a timeline read scans them, and every stamped event."""
    docs: list[dict[str, Any]] = []
    stamped: list[event_pb2.Event] = []
    next_seq = 1
    pseqs: dict[str, int] = {}
    for producer, times, sizes in batches:
        events = []
        for offset, logical in times:
            pseqs[producer] = pseqs.get(producer, 0) + 1
            events.append(
                event(
                    T0 + offset,
                    logical,
                    producer=producer,
                    pseq=pseqs[producer],
                    type=f"t{offset % 3}",
                    node=f"n{offset % 5}",
                )
            )
        items = items_of(events)
        parts: list[list[Item]] = []
        start = 0
        for size in sizes:
            if start < len(items):
                parts.append(items[start : start + size])
                start += size
        if start < len(items):
            parts.append(items[start:])
        docs.extend(stamp_parts(events, parts, next_seq, producer))
        next_seq += len(items)
        stamped.extend(events)
    docs.sort(key=lambda d: d["min_ms"])
    return docs, stamped


def blob_of(doc: dict[str, Any]) -> bytes:
    return bytes(doc["blob"])


def keys(events: Sequence[event_pb2.Event]) -> list[TimelineKey]:
    return [timeline_key(e) for e in events]
