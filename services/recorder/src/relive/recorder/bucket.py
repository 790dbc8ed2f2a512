"""The bucket format: how a batch is cut into buckets, stamped, summarised, keyed and encoded.

One bucket holds up to ``BUCKET_EVENTS`` events of one ION and one producer as one
zlib-compressed serialized ``ListEventsResponse``, next to a small summary that queries prune
on. Every key a query ranges over is a string built so that one single-field index answers
it, and that sorts as the numbers it encodes do. Pure: no store, no gRPC;
docs/recorder-storage.md describes the layout.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from relive.recorder.v1 import event_pb2, recorder_pb2

# At most this many events per bucket: a page of 1,000 events touches one or two buckets.
BUCKET_EVENTS = 1000
# A bucket never spans more HLC time than the last level; its level is the first whose span
# bounds it. A window query scans each level from (start - span): tight for dense timelines,
# and late batches that span minutes do not widen every query.
LEVEL_SPANS_MS = (1_000, 60_000, 3_600_000, 86_400_000)
# Summary lists hold at most this many distinct values; more means "cannot prune".
SUMMARY_MAX = 64
SEQ_WIDTH = 19
MS_WIDTH = 15
MAX_MS = 10**MS_WIDTH - 1
# The stored form of ids a filter or a summary compares as strings.
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
# What a bucket whose document vanished (retention deleted it mid-read) holds.
EMPTY_BLOB = zlib.compress(b"", 1)

KIND_BY_ATTRIBUTE = {
    "lifecycle": event_pb2.EVENT_KIND_LIFECYCLE,
    "stat": event_pb2.EVENT_KIND_STAT,
    "model": event_pb2.EVENT_KIND_MODEL,
    "dataset": event_pb2.EVENT_KIND_DATASET,
    "human_action": event_pb2.EVENT_KIND_HUMAN_ACTION,
    "error": event_pb2.EVENT_KIND_ERROR,
    "config": event_pb2.EVENT_KIND_CONFIG,
    "span": event_pb2.EVENT_KIND_SPAN,
    "log": event_pb2.EVENT_KIND_LOG,
    "custom": event_pb2.EVENT_KIND_CUSTOM,
    None: event_pb2.EVENT_KIND_CUSTOM,
}

# Timeline order: (hlc ms, hlc logical, producer, sequence).
TimelineKey = tuple[int, int, str, int]
# An event of a batch being appended: (hlc ms, hlc logical, producer sequence, index).
Item = tuple[int, int, int, int]


def timeline_key(e: event_pb2.Event) -> TimelineKey:
    """Timeline order: (hlc, producer, sequence)."""
    h = e.hlc
    return (h.physical_ms, h.logical, e.producer_id, e.sequence)


def as_timeline_key(value: Sequence[Any]) -> TimelineKey:
    """A timeline key as stored in a summary or a page token (a list)."""
    return (int(value[0]), int(value[1]), str(value[2]), int(value[3]))


# ---- keys --------------------------------------------------------------------------------


def seq_key(ion: str, seq: int) -> str:
    return f"{ion}:{seq:0{SEQ_WIDTH}d}"


def time_prefix(ion: str, level: int, ms: int) -> str:
    """Every time key of ``level`` with min time >= ``ms`` sorts at or after this."""
    return f"{ion}:{level}:{min(max(ms, 0), MAX_MS):0{MS_WIDTH}d}"


def time_key(ion: str, level: int, ms: int, last_seq: int) -> str:
    """Unique: the min time, then the last sequence, so scans can resume after a key."""
    return f"{time_prefix(ion, level, ms)}:{last_seq:0{SEQ_WIDTH}d}"


def escape(value: str) -> str:
    """Keeps ':' (the key separator) out of free-form parts of keys."""
    return value.replace("%", "%25").replace(":", "%3A")


def producer_prefix(ion: str, producer: str) -> str:
    return f"{ion}:p:{escape(producer)}:"


def producer_key(ion: str, producer: str, pseq: int) -> str:
    return f"{producer_prefix(ion, producer)}{pseq:0{SEQ_WIDTH}d}"


def anonymous_key(ion: str, first_seq: int) -> str:
    return f"{ion}:s:{first_seq:0{SEQ_WIDTH}d}"


def level_of(span_ms: int) -> int:
    for level, bound in enumerate(LEVEL_SPANS_MS):
        if span_ms <= bound:
            return level
    return len(LEVEL_SPANS_MS) - 1


# ---- blobs -------------------------------------------------------------------------------


def encode_raw(events: Sequence[event_pb2.Event]) -> bytes:
    """Events as a serialized ListEventsResponse: a fragment a page can be built from."""
    container = recorder_pb2.ListEventsResponse()
    container.events.extend(events)
    return container.SerializeToString()


def encode_events(events: Sequence[event_pb2.Event]) -> bytes:
    return zlib.compress(encode_raw(events), 1)


def raw_events(blob: bytes) -> bytes:
    """A bucket's events as a serialized ListEventsResponse, ready to be concatenated into
    a response: protobuf concatenation appends repeated fields."""
    return zlib.decompress(blob)


def parse_events(raw: bytes) -> Any:
    container = recorder_pb2.ListEventsResponse()
    container.ParseFromString(raw)
    return container.events


def decode_events(blob: bytes) -> Any:
    """The events of a bucket, in timeline order (a repeated field of Event)."""
    return parse_events(zlib.decompress(blob))


# ---- cutting -----------------------------------------------------------------------------


def cut(items: list[Item]) -> list[list[Item]]:
    """Splits items (in timeline order) into buckets of at most BUCKET_EVENTS events whose
    HLC times span at most the last level's span."""
    out: list[list[Item]] = []
    max_span = LEVEL_SPANS_MS[-1]
    n = len(items)
    start = 0
    while start < n:
        end = min(start + BUCKET_EVENTS, n)
        first = items[start][0]
        if items[end - 1][0] - first > max_span:
            j = start
            while j < end and items[j][0] - first <= max_span:
                j += 1
            end = j
        out.append(items[start:end])
        start = end
    return out


# ---- summary -----------------------------------------------------------------------------


def summary_list(values: Iterable[str]) -> list[str] | None:
    distinct = sorted(v for v in set(values) if v)
    return distinct if len(distinct) <= SUMMARY_MAX else None


def summary(
    first: TimelineKey,
    last: TimelineKey,
    count: int,
    kinds: Iterable[int],
    types: Iterable[str],
    nodes: Iterable[str],
    runs: Iterable[str],
    traces: Iterable[str],
) -> dict[str, Any]:
    """The pruning summary of a bucket from its ends (in timeline order, which inside a
    bucket is sequence order too) and the values its events hold."""
    return {
        # Timeline keys [ms, logical, producer, sequence] of the ends, so a reader can tell
        # whether the whole bucket is inside a page without decoding it.
        "first_key": list(first),
        "last_key": list(last),
        "first_seq": first[3],
        "last_seq": last[3],
        "min_ms": first[0],
        "max_ms": last[0],
        "count": count,
        "kinds": sorted(set(kinds)),
        "types": summary_list(types),
        "nodes": summary_list(nodes),
        "runs": summary_list(runs),
        "traces": summary_list(traces),
    }


def summarize(events: Sequence[event_pb2.Event]) -> dict[str, Any]:
    """The summary of stored events (with their server fields), in timeline order."""
    return summary(
        timeline_key(events[0]),
        timeline_key(events[-1]),
        len(events),
        {int(e.kind) for e in events},
        {e.type for e in events},
        {e.node for e in events},
        {e.run for e in events},
        {e.trace_id for e in events},
    )


# ---- documents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StampContext:
    """What every event of one append is stamped with."""

    ion: str
    parent: str
    prefix: str
    stamp: timestamp_pb2.Timestamp
    restore: bool

    @classmethod
    def now(cls, ion: str, parent: str, restore: bool) -> StampContext:
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        return cls(ion, parent, f"ions/{ion}/events/", stamp, restore)


def bucket_document(
    ion: str,
    events: Sequence[event_pb2.Event],
    summary: dict[str, Any],
    pkey: str,
    producer: str,
    pfirst: int,
    plast: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """The document of one bucket; ``events`` are in timeline order with sequences set."""
    doc = dict(summary)
    level = level_of(doc["max_ms"] - doc["min_ms"])
    doc.update(
        ion=ion,
        seq_key=seq_key(ion, doc["last_seq"]),
        time_key=time_key(ion, level, doc["min_ms"], doc["last_seq"]),
        level=level,
        pkey=pkey,
        producer=producer,
        pfirst=pfirst,
        plast=plast,
        blob=encode_events(events),
        create_time=now,
    )
    return doc


def stamp_bucket(
    ctx: StampContext,
    events: Sequence[event_pb2.Event],
    part: list[Item],
    seqs: Sequence[int],
    pkey: str,
    producer: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """Stamps a bucket's events (sequence, name, ion, kind, receive time) and builds its
    document, gathering the summary's values in the same pass (the append path is hot)."""
    kinds_of = KIND_BY_ATTRIBUTE
    prefix, parent, stamp, restore = ctx.prefix, ctx.parent, ctx.stamp, ctx.restore
    kinds: set[int] = set()
    types: set[str] = set()
    nodes: set[str] = set()
    runs: set[str] = set()
    traces: set[str] = set()
    evs = []
    for (_ms, _lg, _p, i), seq in zip(part, seqs, strict=True):
        e = events[i]
        e.sequence = seq
        e.name = prefix + str(seq)
        e.ion = parent
        k = kinds_of[e.WhichOneof("attributes")]
        e.kind = k
        kinds.add(k)
        if not restore or not e.HasField("receive_time"):
            e.receive_time.CopyFrom(stamp)
        types.add(e.type)
        nodes.add(e.node)
        runs.add(e.run)
        traces.add(e.trace_id)
        evs.append(e)
    first, last = part[0], part[-1]
    pseqs = [it[2] for it in part] if producer else [0]
    made = summary(
        (first[0], first[1], producer, seqs[0]),
        (last[0], last[1], producer, seqs[-1]),
        len(part),
        kinds,
        types,
        nodes,
        runs,
        traces,
    )
    return bucket_document(ctx.ion, evs, made, pkey, producer, min(pseqs), max(pseqs), now)


def rewritten(
    doc: dict[str, Any], events: Sequence[event_pb2.Event], now: dt.datetime
) -> dict[str, Any]:
    """The fields that change when a bucket keeps only ``events`` (a subset, in timeline
    order). seq_key and pkey stay, as valid bounds, and so does the sequence range's upper
    end, which seq_key encodes; time_key moves up to the new min time at the same level."""
    update = summarize(events)
    level = int(doc.get("level", 0))
    update.update(
        time_key=time_key(doc["ion"], level, update["min_ms"], int(doc["last_seq"])),
        blob=encode_events(events),
        rewrite_time=now,
        last_seq=int(doc["last_seq"]),
    )
    return update
