"""The recorder's documents and every query it makes. Nothing else touches the database.

Events are stored in buckets, like Temporal's history batches or Loki's chunks; what a bucket
holds and how its keys are built is ``bucket.py``'s business, and this module stores and
finds the documents it builds. Queries go only through single-field indexes on keys built as
strings, because the embedded store does not use compound indexes. docs/recorder-storage.md
describes the layout.

Each ``Store`` owns its own ``MongoClient`` instead of the process-wide mongoengine alias: a
test (or an import into another deployment) may run two recorders on two databases in one
process, and rebinding the alias would close the other's client. The mongoengine documents
below are the schema and the source of the index definitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import mongoengine as me
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from relive.core import blobs
from relive.core.config import Config
from relive.recorder.bucket import (
    LEVEL_SPANS_MS,
    MAX_MS,
    MS_WIDTH,
    producer_key,
    producer_prefix,
    seq_key,
    time_prefix,
)


def stored_datetime(value: Any) -> dt.datetime | None:
    """A datetime as stored; some stores hand back ISO strings for ``$set`` values."""
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# ---- documents ---------------------------------------------------------------------------


class EventBucket(me.Document):
    """A batch of events of one ION (and one producer) as one compressed blob."""

    ion = me.StringField(required=True)
    # "<ion>:<last sequence>": arrival-order reads start at the first bucket whose key >= X.
    seq_key = me.StringField(required=True, unique=True)
    # "<ion>:<level>:<min hlc ms>": timeline reads scan [start - span(level), end) per level.
    time_key = me.StringField(required=True)
    # "<ion>:p:<producer>:<first producer sequence>" or "<ion>:s:<first sequence>": unique,
    # so a resent batch can never be stored twice, even by two recorders at once.
    pkey = me.StringField(required=True, unique=True)
    producer = me.StringField()
    pfirst = me.IntField()
    plast = me.IntField()
    first_seq = me.IntField(required=True)
    last_seq = me.IntField(required=True)
    min_ms = me.IntField(required=True)
    max_ms = me.IntField(required=True)
    count = me.IntField(required=True)
    kinds = me.ListField(me.IntField())
    # None means more than SUMMARY_MAX distinct values.
    types = me.ListField(me.StringField(), null=True)
    nodes = me.ListField(me.StringField(), null=True)
    runs = me.ListField(me.StringField(), null=True)
    traces = me.ListField(me.StringField(), null=True)
    # Timeline keys [ms, logical, producer, sequence] of the first and last event.
    first_key = me.ListField()
    last_key = me.ListField()
    level = me.IntField()
    # zlib(level 1) of a serialized ListEventsResponse: the events in timeline order, which
    # within one bucket is also sequence order.
    blob = me.BinaryField(required=True)
    create_time = me.DateTimeField()
    rewrite_time = me.DateTimeField()

    meta = {
        "db_alias": "recorder",
        "collection": "event_buckets",
        "indexes": [
            {"fields": ["seq_key"], "unique": True},
            {"fields": ["time_key"]},
            {"fields": ["pkey"], "unique": True},
        ],
    }


class SequenceCounter(me.Document):
    """Per-ION arrival counter; one atomic ``$inc`` reserves a whole batch's sequences."""

    key = me.StringField(required=True, unique=True)
    value = me.IntField(default=0)
    meta = {
        "db_alias": "recorder",
        "collection": "sequence_counters",
        "indexes": [{"fields": ["key"], "unique": True}],
    }


class EventIdClaim(me.Document):
    """One per explicit event_id: the unique index is the dedup, ``bucket`` where it lives."""

    key = me.StringField(required=True, unique=True)
    sequence = me.IntField(required=True)
    bucket = me.StringField(required=True)
    claim_time = me.DateTimeField()
    meta = {
        "db_alias": "recorder",
        "collection": "event_ids",
        "indexes": [{"fields": ["key"], "unique": True}],
    }


class CaptureDoc(me.Document):
    """A named marker over a window; it holds no events."""

    key = me.StringField(required=True, unique=True)  # "<ion>:<capture>"
    ion = me.StringField(required=True)
    capture_id = me.StringField(required=True)
    start_ms = me.IntField(required=True)
    end_ms = me.IntField(required=True)
    description = me.StringField(default="")
    owner = me.StringField(default="")
    project = me.StringField(default="")
    imported_from = me.StringField(default="")
    request_id = me.StringField(default="")
    create_time = me.DateTimeField()
    update_time = me.DateTimeField()
    meta = {
        "db_alias": "recorder",
        "collection": "captures",
        "indexes": [{"fields": ["key"], "unique": True}, {"fields": ["ion"]}],
    }


class RetentionDoc(me.Document):
    key = me.StringField(required=True, unique=True)  # the ION id
    retention_days = me.IntField(required=True)
    last_sweep_time = me.DateTimeField()
    meta = {
        "db_alias": "recorder",
        "collection": "retention_policies",
        "indexes": [{"fields": ["key"], "unique": True}],
    }


class RecordedInputDoc(me.Document):
    """Bytes a run took from the world, once per content hash per ION (``inputs.py``).

    Up to ``INLINE_MAX_BYTES`` the bytes sit in ``data``; above, in the GridFS bucket
    ``inputs`` (``file_id``), where the embedded store keeps them in a plain binary column:
    measured, a 1 MiB input takes about 36 ms to write and 5 ms to read there, against 54 ms
    and 33 ms as a document field, and a 16 KiB one 2.3 ms inline against 4.3 ms."""

    key = me.StringField(required=True, unique=True)  # "<ion>:<sha256>"
    ion = me.StringField(required=True)
    sha256 = me.StringField(required=True)
    kind = me.StringField(required=True)
    media_type = me.StringField(required=True)
    size_bytes = me.IntField(required=True)
    # JSON: label keys may hold dots, which a document's keys may not.
    labels_json = me.StringField(default="{}")
    first_use_ms = me.IntField(required=True)
    last_use_ms = me.IntField(required=True)
    # "<ion>:<last use ms, 15 digits>:<sha256>": retention scans the inputs an ION last used
    # before its cutoff through this one index.
    use_key = me.StringField(required=True)
    create_time = me.DateTimeField()
    data = me.BinaryField()
    file_id = me.ObjectIdField()
    meta = {
        "db_alias": "recorder",
        "collection": "recorded_inputs",
        "indexes": [{"fields": ["key"], "unique": True}, {"fields": ["use_key"]}],
    }


DOCUMENTS: tuple[type[me.Document], ...] = (
    EventBucket,
    SequenceCounter,
    EventIdClaim,
    CaptureDoc,
    RetentionDoc,
    RecordedInputDoc,
)
# The GridFS bucket of recorded inputs above INLINE_MAX_BYTES.
INPUTS_BUCKET = "inputs"
INLINE_MAX_BYTES = 64 * 1024


def use_key(ion: str, last_use_ms: int, sha256: str) -> str:
    return f"{ion}:{max(0, min(last_use_ms, MAX_MS)):0{MS_WIDTH}d}:{sha256}"


# ---- the store ---------------------------------------------------------------------------


class Store:
    """All reads and writes of the recorder's database."""

    def __init__(self, config: Config) -> None:
        if not config.mongodb_uri:
            from relive.errors import FailedPrecondition

            raise FailedPrecondition(
                "RELIVE_MONGODB_URI is not set: start the stack with `relive up`, "
                "or point the recorder at a MongoDB",
                field="RELIVE_MONGODB_URI",
            )
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            config.mongodb_uri,
            tz_aware=True,
            uuidRepresentation="standard",
            serverSelectionTimeoutMS=10_000,
        )
        self.db = self.client[config.database("recorder")]
        self.buckets = self._collection(EventBucket)
        self.counters = self._collection(SequenceCounter)
        self.event_ids = self._collection(EventIdClaim)
        self.captures = self._collection(CaptureDoc)
        self.retention = self._collection(RetentionDoc)
        self.inputs = self._collection(RecordedInputDoc)
        self.ensure_indexes()

    def _collection(self, doc: type[me.Document]) -> Collection[dict[str, Any]]:
        return self.db[doc._meta["collection"]]

    def ensure_indexes(self) -> None:
        for doc in DOCUMENTS:
            coll = self._collection(doc)
            for spec in doc._meta.get("indexes", []):
                coll.create_index(
                    [(f, ASCENDING) for f in spec["fields"]], unique=bool(spec.get("unique"))
                )
        blobs.ensure_indexes(self.db, INPUTS_BUCKET)

    def close(self) -> None:
        self.client.close()

    # -- sequences

    def reserve_sequences(self, ion: str, n: int) -> int:
        """Reserves ``n`` sequences atomically; returns the first. Safe across processes."""
        doc = self.counters.find_one_and_update(
            {"key": ion},
            {"$inc": {"value": n}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        return int(doc["value"]) - n + 1

    def mark_levels(self, ion: str, levels: Iterable[int]) -> None:
        """Notes that an ION has buckets at these span levels (above 0), before they are
        written, so readers know which level scans can be skipped."""
        marks = {f"level{level}": True for level in levels if level > 0}
        if marks:
            self.counters.update_one({"key": ion}, {"$set": marks}, upsert=True)

    def levels_used(self, ion: str) -> set[int]:
        doc = self.counters.find_one({"key": ion}) or {}
        return {0} | {lv for lv in range(1, len(LEVEL_SPANS_MS)) if doc.get(f"level{lv}")}

    def ions(self) -> list[str]:
        """Every ION that ever had an event (the counters collection is one doc per ION)."""
        return sorted(str(d["key"]) for d in self.counters.find({}, {"key": 1}))

    # -- buckets

    def insert_buckets(self, docs: list[dict[str, Any]]) -> tuple[int, bool]:
        """Inserts in order; returns (inserted, hit_duplicate_key)."""
        if not docs:
            return 0, False
        try:
            self.buckets.insert_many(docs, ordered=True)
            return len(docs), False
        except BulkWriteError as e:
            codes = {err.get("code") for err in e.details.get("writeErrors", [])}
            if codes - {11000}:
                raise
            return int(e.details.get("nInserted", 0)), True

    def latest_producer_bucket(
        self, ion: str, producer: str, upto_pseq: int
    ) -> dict[str, Any] | None:
        """The bucket of ``producer`` with the greatest first producer sequence <= upto_pseq."""
        lo = producer_prefix(ion, producer)
        hi = producer_key(ion, producer, upto_pseq)
        docs = list(
            self.buckets.find({"pkey": {"$gte": lo, "$lte": hi}}, {"plast": 1, "pkey": 1})
            .sort("pkey", DESCENDING)
            .limit(1)
        )
        return docs[0] if docs else None

    def producer_buckets_desc(
        self, ion: str, producer: str, upto_pseq: int
    ) -> Iterator[dict[str, Any]]:
        """Buckets of one producer whose first producer sequence <= ``upto_pseq``, newest first."""
        lo = producer_prefix(ion, producer)
        cond: dict[str, Any] = {"$gte": lo, "$lte": producer_key(ion, producer, upto_pseq)}
        while True:
            docs = list(self.buckets.find({"pkey": cond}).sort("pkey", DESCENDING).limit(4))
            yield from docs
            if len(docs) < 4:
                return
            cond = {"$gte": lo, "$lt": docs[-1]["pkey"]}

    def _scan(
        self,
        field_name: str,
        lo: str,
        hi: str,
        extra: dict[str, Any] | None = None,
        first_chunk: int = 4,
        max_chunk: int = 64,
        summaries_only: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Docs with ``lo <= field < hi`` in key order, fetched in growing chunks with limits,
        so a short read never makes the store materialise a long range. ``summaries_only``
        leaves the blobs behind (see ``blob_of``), for reads that prune most buckets."""
        chunk = first_chunk
        cond: dict[str, Any] = {"$gte": lo, "$lt": hi}
        projection = {"blob": 0} if summaries_only else None
        while True:
            query = {field_name: cond, **(extra or {})}
            docs = list(
                self.buckets.find(query, projection).sort(field_name, ASCENDING).limit(chunk)
            )
            yield from docs
            if len(docs) < chunk:
                return
            cond = {"$gt": docs[-1][field_name], "$lt": hi}
            chunk = min(chunk * 2, max_chunk)

    def buckets_by_time(
        self,
        ion: str,
        level: int,
        from_ms: int,
        to_ms: int | None,
        min_max_ms: int,
        first_chunk: int = 4,
        summaries_only: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Buckets of one level whose min time is in [from_ms, to_ms) and whose max time is
        >= min_max_ms, by min time."""
        hi = time_prefix(ion, level, to_ms) if to_ms is not None else f"{ion}:{level}:~"
        extra = {"max_ms": {"$gte": min_max_ms}} if min_max_ms > 0 else None
        return self._scan(
            "time_key",
            time_prefix(ion, level, from_ms),
            hi,
            extra,
            first_chunk=first_chunk,
            summaries_only=summaries_only,
        )

    def buckets_by_seq(
        self, ion: str, after_seq: int, first_chunk: int = 4, summaries_only: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Buckets holding a sequence > ``after_seq``, in sequence order."""
        return self._scan(
            "seq_key",
            seq_key(ion, after_seq + 1),
            f"{ion}:~",
            first_chunk=first_chunk,
            summaries_only=summaries_only,
        )

    def fetch_blob(self, seq_key_value: str) -> bytes | None:
        """A bucket's blob, for a scan that left the blobs behind; None once it is gone."""
        found = self.buckets.find_one({"seq_key": seq_key_value}, {"blob": 1})
        return bytes(found["blob"]) if found else None

    def buckets_older_than(self, ion: str, level: int, cutoff_ms: int) -> Iterator[dict[str, Any]]:
        """Buckets of one level whose min time is before ``cutoff_ms``."""
        return self._scan("time_key", f"{ion}:{level}:", time_prefix(ion, level, cutoff_ms))

    def delete_bucket(self, seq_key_value: str) -> None:
        self.buckets.delete_one({"seq_key": seq_key_value})

    def rewrite_bucket(self, seq_key_value: str, changes: dict[str, Any]) -> None:
        """Sets the fields a retention rewrite changes (``bucket.rewritten``)."""
        self.buckets.update_one({"seq_key": seq_key_value}, {"$set": changes})

    # -- explicit event ids

    def claim_event_ids(self, claims: list[dict[str, Any]]) -> set[int]:
        """Inserts claims; returns the positions that were already claimed."""
        if not claims:
            return set()
        try:
            self.event_ids.insert_many(claims, ordered=False)
            return set()
        except BulkWriteError as e:
            dup: set[int] = set()
            for err in e.details.get("writeErrors", []):
                if err.get("code") != 11000:
                    raise
                dup.add(int(err["index"]))
            return dup

    def event_id_claim(self, key: str) -> dict[str, Any] | None:
        return self.event_ids.find_one({"key": key})

    def take_over_claim(self, key: str, old_bucket: str, new_bucket: str, sequence: int) -> bool:
        """Compare-and-swap a claim whose bucket never got written (its writer died)."""
        result = self.event_ids.update_one(
            {"key": key, "bucket": old_bucket},
            {"$set": {"bucket": new_bucket, "sequence": sequence}},
        )
        return result.modified_count == 1

    def bucket_exists(self, pkey: str) -> bool:
        return self.buckets.find_one({"pkey": pkey}, {"_id": 1}) is not None

    # -- captures

    def insert_capture(self, doc: dict[str, Any]) -> bool:
        try:
            self.captures.insert_one(doc)
            return True
        except DuplicateKeyError:
            return False

    def get_capture(self, key: str) -> dict[str, Any] | None:
        return self.captures.find_one({"key": key})

    def list_captures(self, ion: str | None, after_key: str, limit: int) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"key": {"$gt": after_key}} if after_key else {}
        if ion is not None:
            query = {"key": {"$gt": max(after_key, f"{ion}:"), "$lt": f"{ion}:~"}}
        return list(self.captures.find(query).sort("key", ASCENDING).limit(limit))

    def captures_of(self, ion: str) -> list[dict[str, Any]]:
        return list(self.captures.find({"key": {"$gt": f"{ion}:", "$lt": f"{ion}:~"}}))

    def update_capture(self, key: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        return self.captures.find_one_and_update(
            {"key": key}, {"$set": changes}, return_document=ReturnDocument.AFTER
        )

    def delete_capture(self, key: str) -> bool:
        return self.captures.delete_one({"key": key}).deleted_count == 1

    # -- retention

    def get_retention(self, ion: str) -> dict[str, Any] | None:
        return self.retention.find_one({"key": ion})

    def set_retention(self, ion: str, days: int) -> dict[str, Any]:
        doc = self.retention.find_one_and_update(
            {"key": ion},
            {"$set": {"retention_days": days}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        return doc

    def mark_swept(self, ion: str, when: dt.datetime, default_days: int) -> None:
        self.retention.update_one(
            {"key": ion},
            {"$set": {"last_sweep_time": when}, "$setOnInsert": {"retention_days": default_days}},
            upsert=True,
        )

    # -- recorded inputs

    def get_input(self, key: str, with_data: bool = False) -> dict[str, Any] | None:
        """An input's document; its inline bytes only ``with_data``."""
        return self.inputs.find_one({"key": key}, None if with_data else {"data": 0})

    def insert_input(self, doc: dict[str, Any]) -> bool:
        """Stores an input's document; False when the ION holds that sha256 already."""
        try:
            self.inputs.insert_one(doc)
            return True
        except DuplicateKeyError:
            return False

    def touch_input(self, key: str, first_ms: int, last_ms: int) -> dict[str, Any] | None:
        """Widens an input's use span to hold [first_ms, last_ms]; None when it is not stored.

        ``use_key`` follows the last use with a second, conditional write: of two concurrent
        touches only the one whose last use won sets it, so it never goes back in time."""
        doc = self.inputs.find_one_and_update(
            {"key": key},
            {"$min": {"first_use_ms": first_ms}, "$max": {"last_use_ms": last_ms}},
            projection={"data": 0},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        last = int(doc["last_use_ms"])
        wanted = use_key(str(doc["ion"]), last, str(doc["sha256"]))
        if doc.get("use_key") != wanted:
            self.inputs.update_one({"key": key, "last_use_ms": last}, {"$set": {"use_key": wanted}})
            doc["use_key"] = wanted
        return doc

    def inputs_last_used_before(self, ion: str, cutoff_ms: int) -> Iterator[dict[str, Any]]:
        """The inputs of an ION whose last use is before ``cutoff_ms``, without their bytes,
        in pages, so a long list never makes the store materialise it at once."""
        lo, hi = f"{ion}:", use_key(ion, cutoff_ms, "")
        cond: dict[str, Any] = {"$gte": lo, "$lt": hi}
        while True:
            docs = list(
                self.inputs.find({"use_key": cond}, {"data": 0})
                .sort("use_key", ASCENDING)
                .limit(64)
            )
            yield from docs
            if len(docs) < 64:
                return
            cond = {"$gt": docs[-1]["use_key"], "$lt": hi}

    def delete_input(self, key: str, last_use_ms: int) -> bool:
        """Deletes an input unless it was used again since ``last_use_ms`` was read."""
        return self.inputs.delete_one({"key": key, "last_use_ms": last_use_ms}).deleted_count == 1

    def write_input_file(self, filename: str, chunks: Iterable[bytes]) -> Any:
        """Writes bytes to a new GridFS file of the inputs bucket; returns its id."""
        writer = blobs.BlobWriter(self.db, INPUTS_BUCKET, filename)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def read_input_file(self, file_id: Any, chunk_size: int) -> Iterator[bytes]:
        return blobs.read_chunks(self.db, INPUTS_BUCKET, file_id, chunk_size)

    def delete_input_file(self, file_id: Any) -> None:
        blobs.delete_file(self.db, INPUTS_BUCKET, file_id)
