"""The recorder's domain: append, order, list, watch, captures, retention. It knows no gRPC.

Events are ``relive.recorder.v1.Event`` messages end to end: the producer serializes them
once, the store keeps them serialized in compressed buckets, and readers get them back
without any per-field mapping.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import itertools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any

from google.protobuf import timestamp_pb2

from relive.core import errors, identity
from relive.core.config import Config
from relive.core.names import check_id, decode_token, encode_token, parse_name
from relive.recorder import store as st
from relive.recorder.registry_link import Registry
from relive.recorder.v1 import event_pb2

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 7
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
DAY_MS = 86_400_000
# How long a live tail waits for a sequence gap (an append still in flight) to fill.
GAP_WAIT_S = 1.0
# A claim on an event_id whose bucket is missing for this long is taken over (its writer died).
CLAIM_TAKEOVER_S = 30.0
LEVELS_TTL_S = 2.0
MAX_TYPE_LEN = 256
MAX_PRODUCER_LEN = 256
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

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

ORDER_TIMELINE = "timeline"
ORDER_ARRIVAL = "arrival"

TimelineKey = tuple[int, int, str, int]
# An event of a batch being appended: (hlc ms, hlc logical, producer sequence, index).
Item = tuple[int, int, int, int]


@dataclass(frozen=True)
class _StampContext:
    ion: str
    parent: str
    prefix: str
    stamp: timestamp_pb2.Timestamp
    restore: bool


def timeline_key(e: event_pb2.Event) -> TimelineKey:
    """Timeline order: (hlc, producer, sequence)."""
    h = e.hlc
    return (h.physical_ms, h.logical, e.producer_id, e.sequence)


def _ms_of(e: event_pb2.Event) -> int:
    return int(e.hlc.physical_ms)


def _seq_of(e: event_pb2.Event) -> int:
    return int(e.sequence)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def datetime_to_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


# ---- filters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Which events to read; empty fields do not filter. The window is on HLC time."""

    start_ms: int | None = None
    end_ms: int | None = None
    kinds: frozenset[int] = frozenset()
    types: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    runs: frozenset[str] = frozenset()
    trace_id: str = ""

    def check(self, field_prefix: str = "filter") -> EventFilter:
        if self.start_ms is not None and self.end_ms is not None and self.end_ms < self.start_ms:
            raise errors.InvalidArgument(
                f"{field_prefix}.end_time is before {field_prefix}.start_time",
                field=f"{field_prefix}.end_time",
            )
        if self.trace_id and not HEX32.match(self.trace_id):
            raise errors.InvalidArgument(
                f"{field_prefix}.trace_id must be 32 lowercase hex digits",
                field=f"{field_prefix}.trace_id",
            )
        return self

    @property
    def has_attribute_filters(self) -> bool:
        return bool(self.kinds or self.types or self.nodes or self.runs or self.trace_id)

    def fingerprint(self) -> list[Any]:
        return [
            self.start_ms,
            self.end_ms,
            sorted(self.kinds),
            sorted(self.types),
            sorted(self.nodes),
            sorted(self.runs),
            self.trace_id,
        ]

    def narrowed(self, start_ms: int | None, end_ms: int | None) -> EventFilter:
        """This filter with its window intersected with [start_ms, end_ms)."""
        lo = self.start_ms
        if start_ms is not None:
            lo = start_ms if lo is None else max(lo, start_ms)
        hi = self.end_ms
        if end_ms is not None:
            hi = end_ms if hi is None else min(hi, end_ms)
        return EventFilter(lo, hi, self.kinds, self.types, self.nodes, self.runs, self.trace_id)

    def matches(self, e: event_pb2.Event) -> bool:
        if self.kinds and e.kind not in self.kinds:
            return False
        if self.types and e.type not in self.types:
            return False
        if self.nodes and e.node not in self.nodes:
            return False
        if self.runs and e.run not in self.runs:
            return False
        return not (self.trace_id and e.trace_id != self.trace_id)

    def bucket_may_match(self, doc: dict[str, Any]) -> bool:
        if self.start_ms is not None and doc["max_ms"] < self.start_ms:
            return False
        if self.end_ms is not None and doc["min_ms"] >= self.end_ms:
            return False
        if self.kinds and not self.kinds.intersection(doc.get("kinds") or ()):
            return False
        for wanted, key in ((self.types, "types"), (self.nodes, "nodes"), (self.runs, "runs")):
            have = doc.get(key)
            if wanted and have is not None and not wanted.intersection(have):
                return False
        traces = doc.get("traces")
        return not (self.trace_id and traces is not None and self.trace_id not in traces)


@dataclass(slots=True)
class Segment:
    """A run of events in read order: stored bytes passed through, or decoded events."""

    count: int
    last_key: TimelineKey
    raw: bytes | None = None
    events: Sequence[event_pb2.Event] | None = None

    @classmethod
    def of(cls, events: Sequence[event_pb2.Event], last_key: TimelineKey) -> Segment:
        return cls(len(events), last_key, events=events)

    def materialize(self) -> Sequence[event_pb2.Event]:
        if self.events is None:
            self.events = st.parse_events(self.raw or b"")
        return self.events


def _key(value: Sequence[Any]) -> TimelineKey:
    return (int(value[0]), int(value[1]), str(value[2]), int(value[3]))


# ---- results -----------------------------------------------------------------------------


@dataclass
class Rejection:
    index: int
    field: str
    reason: str
    code: str = "INVALID_ARGUMENT"


@dataclass
class AppendResult:
    sequences: list[int]
    stored: int = 0
    duplicates: int = 0
    rejections: list[Rejection] = field(default_factory=list)


@dataclass
class Capture:
    ion: str
    capture_id: str
    start_ms: int
    end_ms: int
    description: str = ""
    owner: str = ""
    project: str = ""
    imported_from: str = ""
    create_time: dt.datetime | None = None
    update_time: dt.datetime | None = None

    @property
    def name(self) -> str:
        return f"ions/{self.ion}/captures/{self.capture_id}"

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Capture:
        return cls(
            ion=doc["ion"],
            capture_id=doc["capture_id"],
            start_ms=int(doc["start_ms"]),
            end_ms=int(doc["end_ms"]),
            description=doc.get("description", ""),
            owner=doc.get("owner", ""),
            project=doc.get("project", ""),
            imported_from=doc.get("imported_from", ""),
            create_time=_datetime(doc.get("create_time")),
            update_time=_datetime(doc.get("update_time")),
        )


def _datetime(value: Any) -> dt.datetime | None:
    """Datetimes as stored; some stores hand back ISO strings for ``$set`` values."""
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass
class RetentionPolicy:
    ion: str
    retention_days: int
    last_sweep_time: dt.datetime | None = None


@dataclass
class SweepResult:
    events_deleted: int
    events_kept_by_captures: int
    cutoff_ms: int


def is_admin() -> bool:
    """The hook where auth decides who may change everyone's captures."""
    return identity.current().is_admin


# ---- the service -------------------------------------------------------------------------


class RecorderService:
    def __init__(self, config: Config, store: st.Store, registry: Registry | None) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self._locks_guard = threading.Lock()
        self._producer_locks: OrderedDict[str, threading.Lock] = OrderedDict()
        self._appended = threading.Condition()
        self._append_count = 0
        self._levels_cache: dict[str, tuple[float, set[int]]] = {}

    # -- names

    def ion_of(self, parent: str, field: str = "parent") -> str:
        """Parses ``ions/{ion}`` and checks that the registry knows the ION and that it
        belongs to the caller's project (another project's ION does not exist for them)."""
        return self._ion_and_project(parent, field)[0]

    def _ion_and_project(self, parent: str, field: str) -> tuple[str, str]:
        ion = parse_name(parent, "ions/{ion}", field)["ion"]
        if ion == "-":
            raise errors.InvalidArgument(f"{field} must name one ION", field=field)
        who = identity.current()
        if self.registry is None:
            # Nothing to ask: every ION is the caller's (captures still carry a project).
            return ion, who.project
        project = self.registry.project_of(ion)
        if project is None or not who.sees(project):
            raise errors.NotFound(f"ION {parent} does not exist", field=field)
        return ion, project

    def _levels(self, ion: str) -> set[int]:
        """Span levels in use by an ION. Cached for LEVELS_TTL_S; this process's own writes
        update the cache at once, so only another recorder's late batch can be seen up to
        that much later."""
        now = time.monotonic()
        cached = self._levels_cache.get(ion)
        if cached is not None and cached[0] > now:
            return cached[1]
        levels = self.store.levels_used(ion)
        self._levels_cache[ion] = (now + LEVELS_TTL_S, levels)
        return levels

    def _mark_levels(self, ion: str, docs: list[dict[str, Any]]) -> None:
        levels = {int(d["level"]) for d in docs if int(d["level"]) > 0}
        if not levels:
            return
        self.store.mark_levels(ion, levels)
        cached = self._levels_cache.get(ion)
        if cached is not None:
            self._levels_cache[ion] = (cached[0], cached[1] | levels)

    def _producer_lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._producer_locks.get(key)
            if lock is None:
                lock = self._producer_locks[key] = threading.Lock()
                while len(self._producer_locks) > 4096:
                    self._producer_locks.popitem(last=False)
            else:
                self._producer_locks.move_to_end(key)
            return lock

    # -- append

    def append(
        self,
        parent: str,
        events: Sequence[event_pb2.Event],
        *,
        restore: bool = False,
        batch_bytes: int | None = None,
    ) -> AppendResult:
        """Validates, dedups, sequences and stores one batch. ``events`` are mutated in place
        (sequence, name, ion, kind, receive_time). ``restore`` keeps receive times (import).
        ``batch_bytes`` (the batch's serialized size) lets a small batch skip per-event sizing."""
        ion = self.ion_of(parent)
        n = len(events)
        if n > self.config.max_batch_events:
            raise errors.ResourceExhausted(
                f"the batch has {n} events; the limit is {self.config.max_batch_events}",
                field="events",
            )
        result = AppendResult(sequences=[0] * n)
        groups: dict[str, list[Item]] = {}
        max_bytes = self.config.max_event_bytes
        check_size = batch_bytes is None or batch_bytes > max_bytes
        validate = self._validate
        for i, e in enumerate(events):
            problem = validate(e, parent, max_bytes, check_size)
            if problem is not None:
                fld, reason = problem
                result.rejections.append(Rejection(i, f"events[{i}]{fld}", reason))
                continue
            h = e.hlc
            item = (h.physical_ms, h.logical, e.producer_sequence, i)
            pid = e.producer_id
            group = groups.get(pid)
            if group is None:
                groups[pid] = [item]
            else:
                group.append(item)
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        ctx = _StampContext(ion, parent, f"ions/{ion}/events/", stamp, restore)
        for producer, items in groups.items():
            if producer:
                self._append_producer(ctx, producer, events, items, result)
            else:
                self._append_by_event_id(ctx, events, items, result)
        if result.stored:
            with self._appended:
                self._append_count += 1
                self._appended.notify_all()
        return result

    @staticmethod
    def _validate(
        e: event_pb2.Event, parent: str, max_bytes: int, check_size: bool
    ) -> tuple[str, str] | None:
        if e.ion and e.ion != parent:
            return ".ion", f"the event's ion {e.ion!r} differs from the batch's parent {parent!r}"
        t = e.type
        if not t:
            return ".type", "type is required"
        if len(t) > MAX_TYPE_LEN:
            return ".type", f"type is {len(t)} characters long; the limit is {MAX_TYPE_LEN}"
        h = e.hlc
        ms = h.physical_ms
        if ms <= 0 or ms > st.MAX_MS:
            return ".hlc", "hlc.physical_ms must be a positive time in milliseconds"
        if h.logical < 0:
            return ".hlc", "hlc.logical must not be negative"
        pid = e.producer_id
        if pid:
            if e.producer_sequence <= 0:
                return ".producer_sequence", "producer_sequence must be positive with producer_id"
            if len(pid) > MAX_PRODUCER_LEN:
                return ".producer_id", f"producer_id is longer than {MAX_PRODUCER_LEN} characters"
        elif not e.event_id:
            return ".event_id", "give event_id, or producer_id and producer_sequence"
        elif len(e.event_id) > MAX_PRODUCER_LEN:
            return ".event_id", f"event_id is longer than {MAX_PRODUCER_LEN} characters"
        trace = e.trace_id
        if trace and not HEX32.match(trace):
            return ".trace_id", "trace_id must be 32 lowercase hex digits"
        span = e.span_id
        if span and not HEX16.match(span):
            return ".span_id", "span_id must be 16 lowercase hex digits"
        if check_size:
            size = e.ByteSize()
            if size > max_bytes:
                return "", f"the event is {size} bytes; the limit is {max_bytes}"
        return None

    @staticmethod
    def _cut(items: list[Item]) -> list[list[Item]]:
        """Splits items (in timeline order) into buckets of at most BUCKET_EVENTS events whose
        HLC times span at most the last level's span."""
        out: list[list[Item]] = []
        max_span = st.LEVEL_SPANS_MS[-1]
        n = len(items)
        start = 0
        while start < n:
            end = min(start + st.BUCKET_EVENTS, n)
            first = items[start][0]
            if items[end - 1][0] - first > max_span:
                j = start
                while j < end and items[j][0] - first <= max_span:
                    j += 1
                end = j
            out.append(items[start:end])
            start = end
        return out

    @staticmethod
    def _bucket(
        ctx: _StampContext,
        events: Sequence[event_pb2.Event],
        part: list[Item],
        seqs: Sequence[int],
        pkey: str,
        producer: str,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Stamps a bucket's events (sequence, name, ion, kind, receive time) and builds its
        document, summary included, in one pass."""
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
        summary = {
            "first_key": [first[0], first[1], producer, seqs[0]],
            "last_key": [last[0], last[1], producer, seqs[-1]],
            "first_seq": seqs[0],
            "last_seq": seqs[-1],
            "min_ms": first[0],
            "max_ms": last[0],
            "count": len(part),
            "kinds": sorted(kinds),
            "types": st.summary_list(types),
            "nodes": st.summary_list(nodes),
            "runs": st.summary_list(runs),
            "traces": st.summary_list(traces),
        }
        return st.bucket_document(
            ctx.ion, evs, summary, pkey, producer, min(pseqs), max(pseqs), now
        )

    def _append_producer(
        self,
        ctx: _StampContext,
        producer: str,
        events: Sequence[event_pb2.Event],
        items: list[Item],
        result: AppendResult,
    ) -> None:
        ion = ctx.ion
        first_of: dict[int, int] = {}
        repeats: list[tuple[int, int]] = []
        pending: list[Item] = []
        for it in items:
            p = it[2]
            if p in first_of:
                repeats.append((it[3], first_of[p]))
            else:
                first_of[p] = it[3]
                pending.append(it)
        with self._producer_lock(f"{ion}:{producer}"):
            for _attempt in range(8):
                lo = min(first_of)
                hi = max(first_of)
                stored = self._stored_pseqs(ion, producer, lo, hi)
                if stored:
                    fresh = []
                    for it in pending:
                        seq = stored.get(it[2])
                        if seq is None:
                            fresh.append(it)
                        else:
                            result.sequences[it[3]] = seq
                            result.duplicates += 1
                else:
                    fresh = pending
                if not fresh:
                    break
                fresh.sort()
                base = self.store.reserve_sequences(ion, len(fresh))
                now = dt.datetime.now(dt.UTC)
                parts = self._cut(fresh)
                docs = []
                offset = base
                for part in parts:
                    seqs = range(offset, offset + len(part))
                    offset += len(part)
                    pkey = st.producer_key(ion, producer, min(it[2] for it in part))
                    docs.append(self._bucket(ctx, events, part, seqs, pkey, producer, now))
                self._mark_levels(ion, docs)
                inserted, clash = self.store.insert_buckets(docs)
                for part, doc in zip(parts[:inserted], docs, strict=False):
                    for it, seq in zip(
                        part, range(doc["first_seq"], doc["last_seq"] + 1), strict=True
                    ):
                        result.sequences[it[3]] = seq
                    result.stored += len(part)
                if not clash:
                    break
                # Someone stored part of this batch meanwhile: look again at what is left.
                pending = [it for part in parts[inserted:] for it in part]
                first_of = {it[2]: it[3] for it in pending}
            else:
                raise errors.Aborted(
                    f"could not store the events of producer {producer!r}: concurrent resends; "
                    "retry",
                    field="events",
                )
        for i, j in repeats:
            result.sequences[i] = result.sequences[j]
            result.duplicates += 1

    def _stored_pseqs(self, ion: str, producer: str, lo: int, hi: int) -> dict[int, int]:
        """Producer sequences in [lo, hi] already stored, with their sequences.

        Producer sequences increase per producer, so one indexed lookup of the latest bucket
        that starts at or before ``hi`` settles the common case (no overlap) at once."""
        latest = self.store.latest_producer_bucket(ion, producer, hi)
        if latest is None or int(latest.get("plast", 0)) < lo:
            return {}
        found: dict[int, int] = {}
        for doc in self.store.producer_buckets_desc(ion, producer, hi):
            if int(doc.get("plast", 0)) < lo:
                break
            for e in st.decode_events(doc["blob"]):
                p = e.producer_sequence
                if lo <= p <= hi:
                    found[p] = e.sequence
        return found

    def _append_by_event_id(
        self,
        ctx: _StampContext,
        events: Sequence[event_pb2.Event],
        items: list[Item],
        result: AppendResult,
    ) -> None:
        ion = ctx.ion
        first_of: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        fresh: list[Item] = []
        for it in items:
            eid = events[it[3]].event_id
            if eid in first_of:
                repeats.append((it[3], first_of[eid]))
            else:
                first_of[eid] = it[3]
                fresh.append(it)
        fresh.sort()
        base = self.store.reserve_sequences(ion, len(fresh))
        parts = self._cut(fresh)
        seq_of: dict[int, int] = {}
        bucket_of: dict[int, str] = {}
        offset = base
        for part in parts:
            pkey = st.anonymous_key(ion, offset)
            for it in part:
                seq_of[it[3]] = offset
                bucket_of[it[3]] = pkey
                offset += 1
        now = dt.datetime.now(dt.UTC)
        claims = [
            {
                "key": f"{ion}:{events[it[3]].event_id}",
                "sequence": seq_of[it[3]],
                "bucket": bucket_of[it[3]],
                "claim_time": now,
            }
            for it in fresh
        ]
        taken = self.store.claim_event_ids(claims)
        dropped: set[int] = set()
        for pos in taken:
            i = fresh[pos][3]
            key = str(claims[pos]["key"])
            claim = self.store.event_id_claim(key)
            if claim is None:
                continue
            if self.store.bucket_exists(str(claim["bucket"])):
                result.sequences[i] = int(claim["sequence"])
                result.duplicates += 1
                dropped.add(i)
                continue
            made = _datetime(claim.get("claim_time")) or now
            if (now - made).total_seconds() >= CLAIM_TAKEOVER_S and self.store.take_over_claim(
                key, str(claim["bucket"]), bucket_of[i], seq_of[i]
            ):
                continue
            result.rejections.append(
                Rejection(
                    i,
                    f"events[{i}].event_id",
                    "an append of this event_id is in flight elsewhere; send it again",
                    code="ABORTED",
                )
            )
            dropped.add(i)
        docs = []
        kept_parts = []
        for part in parts:
            keep = [it for it in part if it[3] not in dropped]
            if keep:
                seqs = [seq_of[it[3]] for it in keep]
                docs.append(self._bucket(ctx, events, keep, seqs, bucket_of[part[0][3]], "", now))
                kept_parts.append(keep)
        self._mark_levels(ion, docs)
        _inserted, clash = self.store.insert_buckets(docs)
        if clash:  # pragma: no cover - anonymous keys are unique sequences
            raise errors.Aborted("a bucket key clashed; retry", field="events")
        for keep in kept_parts:
            for it in keep:
                result.sequences[it[3]] = seq_of[it[3]]
            result.stored += len(keep)
        for i, j in repeats:
            result.sequences[i] = result.sequences[j]
            result.duplicates += 1

    # -- read

    def timeline_segments(
        self, ion: str, flt: EventFilter, after: TimelineKey | None = None, first_chunk: int = 4
    ) -> Iterator[Segment]:
        """Events in timeline order, in segments, merging buckets that overlap in time.

        Buckets come by min time (one scan per level); an event is final once every bucket
        still to come starts after it. A bucket that overlaps no other, lies wholly in the
        window and after ``after``, and needs no per-event filter passes through undecoded."""
        lo = flt.start_ms or 0
        if after is not None:
            lo = max(lo, after[0])
        hi = flt.end_ms
        levels = self._levels(ion)
        scans = [
            self.store.buckets_by_time(
                ion, level, lo - span, hi, lo, first_chunk, flt.has_attribute_filters
            )
            for level, span in enumerate(st.LEVEL_SPANS_MS)
            if level in levels
        ]
        docs = heapq.merge(*scans, key=itemgetter("min_ms"))
        plain = not flt.has_attribute_filters
        # Runs being merged: (key of the next event, run number, position, end, events).
        heap: list[tuple[TimelineKey, int, int, int, Any]] = []
        numbers = itertools.count()
        following = next(docs, None)
        while True:
            # Bring in every bucket that starts no later than the smallest pending event.
            while following is not None and (not heap or int(following["min_ms"]) <= heap[0][0][0]):
                doc = following
                following = next(docs, None)
                if not flt.bucket_may_match(doc):
                    continue
                m, top = int(doc["min_ms"]), int(doc["max_ms"])
                if (
                    plain
                    and not heap
                    and (following is None or int(following["min_ms"]) > top)
                    and m >= lo
                    and (hi is None or top < hi)
                    and (after is None or _key(doc["first_key"]) > after)
                ):
                    yield Segment(
                        int(doc["count"]), _key(doc["last_key"]), raw=st.raw_events(doc["blob"])
                    )
                    continue
                evs: Any = st.decode_events(self.store.blob_of(doc))
                start = bisect.bisect_left(evs, lo, key=_ms_of) if lo > m else 0
                if after is not None:
                    start = max(start, bisect.bisect_right(evs, after, key=timeline_key))
                end = len(evs)
                if hi is not None and hi <= top:
                    end = bisect.bisect_left(evs, hi, key=_ms_of)
                if not plain:
                    evs = [e for e in islice(evs, start, end) if flt.matches(e)]
                    start, end = 0, len(evs)
                if start < end:
                    heapq.heappush(heap, (timeline_key(evs[start]), next(numbers), start, end, evs))
            if not heap:
                return
            if len(heap) == 1:
                _key0, _n, pos, end, evs = heap[0]
                last = evs[end - 1]
                if following is None or int(following["min_ms"]) > last.hlc.physical_ms:
                    # One run and nothing ahead overlaps it: hand the rest over at once.
                    heap.clear()
                    yield Segment.of(list(islice(evs, pos, end)), timeline_key(last))
                    continue
            key, number, pos, end, evs = heapq.heappop(heap)
            yield Segment(1, key, events=[evs[pos]])
            pos += 1
            if pos < end:
                heapq.heappush(heap, (timeline_key(evs[pos]), number, pos, end, evs))

    def arrival_segments(
        self, ion: str, flt: EventFilter, after_seq: int = 0, first_chunk: int = 4
    ) -> Iterator[Segment]:
        lo, hi = flt.start_ms, flt.end_ms
        windowed = lo is not None or hi is not None
        plain = not flt.has_attribute_filters
        for doc in self.store.buckets_by_seq(ion, after_seq, first_chunk, not plain):
            if not flt.bucket_may_match(doc):
                continue
            if (
                plain
                and int(doc["first_seq"]) > after_seq
                and (lo is None or int(doc["min_ms"]) >= lo)
                and (hi is None or int(doc["max_ms"]) < hi)
            ):
                yield Segment(
                    int(doc["count"]), _key(doc["last_key"]), raw=st.raw_events(doc["blob"])
                )
                continue
            evs = st.decode_events(self.store.blob_of(doc))
            start = 0
            if int(doc["first_seq"]) <= after_seq:
                start = bisect.bisect_right(evs, after_seq, key=_seq_of)
            out = []
            for e in islice(evs, start, None):
                if windowed:
                    ms = e.hlc.physical_ms
                    if (lo is not None and ms < lo) or (hi is not None and ms >= hi):
                        continue
                if plain or flt.matches(e):
                    out.append(e)
            if out:
                yield Segment.of(out, timeline_key(out[-1]))

    def iter_timeline(
        self, ion: str, flt: EventFilter, after: TimelineKey | None = None, first_chunk: int = 4
    ) -> Iterator[event_pb2.Event]:
        for segment in self.timeline_segments(ion, flt, after, first_chunk):
            yield from segment.materialize()

    def iter_arrival(
        self, ion: str, flt: EventFilter, after_seq: int = 0, first_chunk: int = 4
    ) -> Iterator[event_pb2.Event]:
        for segment in self.arrival_segments(ion, flt, after_seq, first_chunk):
            yield from segment.materialize()

    def list_events_raw(
        self, parent: str, flt: EventFilter, order: str, page_size: int, page_token: str
    ) -> bytes:
        """One page as a serialized ListEventsResponse, built mostly by concatenating the
        stored bytes of whole buckets: no per-event work on the common path."""
        ion = self.ion_of(parent)
        flt.check()
        if page_size < 0:
            raise errors.InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        bound = {"ion": ion, "o": order, "f": flt.fingerprint()}
        token = decode_token(page_token, expect=bound)
        chunk = size // st.BUCKET_EVENTS + 2
        segments: Iterator[Segment]
        if order == ORDER_ARRIVAL:
            segments = self.arrival_segments(ion, flt, int(token.get("s", 0)), chunk)
        else:
            after = None
            if token:
                k = token.get("k")
                if not isinstance(k, list) or len(k) != 4:
                    raise errors.InvalidArgument("page_token is malformed", field="page_token")
                after = _key(k)
            segments = self.timeline_segments(ion, flt, after, chunk)
        parts: list[bytes] = []
        buffered: list[event_pb2.Event] = []
        n = 0
        last: TimelineKey | None = None
        more = False
        for seg in segments:
            if n == size:
                more = True
                break
            if seg.raw is not None and n + seg.count <= size:
                if buffered:
                    parts.append(st.encode_raw(buffered))
                    buffered = []
                parts.append(seg.raw)
                n += seg.count
                last = seg.last_key
                continue
            evs = seg.materialize()
            room = size - n
            if len(evs) <= room:
                buffered.extend(evs)
                n += len(evs)
                last = seg.last_key
                continue
            buffered.extend(islice(evs, room))
            n += room
            last = timeline_key(buffered[-1])
            more = True
            break
        if buffered:
            parts.append(st.encode_raw(buffered))
        next_token = ""
        if more and last is not None:
            payload: dict[str, Any] = dict(bound)
            if order == ORDER_ARRIVAL:
                payload["s"] = last[3]
            else:
                payload["k"] = list(last)
            next_token = encode_token(payload)
        if next_token:
            parts.append(st.encode_token_field(next_token))
        return b"".join(parts)

    def list_events(
        self, parent: str, flt: EventFilter, order: str, page_size: int, page_token: str
    ) -> tuple[list[event_pb2.Event], str]:
        """One page as messages (for in-process callers)."""
        page = st.parse_page(self.list_events_raw(parent, flt, order, page_size, page_token))
        return list(page.events), page.next_page_token

    def watch(
        self,
        parent: str,
        flt: EventFilter,
        after_seq: int,
        is_active: Callable[[], bool],
        poll_s: float = 0.25,
        max_batch: int = 1000,
    ) -> Iterator[tuple[list[event_pb2.Event], bool]]:
        """Stored events after ``after_seq`` (arrival order), then ``caught_up``, then new ones.

        Appends of other processes are found by polling; this process's wake the watcher at
        once. A sequence gap (an append still in flight) is waited for up to GAP_WAIT_S."""
        ion = self.ion_of(parent)
        flt.check()
        if after_seq < 0:
            raise errors.InvalidArgument(
                "after_sequence must not be negative", field="after_sequence"
            )
        everything = EventFilter()
        last = after_seq
        batch: list[event_pb2.Event] = []
        for e in self.iter_arrival(ion, everything, last, first_chunk=8):
            last = e.sequence
            if self._event_matches(flt, e):
                batch.append(e)
                if len(batch) >= max_batch:
                    yield batch, False
                    batch = []
        yield batch, True
        gap_since: float | None = None
        seen_count = -1
        while is_active():
            with self._appended:
                if self._append_count == seen_count:
                    self._appended.wait(poll_s)
                seen_count = self._append_count
            if not is_active():
                return
            fresh = list(islice(self.iter_arrival(ion, everything, last, first_chunk=4), 10_000))
            out: list[event_pb2.Event] = []
            for e in fresh:
                if e.sequence != last + 1:
                    if gap_since is None:
                        gap_since = time.monotonic()
                    if time.monotonic() - gap_since < GAP_WAIT_S:
                        break
                gap_since = None
                last = e.sequence
                if self._event_matches(flt, e):
                    out.append(e)
            for start in range(0, len(out), max_batch):
                yield out[start : start + max_batch], True

    @staticmethod
    def _event_matches(flt: EventFilter, e: event_pb2.Event) -> bool:
        ms = e.hlc.physical_ms
        if flt.start_ms is not None and ms < flt.start_ms:
            return False
        if flt.end_ms is not None and ms >= flt.end_ms:
            return False
        return flt.matches(e)

    # -- captures

    def _capture_key(self, name: str, field: str = "name") -> tuple[str, str]:
        parts = parse_name(name, "ions/{ion}/captures/{capture}", field)
        return parts["ion"], parts["capture"]

    def get_capture_doc(self, name: str, field: str = "name") -> dict[str, Any]:
        ion, cap = self._capture_key(name, field)
        doc = self.store.get_capture(f"{ion}:{cap}")
        if doc is None or not identity.current().sees(doc.get("project", identity.DEFAULT_PROJECT)):
            raise errors.NotFound(f"capture {name} does not exist", field=field)
        return doc

    def create_capture(
        self,
        parent: str,
        capture_id: str,
        start_ms: int | None,
        end_ms: int | None,
        description: str = "",
        request_id: str = "",
        imported_from: str = "",
    ) -> Capture:
        ion, project = self._ion_and_project(parent, "parent")
        check_id(capture_id, "capture_id")
        if start_ms is None:
            raise errors.InvalidArgument(
                "capture.start_time is required", field="capture.start_time"
            )
        if end_ms is None:
            raise errors.InvalidArgument("capture.end_time is required", field="capture.end_time")
        if end_ms <= start_ms:
            raise errors.InvalidArgument(
                "capture.end_time must come after capture.start_time", field="capture.end_time"
            )
        if len(description) > 4096:
            raise errors.InvalidArgument(
                "capture.description is longer than 4096 characters", field="capture.description"
            )
        who = identity.current()
        now = dt.datetime.now(dt.UTC)
        key = f"{ion}:{capture_id}"
        doc = {
            "key": key,
            "ion": ion,
            "capture_id": capture_id,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "description": description,
            "owner": who.user,
            # The ION's project: a service creating it for someone still files it there.
            "project": project,
            "imported_from": imported_from,
            "request_id": request_id,
            "create_time": now,
            "update_time": now,
        }
        if not self.store.insert_capture(doc):
            existing = self.store.get_capture(key)
            if existing and request_id and existing.get("request_id") == request_id:
                return Capture.from_doc(existing)
            raise errors.AlreadyExists(
                f"ION {parent} already has a capture named {capture_id!r}", field="capture_id"
            )
        return Capture.from_doc(doc)

    def get_capture(self, name: str) -> Capture:
        return Capture.from_doc(self.get_capture_doc(name))

    def list_captures(
        self, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Capture], str]:
        ion_part = parse_name(parent, "ions/{ion}", "parent")["ion"]
        ion = None if ion_part == "-" else self.ion_of(parent)
        if page_size < 0:
            raise errors.InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or 50, 1000)
        token = decode_token(page_token, expect={"p": parent})
        who = identity.current()
        out: list[Capture] = []
        after = str(token.get("k", ""))
        more = False
        while True:
            docs = self.store.list_captures(ion, after, size + 1)
            for doc in docs:
                if not who.sees(doc.get("project", identity.DEFAULT_PROJECT)):
                    after = doc["key"]
                    continue
                if len(out) == size:
                    more = True
                    break
                out.append(Capture.from_doc(doc))
                after = doc["key"]
            if more or len(docs) < size + 1:
                break
        next_token = encode_token({"p": parent, "k": after}) if more else ""
        return out, next_token

    def _may_change(self, doc: dict[str, Any], name: str) -> None:
        who = identity.current()
        if doc.get("owner") != who.user and not is_admin():
            raise errors.PermissionDenied(
                f"capture {name} belongs to {doc.get('owner')!r}; only its owner or an admin "
                "may change it",
                field="name",
            )

    def update_capture(self, name: str, description: str, mask: Sequence[str]) -> Capture:
        paths = list(mask) or ["description"]
        for path in paths:
            if path != "description":
                raise errors.InvalidArgument(
                    f"update_mask may name only 'description', not {path!r}", field="update_mask"
                )
        if len(description) > 4096:
            raise errors.InvalidArgument(
                "capture.description is longer than 4096 characters", field="capture.description"
            )
        doc = self.get_capture_doc(name, "capture.name")
        self._may_change(doc, name)
        updated = self.store.update_capture(
            doc["key"], {"description": description, "update_time": dt.datetime.now(dt.UTC)}
        )
        if updated is None:
            raise errors.NotFound(f"capture {name} does not exist", field="capture.name")
        return Capture.from_doc(updated)

    def delete_capture(self, name: str) -> None:
        doc = self.get_capture_doc(name)
        self._may_change(doc, name)
        if not self.store.delete_capture(doc["key"]):
            raise errors.NotFound(f"capture {name} does not exist", field="name")

    def capture_filter(self, cap: Capture, flt: EventFilter | None = None) -> EventFilter:
        return (flt or EventFilter()).narrowed(cap.start_ms, cap.end_ms)

    # -- replay

    def replay(
        self,
        name: str,
        speed: float,
        start_ms: int | None,
        flt: EventFilter,
        is_active: Callable[[], bool],
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[tuple[event_pb2.Event, int]]:
        """The capture's events in timeline order, each when the playback clock reaches it."""
        if speed < 0:
            raise errors.InvalidArgument("speed must not be negative", field="speed")
        flt.check()
        cap = self.get_capture(name)
        seek = cap.start_ms if start_ms is None else start_ms
        if not cap.start_ms <= seek < cap.end_ms:
            raise errors.InvalidArgument(
                "start_time must fall inside the capture's window", field="start_time"
            )
        window = self.capture_filter(cap, flt).narrowed(seek, None)
        t0 = time.monotonic()
        for e in self.iter_timeline(cap.ion, window, first_chunk=8):
            if not is_active():
                return
            ms = int(e.hlc.physical_ms)
            if speed > 0:
                due = t0 + (ms - seek) / 1000.0 / speed
                while True:
                    wait = due - time.monotonic()
                    if wait <= 0 or not is_active():
                        break
                    sleep(min(wait, 0.2))
            yield e, ms

    # -- retention

    def _retention_days(self, ion: str) -> int:
        doc = self.store.get_retention(ion)
        if doc and doc.get("retention_days"):
            return int(doc["retention_days"])
        if self.registry is not None:
            try:
                days = self.registry.retention_days(ion)
            except errors.ReliveError:
                days = None
            if days:
                return days
        return DEFAULT_RETENTION_DAYS

    def get_retention(self, name: str) -> RetentionPolicy:
        ion = parse_name(name, "ions/{ion}/retentionPolicy", "name")["ion"]
        self.ion_of(f"ions/{ion}", "name")
        doc = self.store.get_retention(ion) or {}
        return RetentionPolicy(
            ion, self._retention_days(ion), _datetime(doc.get("last_sweep_time"))
        )

    def set_retention(self, name: str, days: int) -> RetentionPolicy:
        ion = parse_name(name, "ions/{ion}/retentionPolicy", "retention_policy.name")["ion"]
        self.ion_of(f"ions/{ion}", "retention_policy.name")
        if not 1 <= days <= 36_500:
            raise errors.InvalidArgument(
                f"retention_days must be between 1 and 36500, got {days}",
                field="retention_policy.retention_days",
            )
        doc = self.store.set_retention(ion, days)
        return RetentionPolicy(
            ion, int(doc["retention_days"]), _datetime(doc.get("last_sweep_time"))
        )

    def run_retention(self, parent: str, as_of_ms: int | None = None) -> SweepResult:
        return self.sweep(self.ion_of(parent), as_of_ms)

    def sweep(self, ion: str, as_of_ms: int | None = None) -> SweepResult:
        """Deletes events older than the retention period, except those inside a capture.

        Works bucket by bucket: a bucket wholly deletable goes at once, one wholly inside a
        capture stays unread, and one in between is rewritten with the events it keeps.
        Registry data (model versions, run specs) is never deleted here."""
        as_of = now_ms() if as_of_ms is None else as_of_ms
        days = self._retention_days(ion)
        cutoff = as_of - days * DAY_MS
        windows = sorted(
            (int(d["start_ms"]), int(d["end_ms"])) for d in self.store.captures_of(ion)
        )

        def covered(ms: int) -> bool:
            return any(s <= ms < e for s, e in windows)

        def overlaps(lo: int, hi: int) -> bool:
            return any(s <= hi and lo < e for s, e in windows)

        def inside_one(lo: int, hi: int) -> bool:
            return any(s <= lo and hi < e for s, e in windows)

        deleted = kept = 0
        now = dt.datetime.now(dt.UTC)
        for level in range(len(st.LEVEL_SPANS_MS)):
            for doc in self.store.buckets_older_than(ion, level, cutoff):
                lo, hi, count = int(doc["min_ms"]), int(doc["max_ms"]), int(doc["count"])
                if hi < cutoff:
                    if not overlaps(lo, hi):
                        self.store.delete_bucket(doc["seq_key"])
                        deleted += count
                        continue
                    if inside_one(lo, hi):
                        kept += count
                        continue
                keep = []
                gone = held = 0
                for e in st.decode_events(doc["blob"]):
                    ms = e.hlc.physical_ms
                    if ms >= cutoff:
                        keep.append(e)
                    elif covered(ms):
                        keep.append(e)
                        held += 1
                    else:
                        gone += 1
                kept += held
                if not gone:
                    continue
                deleted += gone
                if keep:
                    self.store.rewrite_bucket(doc, keep, now)
                else:
                    self.store.delete_bucket(doc["seq_key"])
        self.store.mark_swept(ion, now, days)
        return SweepResult(deleted, kept, cutoff)

    def sweep_all(self) -> None:
        for ion in self.store.ions():
            try:
                result = self.sweep(ion)
                if result.events_deleted:
                    log.info("retention: ions/%s lost %d events", ion, result.events_deleted)
            except Exception:
                log.exception("retention sweep of ions/%s failed", ion)
