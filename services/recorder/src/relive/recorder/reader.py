"""The read path: filters, segments, the k-way merge of buckets, pages, and the live tail.

The merge and the page building are pure functions over bucket documents and a blob fetcher,
so they run without a store; ``Reader`` feeds them the store's scans. Pages are built mostly
by concatenating stored bytes: a decompressed bucket is a valid fragment of a
``ListEventsResponse``, so a bucket that needs no per-event work passes through undecoded.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from operator import itemgetter
from typing import Any

from relive import errors
from relive.core.names import decode_token, encode_token
from relive.recorder import bucket as bk
from relive.recorder.bucket import TimelineKey, as_timeline_key, timeline_key
from relive.recorder.retention import runs_inside
from relive.recorder.store import Store
from relive.recorder.v1 import event_pb2, recorder_pb2

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
# How long a live tail waits for a sequence gap (an append still in flight) to fill.
GAP_WAIT_S = 1.0
LEVELS_TTL_S = 2.0

ORDER_TIMELINE = "timeline"
ORDER_ARRIVAL = "arrival"

# A bucket's blob, given its document (a scan may have left the blob behind).
BlobOf = Callable[[dict[str, Any]], bytes]


def _ms_of(e: event_pb2.Event) -> int:
    return int(e.hlc.physical_ms)


def _seq_of(e: event_pb2.Event) -> int:
    return int(e.sequence)


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

    def check(self) -> EventFilter:
        if self.start_ms is not None and self.end_ms is not None and self.end_ms < self.start_ms:
            raise errors.InvalidArgument(
                "filter.end_time is before filter.start_time", field="filter.end_time"
            )
        if self.trace_id and not bk.TRACE_ID.match(self.trace_id):
            raise errors.InvalidArgument(
                "filter.trace_id must be 32 lowercase hex digits", field="filter.trace_id"
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
        """The attribute filters (not the window)."""
        if self.kinds and e.kind not in self.kinds:
            return False
        if self.types and e.type not in self.types:
            return False
        if self.nodes and e.node not in self.nodes:
            return False
        if self.runs and e.run not in self.runs:
            return False
        return not (self.trace_id and e.trace_id != self.trace_id)

    def admits(self, e: event_pb2.Event) -> bool:
        """The window and the attribute filters."""
        ms = e.hlc.physical_ms
        if self.start_ms is not None and ms < self.start_ms:
            return False
        if self.end_ms is not None and ms >= self.end_ms:
            return False
        return self.matches(e)

    def bucket_may_match(self, doc: dict[str, Any]) -> bool:
        """False when a bucket's summary proves that none of its events pass."""
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


# ---- segments and the merge --------------------------------------------------------------


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
            self.events = bk.parse_events(self.raw or b"")
        return self.events


# A bucket being merged: (key of its next event, its number, position, end, its events).
_Run = tuple[TimelineKey, int, int, int, Any]


def _sliced(
    doc: dict[str, Any],
    blob_of: BlobOf,
    flt: EventFilter,
    lo: int,
    hi: int | None,
    after: TimelineKey | None,
) -> tuple[Any, int, int]:
    """A decoded bucket and the [start, end) of its events inside the window, after
    ``after`` and past the filters, found by binary search where the order allows."""
    m, top = int(doc["min_ms"]), int(doc["max_ms"])
    evs: Any = bk.decode_events(blob_of(doc))
    start = bisect.bisect_left(evs, lo, key=_ms_of) if lo > m else 0
    if after is not None:
        start = max(start, bisect.bisect_right(evs, after, key=timeline_key))
    end = len(evs)
    if hi is not None and hi <= top:
        end = bisect.bisect_left(evs, hi, key=_ms_of)
    if flt.has_attribute_filters:
        evs = [e for e in islice(evs, start, end) if flt.matches(e)]
        start, end = 0, len(evs)
    return evs, start, end


def merge_timeline(
    docs: Iterable[dict[str, Any]],
    blob_of: BlobOf,
    flt: EventFilter,
    after: TimelineKey | None = None,
) -> Iterator[Segment]:
    """Events in timeline order, in segments, merging buckets that overlap in time.

    ``docs`` come by min time; an event is final once every bucket still to come starts
    after it. A bucket that overlaps no other, lies wholly in the window and after
    ``after``, and needs no per-event filter passes through undecoded."""
    lo = flt.start_ms or 0
    if after is not None:
        lo = max(lo, after[0])
    hi = flt.end_ms
    plain = not flt.has_attribute_filters
    source = iter(docs)
    heap: list[_Run] = []
    numbers = itertools.count()
    following = next(source, None)
    while True:
        # Bring in every bucket that starts no later than the smallest pending event.
        while following is not None and (not heap or int(following["min_ms"]) <= heap[0][0][0]):
            doc = following
            following = next(source, None)
            if not flt.bucket_may_match(doc):
                continue
            m, top = int(doc["min_ms"]), int(doc["max_ms"])
            if (
                plain
                and not heap
                and (following is None or int(following["min_ms"]) > top)
                and m >= lo
                and (hi is None or top < hi)
                and (after is None or as_timeline_key(doc["first_key"]) > after)
            ):
                raw = bk.raw_events(blob_of(doc))
                yield Segment(int(doc["count"]), as_timeline_key(doc["last_key"]), raw=raw)
                continue
            evs, start, end = _sliced(doc, blob_of, flt, lo, hi, after)
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


def arrival_order(
    docs: Iterable[dict[str, Any]], blob_of: BlobOf, flt: EventFilter, after_seq: int = 0
) -> Iterator[Segment]:
    """Events with a sequence > ``after_seq``, in sequence order; ``docs`` come by seq_key."""
    lo, hi = flt.start_ms, flt.end_ms
    windowed = lo is not None or hi is not None
    plain = not flt.has_attribute_filters
    for doc in docs:
        if not flt.bucket_may_match(doc):
            continue
        if (
            plain
            and int(doc["first_seq"]) > after_seq
            and (lo is None or int(doc["min_ms"]) >= lo)
            and (hi is None or int(doc["max_ms"]) < hi)
        ):
            raw = bk.raw_events(blob_of(doc))
            yield Segment(int(doc["count"]), as_timeline_key(doc["last_key"]), raw=raw)
            continue
        evs = bk.decode_events(blob_of(doc))
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


# ---- pages -------------------------------------------------------------------------------


def timeline_cursor(token: dict[str, Any]) -> TimelineKey | None:
    """The last timeline key a decoded page token carries (None for the first page)."""
    if not token:
        return None
    k = token.get("k")
    if not isinstance(k, list) or len(k) != 4:
        raise errors.InvalidArgument("page_token is malformed", field="page_token")
    return as_timeline_key(k)


def build_page(segments: Iterable[Segment], size: int, order: str, bound: dict[str, Any]) -> bytes:
    """At most ``size`` events of ``segments`` as a serialized ListEventsResponse, and a
    token (``bound`` plus the last key) when more follow. Whole raw segments are copied."""
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
                parts.append(bk.encode_raw(buffered))
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
        parts.append(bk.encode_raw(buffered))
    if more and last is not None:
        payload: dict[str, Any] = dict(bound)
        if order == ORDER_ARRIVAL:
            payload["s"] = last[3]
        else:
            payload["k"] = list(last)
        token = encode_token(payload)
        parts.append(recorder_pb2.ListEventsResponse(next_page_token=token).SerializeToString())
    return b"".join(parts)


# ---- the reader --------------------------------------------------------------------------


class SpanLevels:
    """Span levels in use by each ION, cached for LEVELS_TTL_S; this process's own writes
    update the cache at once, so only another recorder's late batch can be seen up to that
    much later."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, set[int]]] = {}

    def of(self, ion: str) -> set[int]:
        now = time.monotonic()
        cached = self._cache.get(ion)
        if cached is not None and cached[0] > now:
            return cached[1]
        levels = self.store.levels_used(ion)
        self._cache[ion] = (now + LEVELS_TTL_S, levels)
        return levels

    def mark(self, ion: str, docs: list[dict[str, Any]]) -> None:
        """Records the levels of buckets about to be written (before they are)."""
        levels = {int(d["level"]) for d in docs if int(d["level"]) > 0}
        if not levels:
            return
        self.store.mark_levels(ion, levels)
        cached = self._cache.get(ion)
        if cached is not None:
            self._cache[ion] = (cached[0], cached[1] | levels)


class AppendSignal:
    """Wakes this process's live tails when it stores events."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def notify(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout_s: float) -> int:
        """Waits up to ``timeout_s`` unless an append came after ``seen``; returns the count."""
        with self._cond:
            if self._count == seen:
                self._cond.wait(timeout_s)
            return self._count


class Reader:
    """Reads of stored events: the store's scans fed to the merge and the page builder."""

    def __init__(self, store: Store, levels: SpanLevels, appended: AppendSignal) -> None:
        self.store = store
        self.levels = levels
        self.appended = appended

    def blob_of(self, doc: dict[str, Any]) -> bytes:
        blob = doc.get("blob")
        if blob is None:
            blob = self.store.fetch_blob(doc["seq_key"])
        return bk.EMPTY_BLOB if blob is None else bytes(blob)

    def timeline_segments(
        self, ion: str, flt: EventFilter, after: TimelineKey | None = None, first_chunk: int = 4
    ) -> Iterator[Segment]:
        """One scan per span level in use, merged by min time, then ``merge_timeline``."""
        lo = flt.start_ms or 0
        if after is not None:
            lo = max(lo, after[0])
        levels = self.levels.of(ion)
        scans = [
            self.store.buckets_by_time(
                ion, level, lo - span, flt.end_ms, lo, first_chunk, flt.has_attribute_filters
            )
            for level, span in enumerate(bk.LEVEL_SPANS_MS)
            if level in levels
        ]
        docs = heapq.merge(*scans, key=itemgetter("min_ms"))
        return merge_timeline(docs, self.blob_of, flt, after)

    def runs_in_window(self, ion: str, start_ms: int, end_ms: int) -> set[str]:
        """The runs with an event in [start_ms, end_ms), from the bucket summaries; only
        buckets that straddle the window's ends, or hold too many runs to list, are decoded."""
        runs: set[str] = set()
        levels = self.levels.of(ion)
        for level, span in enumerate(bk.LEVEL_SPANS_MS):
            if level not in levels:
                continue
            scan = self.store.buckets_by_time(
                ion, level, start_ms - span, end_ms, start_ms, first_chunk=16, summaries_only=True
            )
            for doc in scan:
                runs |= runs_inside(doc, start_ms, end_ms, partial(self.decode, doc))
        return runs

    def decode(self, doc: dict[str, Any]) -> Iterable[event_pb2.Event]:
        """A bucket's events, fetching its blob if the scan left it behind."""
        return bk.decode_events(self.blob_of(doc))

    def arrival_segments(
        self, ion: str, flt: EventFilter, after_seq: int = 0, first_chunk: int = 4
    ) -> Iterator[Segment]:
        docs = self.store.buckets_by_seq(ion, after_seq, first_chunk, flt.has_attribute_filters)
        return arrival_order(docs, self.blob_of, flt, after_seq)

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

    def page(
        self, ion: str, flt: EventFilter, order: str, page_size: int, page_token: str
    ) -> bytes:
        """One page as a serialized ListEventsResponse: no per-event work on the common path."""
        flt.check()
        if page_size < 0:
            raise errors.InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        bound = {"ion": ion, "o": order, "f": flt.fingerprint()}
        token = decode_token(page_token, expect=bound)
        chunk = size // bk.BUCKET_EVENTS + 2
        segments: Iterator[Segment]
        if order == ORDER_ARRIVAL:
            segments = self.arrival_segments(ion, flt, int(token.get("s", 0)), chunk)
        else:
            segments = self.timeline_segments(ion, flt, timeline_cursor(token), chunk)
        return build_page(segments, size, order, bound)

    def watch(
        self,
        ion: str,
        flt: EventFilter,
        after_seq: int,
        is_active: Callable[[], bool],
        poll_s: float = 0.25,
        max_batch: int = 1000,
    ) -> Iterator[tuple[list[event_pb2.Event], bool]]:
        """Stored events after ``after_seq`` (arrival order), then ``caught_up``, then new ones.

        Appends of other processes are found by polling; this process's wake the watcher at
        once. A sequence gap (an append still in flight) is waited for up to GAP_WAIT_S."""
        everything = EventFilter()
        last = after_seq
        batch: list[event_pb2.Event] = []
        for e in self.iter_arrival(ion, everything, last, first_chunk=8):
            last = e.sequence
            if flt.admits(e):
                batch.append(e)
                if len(batch) >= max_batch:
                    yield batch, False
                    batch = []
        yield batch, True
        gap_since: float | None = None
        seen_count = -1
        while is_active():
            seen_count = self.appended.wait(seen_count, poll_s)
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
                if flt.admits(e):
                    out.append(e)
            for start in range(0, len(out), max_batch):
                yield out[start : start + max_batch], True
