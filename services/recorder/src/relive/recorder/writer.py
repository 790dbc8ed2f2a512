"""The write path: validation, the two dedup paths, sequencing and storing one batch.

A batch is validated event by event (a malformed event is rejected alone, naming its field),
grouped by producer, sorted in timeline order, given its sequences with one atomic
reservation, cut and stamped into buckets (``bucket.py``) and inserted with one
``insert_many``. Producer events dedup on (producer_id, producer_sequence), whose record is
the stored bucket itself; events with an explicit ``event_id`` dedup on one claim each.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from relive import errors
from relive.core.config import Config
from relive.recorder import bucket as bk
from relive.recorder.bucket import Item, StampContext
from relive.recorder.reader import SpanLevels
from relive.recorder.store import Store, stored_datetime
from relive.recorder.v1 import event_pb2

# A claim on an event_id whose bucket is missing for this long is taken over (its writer died).
CLAIM_TAKEOVER_S = 30.0
MAX_TYPE_LEN = 256
MAX_PRODUCER_LEN = 256
# Per-producer locks kept at most; the least recently used go first.
MAX_PRODUCER_LOCKS = 4096


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


def validate(
    e: event_pb2.Event, parent: str, max_bytes: int, check_size: bool
) -> tuple[str, str] | None:
    """Why ``e`` cannot be stored, as (field suffix, reason), or None when it can."""
    if e.ion and e.ion != parent:
        return ".ion", f"the event's ion {e.ion!r} differs from the batch's parent {parent!r}"
    t = e.type
    if not t:
        return ".type", "type is required"
    if len(t) > MAX_TYPE_LEN:
        return ".type", f"type is {len(t)} characters long; the limit is {MAX_TYPE_LEN}"
    h = e.hlc
    ms = h.physical_ms
    if ms <= 0 or ms > bk.MAX_MS:
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
    if trace and not bk.TRACE_ID.match(trace):
        return ".trace_id", "trace_id must be 32 lowercase hex digits"
    span = e.span_id
    if span and not bk.SPAN_ID.match(span):
        return ".span_id", "span_id must be 16 lowercase hex digits"
    if check_size:
        size = e.ByteSize()
        if size > max_bytes:
            return "", f"the event is {size} bytes; the limit is {max_bytes}"
    return None


def group_valid(
    events: Sequence[event_pb2.Event],
    parent: str,
    max_bytes: int,
    check_size: bool,
    result: AppendResult,
) -> dict[str, list[Item]]:
    """The valid events grouped by producer ("" for event-id events), as items in batch
    order; every invalid one is added to ``result.rejections``."""
    groups: dict[str, list[Item]] = {}
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
    return groups


def first_of_each(
    items: list[Item], identity: Callable[[Item], Any]
) -> tuple[dict[Any, int], list[Item], list[tuple[int, int]]]:
    """Repeats inside one batch: (first index of each identity, the first items, and
    (index, index of its first) for every repeat)."""
    first_of: dict[Any, int] = {}
    firsts: list[Item] = []
    repeats: list[tuple[int, int]] = []
    for it in items:
        ident = identity(it)
        if ident in first_of:
            repeats.append((it[3], first_of[ident]))
        else:
            first_of[ident] = it[3]
            firsts.append(it)
    return first_of, firsts, repeats


class Writer:
    """Appends batches; safe to share between threads and with other recorder processes."""

    def __init__(
        self, config: Config, store: Store, levels: SpanLevels, on_stored: Callable[[], None]
    ) -> None:
        self.config = config
        self.store = store
        self.levels = levels
        self.on_stored = on_stored
        self._locks_guard = threading.Lock()
        self._producer_locks: OrderedDict[str, threading.Lock] = OrderedDict()

    def append(
        self,
        ion: str,
        parent: str,
        events: Sequence[event_pb2.Event],
        *,
        restore: bool = False,
        batch_bytes: int | None = None,
    ) -> AppendResult:
        """Validates, dedups, sequences and stores one batch of the ION ``parent`` names.
        ``events`` are mutated in place (sequence, name, ion, kind, receive_time).
        ``restore`` keeps receive times (import). ``batch_bytes`` (the batch's serialized
        size) lets a small batch skip per-event sizing."""
        n = len(events)
        if n > self.config.max_batch_events:
            raise errors.ResourceExhausted(
                f"the batch has {n} events; the limit is {self.config.max_batch_events}",
                field="events",
            )
        result = AppendResult(sequences=[0] * n)
        max_bytes = self.config.max_event_bytes
        check_size = batch_bytes is None or batch_bytes > max_bytes
        groups = group_valid(events, parent, max_bytes, check_size, result)
        ctx = StampContext.now(ion, parent, restore)
        for producer, items in groups.items():
            if producer:
                self._append_producer(ctx, producer, events, items, result)
            else:
                self._append_by_event_id(ctx, events, items, result)
        if result.stored:
            self.on_stored()
        return result

    def _producer_lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._producer_locks.get(key)
            if lock is None:
                lock = self._producer_locks[key] = threading.Lock()
                while len(self._producer_locks) > MAX_PRODUCER_LOCKS:
                    self._producer_locks.popitem(last=False)
            else:
                self._producer_locks.move_to_end(key)
            return lock

    # -- producer identity

    def _append_producer(
        self,
        ctx: StampContext,
        producer: str,
        events: Sequence[event_pb2.Event],
        items: list[Item],
        result: AppendResult,
    ) -> None:
        ion = ctx.ion
        first_of, pending, repeats = first_of_each(items, itemgetter(2))
        with self._producer_lock(f"{ion}:{producer}"):
            for _attempt in range(8):
                stored = self._stored_pseqs(ion, producer, min(first_of), max(first_of))
                fresh = pending
                if stored:
                    fresh = []
                    for it in pending:
                        seq = stored.get(it[2])
                        if seq is None:
                            fresh.append(it)
                        else:
                            result.sequences[it[3]] = seq
                            result.duplicates += 1
                if not fresh:
                    break
                left = self._store_producer_items(ctx, producer, events, fresh, result)
                if not left:
                    break
                # Someone stored part of this batch meanwhile: look again at what is left.
                pending = left
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

    def _store_producer_items(
        self,
        ctx: StampContext,
        producer: str,
        events: Sequence[event_pb2.Event],
        fresh: list[Item],
        result: AppendResult,
    ) -> list[Item]:
        """Sequences, stamps and inserts ``fresh``; returns the items not inserted because
        another writer stored a bucket with the same key first (empty when all went in)."""
        ion = ctx.ion
        fresh.sort()
        base = self.store.reserve_sequences(ion, len(fresh))
        now = dt.datetime.now(dt.UTC)
        parts = bk.cut(fresh)
        docs = []
        offset = base
        for part in parts:
            seqs = range(offset, offset + len(part))
            offset += len(part)
            pkey = bk.producer_key(ion, producer, min(it[2] for it in part))
            docs.append(bk.stamp_bucket(ctx, events, part, seqs, pkey, producer, now))
        self.levels.mark(ion, docs)
        inserted, clash = self.store.insert_buckets(docs)
        for part, doc in zip(parts[:inserted], docs, strict=False):
            for it, seq in zip(part, range(doc["first_seq"], doc["last_seq"] + 1), strict=True):
                result.sequences[it[3]] = seq
            result.stored += len(part)
        if not clash:
            return []
        return [it for part in parts[inserted:] for it in part]

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
            for e in bk.decode_events(doc["blob"]):
                p = e.producer_sequence
                if lo <= p <= hi:
                    found[p] = e.sequence
        return found

    # -- explicit event ids

    def _append_by_event_id(
        self,
        ctx: StampContext,
        events: Sequence[event_pb2.Event],
        items: list[Item],
        result: AppendResult,
    ) -> None:
        ion = ctx.ion
        _first_of, fresh, repeats = first_of_each(items, lambda it: events[it[3]].event_id)
        fresh.sort()
        base = self.store.reserve_sequences(ion, len(fresh))
        parts = bk.cut(fresh)
        seq_of: dict[int, int] = {}
        bucket_of: dict[int, str] = {}
        offset = base
        for part in parts:
            pkey = bk.anonymous_key(ion, offset)
            for it in part:
                seq_of[it[3]] = offset
                bucket_of[it[3]] = pkey
                offset += 1
        now = dt.datetime.now(dt.UTC)
        dropped = self._claim(ion, events, fresh, seq_of, bucket_of, now, result)
        docs = []
        kept_parts = []
        for part in parts:
            keep = [it for it in part if it[3] not in dropped]
            if keep:
                seqs = [seq_of[it[3]] for it in keep]
                pkey = bucket_of[part[0][3]]
                docs.append(bk.stamp_bucket(ctx, events, keep, seqs, pkey, "", now))
                kept_parts.append(keep)
        self.levels.mark(ion, docs)
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

    def _claim(
        self,
        ion: str,
        events: Sequence[event_pb2.Event],
        fresh: list[Item],
        seq_of: dict[int, int],
        bucket_of: dict[int, str],
        now: dt.datetime,
        result: AppendResult,
    ) -> set[int]:
        """Claims each event_id for its planned sequence and bucket; returns the indexes not
        to store: duplicates of a stored event, and claims another append holds (ABORTED).
        A claim whose bucket is missing for CLAIM_TAKEOVER_S is taken over."""
        claims = [
            {
                "key": f"{ion}:{events[it[3]].event_id}",
                "sequence": seq_of[it[3]],
                "bucket": bucket_of[it[3]],
                "claim_time": now,
            }
            for it in fresh
        ]
        dropped: set[int] = set()
        for pos in self.store.claim_event_ids(claims):
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
            made = stored_datetime(claim.get("claim_time")) or now
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
        return dropped
