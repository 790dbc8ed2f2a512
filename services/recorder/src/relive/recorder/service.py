"""The recorder's domain: it wires the write and read paths together and keeps captures,
replay and retention. It knows no gRPC.

Events are ``relive.recorder.v1.Event`` messages end to end: the producer serializes them
once, the store keeps them serialized in compressed buckets (``bucket.py``), and readers get
them back without any per-field mapping. ``writer.py`` is the append path, ``reader.py`` the
reads, ``retention.py`` the per-bucket retention rule and ``store.py`` every query.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from relive import errors
from relive.core import identity
from relive.core.config import Config
from relive.core.names import check_id, decode_token, encode_token, parse_name
from relive.recorder import bucket as bk
from relive.recorder import store as st
from relive.recorder.inputs import RecordedInputs, input_names
from relive.recorder.reader import AppendSignal, EventFilter, Reader, SpanLevels
from relive.recorder.registry_link import Registry
from relive.recorder.retention import DAY_MS, PINNED_TYPES, Action, Windows, judge
from relive.recorder.v1 import event_pb2
from relive.recorder.writer import AppendResult, Writer

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 7


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def datetime_to_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


# ---- results -----------------------------------------------------------------------------


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
            create_time=st.stored_datetime(doc.get("create_time")),
            update_time=st.stored_datetime(doc.get("update_time")),
        )


@dataclass
class RetentionPolicy:
    ion: str
    retention_days: int
    last_sweep_time: dt.datetime | None = None


@dataclass
class SweepResult:
    events_deleted: int
    # Events older than the cutoff that stay for a capture: in its window, or the launch
    # record of a run with an event in it.
    events_kept_by_captures: int
    cutoff_ms: int
    inputs_deleted: int = 0


def is_admin() -> bool:
    """The hook where auth decides who may change everyone's captures."""
    return identity.current().is_admin


# ---- the service -------------------------------------------------------------------------


class RecorderService:
    def __init__(self, config: Config, store: st.Store, registry: Registry | None) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        levels = SpanLevels(store)
        appended = AppendSignal()
        self.reader = Reader(store, levels, appended)
        self.writer = Writer(config, store, levels, appended.notify)
        self.inputs = RecordedInputs(config, store, self.ion_of)

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

    # -- events

    def append(
        self,
        parent: str,
        events: Sequence[event_pb2.Event],
        *,
        restore: bool = False,
        batch_bytes: int | None = None,
    ) -> AppendResult:
        """Stores one batch (``Writer.append``) after checking that its ION exists."""
        ion = self.ion_of(parent)
        return self.writer.append(ion, parent, events, restore=restore, batch_bytes=batch_bytes)

    def list_events_raw(
        self, parent: str, flt: EventFilter, order: str, page_size: int, page_token: str
    ) -> bytes:
        """One page as a serialized ListEventsResponse (``Reader.page``)."""
        return self.reader.page(self.ion_of(parent), flt, order, page_size, page_token)

    def watch(
        self,
        parent: str,
        flt: EventFilter,
        after_seq: int,
        is_active: Callable[[], bool],
        poll_s: float = 0.25,
        max_batch: int = 1000,
    ) -> Iterator[tuple[list[event_pb2.Event], bool]]:
        """The live tail of an ION (``Reader.watch``)."""
        ion = self.ion_of(parent)
        flt.check()
        if after_seq < 0:
            raise errors.InvalidArgument(
                "after_sequence must not be negative", field="after_sequence"
            )
        yield from self.reader.watch(ion, flt, after_seq, is_active, poll_s, max_batch)

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
        for e in self.reader.iter_timeline(cap.ion, window, first_chunk=8):
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
            ion, self._retention_days(ion), st.stored_datetime(doc.get("last_sweep_time"))
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
            ion, int(doc["retention_days"]), st.stored_datetime(doc.get("last_sweep_time"))
        )

    def run_retention(self, parent: str, as_of_ms: int | None = None) -> SweepResult:
        return self.sweep(self.ion_of(parent), as_of_ms)

    def sweep(self, ion: str, as_of_ms: int | None = None) -> SweepResult:
        """Deletes events and recorded inputs older than the retention period, except what a
        capture keeps (docs/recorder-storage.md, "Retention").

        Works bucket by bucket (``retention.judge``): a bucket wholly deletable goes at once,
        one wholly inside a capture stays unread, and one in between is rewritten with the
        events it keeps. Registry data (model versions, run specs) is never deleted here."""
        as_of = now_ms() if as_of_ms is None else as_of_ms
        days = self._retention_days(ion)
        cutoff = as_of - days * DAY_MS
        windows = Windows(
            (int(d["start_ms"]), int(d["end_ms"])) for d in self.store.captures_of(ion)
        )
        found: list[frozenset[str]] = []

        def pinned() -> frozenset[str]:
            # Scanned once, and only when something is old enough to need it.
            if not found:
                found.append(self.pinned_runs(ion, windows))
            return found[0]

        deleted = kept = 0
        now = dt.datetime.now(dt.UTC)
        for level in range(len(bk.LEVEL_SPANS_MS)):
            for doc in self.store.buckets_older_than(ion, level, cutoff):
                decode = partial(bk.decode_events, doc["blob"])
                verdict = judge(doc, cutoff, windows, decode, pinned())
                deleted += verdict.deleted
                kept += verdict.held
                if verdict.action is Action.DELETE:
                    self.store.delete_bucket(doc["seq_key"])
                elif verdict.action is Action.REWRITE:
                    changes = bk.rewritten(doc, verdict.keep, now)
                    self.store.rewrite_bucket(doc["seq_key"], changes)

        def pinned_inputs() -> set[str]:
            return {n for e in self.launch_records(ion, pinned()) for n in input_names(e)}

        inputs_deleted = self.inputs.sweep(ion, cutoff, windows, pinned_inputs)
        self.store.mark_swept(ion, now, days)
        return SweepResult(deleted, kept, cutoff, inputs_deleted)

    def pinned_runs(self, ion: str, windows: Windows) -> frozenset[str]:
        """The runs with an event inside a capture window: their launch records are kept."""
        runs: set[str] = set()
        for start, end in windows.spans:
            runs |= self.reader.runs_in_window(ion, start, end)
        return frozenset(runs)

    def launch_records(
        self, ion: str, runs: Iterable[str], end_ms: int | None = None
    ) -> Iterator[event_pb2.Event]:
        """The ``run.launched`` and ``dataset.used`` events of ``runs`` before ``end_ms``,
        in timeline order; the bucket summaries prune the scan."""
        wanted = frozenset(runs)
        if not wanted:
            return iter(())
        flt = EventFilter(end_ms=end_ms, types=PINNED_TYPES, runs=wanted)
        return self.reader.iter_timeline(ion, flt, first_chunk=16)

    def sweep_all(self) -> None:
        for ion in self.store.ions():
            try:
                result = self.sweep(ion)
                if result.events_deleted or result.inputs_deleted:
                    log.info(
                        "retention: ions/%s lost %d events and %d recorded inputs",
                        ion,
                        result.events_deleted,
                        result.inputs_deleted,
                    )
            except Exception:
                log.exception("retention sweep of ions/%s failed", ion)
