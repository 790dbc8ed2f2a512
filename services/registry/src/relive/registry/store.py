"""The registry's mongoengine documents and queries; nothing else touches the database.

Lookups go through single-field indexes (the embedded store does not use compound ones):
revisions and model versions are keyed by a built string such as ``"churn:00000003"``, so
a range on that one key pages through one ION's revisions in order.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import gridfs
import mongoengine
from bson import ObjectId
from mongoengine import (
    BinaryField,
    BooleanField,
    DictField,
    Document,
    IntField,
    ListField,
    LongField,
    ObjectIdField,
    StringField,
)
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from relive.core import blobs
from relive.core.blobs import GRIDFS_CHUNK, BlobWriter
from relive.errors import AlreadyExists
from relive.registry.model import (
    CodeRef,
    CodeSnapshot,
    DatasetRef,
    Ion,
    Lineage,
    ModelVersion,
    Revision,
)

ALIAS = "registry"
# One GridFS bucket holds every blob (model bytes and code archives), addressed by sha256
# through BlobDoc; its name predates code snapshots.
BUCKET = "models"


def _ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def revision_key(ion_id: str, revision_id: int) -> str:
    return f"{ion_id}:{revision_id:010d}"


def version_key(model_id: str, version_id: int) -> str:
    return f"{model_id}:{version_id:010d}"


def snapshot_key(project: str, sha256: str) -> str:
    return f"{project}:{sha256}"


class IonDoc(Document):
    meta = {
        "db_alias": ALIAS,
        "collection": "ions",
        "indexes": [{"fields": ["ion_id"], "unique": True}, "project"],
    }
    ion_id = StringField(required=True)
    project = StringField(default="default")
    latest_revision = IntField(default=0)
    retention_days = IntField(default=7)
    # Times are epoch milliseconds: the embedded store turns a datetime in $set into a string.
    create_ms = LongField()
    update_ms = LongField()

    def to_domain(self) -> Ion:
        return Ion(
            ion_id=self.ion_id,
            latest_revision=self.latest_revision,
            retention_days=self.retention_days,
            project=self.project,
            create_time=_time(self.create_ms),
            update_time=_time(self.update_ms),
        )


class IonTombstoneDoc(Document):
    """The project a deleted ION belonged to: its id is never given to another project, whose
    users would otherwise see the events the recorder still keeps under it."""

    meta = {
        "db_alias": ALIAS,
        "collection": "ion_tombstones",
        "indexes": [{"fields": ["ion_id"], "unique": True}],
    }
    ion_id = StringField(required=True)
    project = StringField(required=True)


class RevisionDoc(Document):
    meta = {
        "db_alias": ALIAS,
        "collection": "revisions",
        "indexes": [{"fields": ["key"], "unique": True}, "ion_id"],
    }
    key = StringField(required=True)
    ion_id = StringField(required=True)
    revision_id = IntField(required=True)
    # Canonical JSON: opaque to the store, and free of keys MongoDB would refuse ("$x", "a.b").
    definition_json = StringField(required=True)
    definition_sha256 = StringField(required=True)
    source_yaml = StringField(default="")
    source_path = StringField(default="")
    code_refs = ListField(DictField())
    create_ms = LongField()

    def to_domain(self) -> Revision:
        return Revision(
            ion_id=self.ion_id,
            revision_id=self.revision_id,
            definition=json.loads(self.definition_json),
            source_yaml=self.source_yaml,
            source_path=self.source_path,
            code_refs=[CodeRef(**ref) for ref in self.code_refs],
            definition_sha256=self.definition_sha256,
            create_time=_time(self.create_ms),
        )


class ModelVersionDoc(Document):
    meta = {
        "db_alias": ALIAS,
        "collection": "model_versions",
        "indexes": [{"fields": ["key"], "unique": True}, "sha256"],
    }
    key = StringField(required=True)
    model_id = StringField(required=True)
    project = StringField(default="default")
    version_id = IntField(required=True)
    sha256 = StringField(required=True)
    size_bytes = IntField(required=True)
    producing_run = StringField(default="")
    producing_node = StringField(default="")
    dataset_refs = ListField(DictField())
    labels_json = StringField(default="{}")
    create_ms = LongField()

    def to_domain(self) -> ModelVersion:
        return ModelVersion(
            model_id=self.model_id,
            version_id=self.version_id,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            lineage=Lineage(
                producing_run=self.producing_run,
                producing_node=self.producing_node,
                dataset_refs=[DatasetRef(**d) for d in self.dataset_refs],
                labels=json.loads(self.labels_json),
            ),
            create_time=_time(self.create_ms),
            project=self.project or "default",
        )


class CodeSnapshotDoc(Document):
    """One project's record of a code tree; its archive is a blob, by the archive's sha256."""

    meta = {
        "db_alias": ALIAS,
        "collection": "code_snapshots",
        "indexes": [{"fields": ["key"], "unique": True}, "sha256"],
    }
    # "<project>:<tree sha256>": a single-field key, which the embedded store can use.
    key = StringField(required=True)
    sha256 = StringField(required=True)
    project = StringField(required=True)
    kind = StringField(required=True)
    archive_sha256 = StringField(required=True)
    archive_bytes = LongField(required=True)
    file_count = IntField(default=0)
    tree_bytes = LongField(default=0)
    # The files map as zlib-compressed JSON: paths may hold "." or "$", which MongoDB refuses
    # in keys, and an opaque binary field costs the embedded store next to nothing.
    files_z = BinaryField()
    repo = StringField(default="")
    commit = StringField(default="")
    dirty = BooleanField(default=False)
    repo_path = StringField(default="")
    create_ms = LongField()

    def to_domain(self) -> CodeSnapshot:
        files = json.loads(zlib.decompress(self.files_z)) if self.files_z else {}
        return CodeSnapshot(
            sha256=self.sha256,
            kind=self.kind,
            archive_sha256=self.archive_sha256,
            file_count=self.file_count,
            tree_bytes=self.tree_bytes,
            files=files,
            repo=self.repo,
            commit=self.commit,
            dirty=self.dirty,
            repo_path=self.repo_path,
            archive_bytes=self.archive_bytes,
            project=self.project,
            create_time=_time(self.create_ms),
        )


class BlobDoc(Document):
    """One GridFS file per distinct sha256."""

    meta = {
        "db_alias": ALIAS,
        "collection": "blobs",
        "indexes": [{"fields": ["sha256"], "unique": True}],
    }
    sha256 = StringField(required=True)
    file_id = ObjectIdField(required=True)
    size_bytes = IntField(required=True)


class RequestDoc(Document):
    """What a create with a request_id returned, so a repeat returns the same."""

    meta = {
        "db_alias": ALIAS,
        "collection": "requests",
        "indexes": [{"fields": ["key"], "unique": True}, "result"],
    }
    key = StringField(required=True)
    result = StringField(required=True)
    create_ms = LongField()


class CounterDoc(Document):
    meta = {
        "db_alias": ALIAS,
        "collection": "counters",
        "indexes": [{"fields": ["key"], "unique": True}],
    }
    key = StringField(required=True)
    value = IntField(default=0)


class RegistryStore:
    """Queries over the documents above, returning domain values."""

    def __init__(self) -> None:
        for doc in (
            IonDoc,
            IonTombstoneDoc,
            RevisionDoc,
            ModelVersionDoc,
            CodeSnapshotDoc,
            BlobDoc,
            RequestDoc,
            CounterDoc,
        ):
            doc.ensure_indexes()
        blobs.ensure_indexes(self._db(), BUCKET)

    def _db(self) -> Any:
        return mongoengine.get_db(ALIAS)

    def _bucket(self) -> gridfs.GridFSBucket:
        return gridfs.GridFSBucket(self._db(), bucket_name=BUCKET, chunk_size_bytes=GRIDFS_CHUNK)

    # ------------------------------------------------------------------ counters, requests

    def next_value(self, key: str) -> int:
        """An atomic per-key counter: 1, 2, 3, ..."""
        coll = CounterDoc._get_collection()
        for _ in range(3):
            try:
                doc = coll.find_one_and_update(
                    {"key": key},
                    {"$inc": {"value": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                return int(doc["value"])
            except DuplicateKeyError:
                continue  # two first calls raced on the upsert; the loser retries
        raise AlreadyExists(f"counter {key} is contended")

    def advance_counter(self, key: str, at_least: int) -> None:
        """Moves a counter to ``at_least`` unless it is past it already."""
        coll = CounterDoc._get_collection()
        for _ in range(3):
            try:
                coll.update_one({"key": key}, {"$max": {"value": at_least}}, upsert=True)
                return
            except DuplicateKeyError:
                continue  # two first calls raced on the upsert; the loser retries
        raise AlreadyExists(f"counter {key} is contended")

    def drop_counter(self, key: str) -> None:
        CounterDoc._get_collection().delete_many({"key": key})

    def recall(self, key: str) -> str | None:
        doc = RequestDoc.objects(key=key).first()
        return str(doc.result) if doc else None

    def claim(self, key: str, result: str, now: datetime) -> bool:
        """Records a request id before its work; False when another call holds it."""
        try:
            RequestDoc(key=key, result=result, create_ms=_ms(now)).save(force_insert=True)
        except mongoengine.NotUniqueError:
            return False
        return True

    def forget(self, key: str) -> None:
        RequestDoc.objects(key=key).delete()

    def remember(self, key: str, result: str, now: datetime) -> str:
        """Records a request's result; when another got there first, returns that one's."""
        try:
            RequestDoc(key=key, result=result, create_ms=_ms(now)).save(force_insert=True)
        except mongoengine.NotUniqueError:
            return self.recall(key) or result
        return result

    # ------------------------------------------------------------------------------ IONs

    def insert_ion(self, ion_id: str, project: str, retention_days: int, now: datetime) -> Ion:
        doc = IonDoc(
            ion_id=ion_id,
            project=project,
            latest_revision=0,
            retention_days=retention_days,
            create_ms=_ms(now),
            update_ms=_ms(now),
        )
        try:
            doc.save(force_insert=True)
        except mongoengine.NotUniqueError as e:
            raise AlreadyExists(f"ION ions/{ion_id} already exists", field="ion_id") from e
        return doc.to_domain()

    def get_ion(self, ion_id: str) -> Ion | None:
        doc = IonDoc.objects(ion_id=ion_id).first()
        return doc.to_domain() if doc else None

    def list_ions(self, after: str, limit: int, project: str | None = None) -> list[Ion]:
        """IONs by id after ``after``; only those of ``project`` unless it is None."""
        query = IonDoc.objects(ion_id__gt=after) if after else IonDoc.objects()
        if project is not None:
            query = query.filter(project=project)
        return [d.to_domain() for d in query.order_by("ion_id").limit(limit)]

    def advance_ion(
        self, ion_id: str, revision_id: int, retention_days: int, now: datetime
    ) -> None:
        """Points the ION at a newer revision; an older one arriving late changes nothing."""
        IonDoc.objects(ion_id=ion_id, latest_revision__lt=revision_id).update_one(
            set__latest_revision=revision_id,
            set__retention_days=retention_days,
            set__update_ms=_ms(now),
        )

    def former_project(self, ion_id: str) -> str | None:
        """The project of a deleted ION with this id, if there was one."""
        doc = IonTombstoneDoc.objects(ion_id=ion_id).first()
        return str(doc.project) if doc else None

    def delete_ion(self, ion_id: str) -> bool:
        doc = IonDoc.objects(ion_id=ion_id).first()
        if doc is not None:
            IonTombstoneDoc.objects(ion_id=ion_id).update_one(
                set__project=doc.project or "default", upsert=True
            )
        deleted = IonDoc.objects(ion_id=ion_id).delete()
        RevisionDoc.objects(ion_id=ion_id).delete()
        # A repeat of the create that made it must not answer with a deleted ION.
        RequestDoc.objects(result=f"ions/{ion_id}").delete()
        self.drop_counter(f"rev:{ion_id}")
        return bool(deleted)

    # ------------------------------------------------------------------------- revisions

    def insert_revision(self, rev: Revision) -> Revision:
        from relive.registry.definition import canonical_json

        RevisionDoc(
            key=revision_key(rev.ion_id, rev.revision_id),
            ion_id=rev.ion_id,
            revision_id=rev.revision_id,
            definition_json=canonical_json(rev.definition),
            definition_sha256=rev.definition_sha256,
            source_yaml=rev.source_yaml,
            source_path=rev.source_path,
            code_refs=[ref.__dict__ for ref in rev.code_refs],
            create_ms=_ms(rev.create_time),
        ).save(force_insert=True)
        return rev

    def get_revision(self, ion_id: str, revision_id: int) -> Revision | None:
        doc = RevisionDoc.objects(key=revision_key(ion_id, revision_id)).first()
        return doc.to_domain() if doc else None

    def list_revisions(self, ion_id: str, before: int | None, limit: int) -> list[Revision]:
        """Newest first, starting below ``before``."""
        low = revision_key(ion_id, 0)
        high = revision_key(ion_id, before) if before is not None else f"{ion_id};"
        query = RevisionDoc.objects(key__gt=low, key__lt=high).order_by("-key").limit(limit)
        return [d.to_domain() for d in query]

    # -------------------------------------------------------------------- model versions

    def open_upload(self, filename: str) -> BlobWriter:
        """A GridFS file being written; ``filename`` says what it holds ("models/m")."""
        return BlobWriter(self._db(), BUCKET, filename)

    def keep_blob(self, sha256: str, file_id: ObjectId, size_bytes: int) -> ObjectId:
        """Stores the bytes once per sha256: a duplicate upload is deleted in favour of the
        file already kept, which is returned."""
        existing = BlobDoc.objects(sha256=sha256).first()
        if existing is None:
            try:
                BlobDoc(sha256=sha256, file_id=file_id, size_bytes=size_bytes).save(
                    force_insert=True
                )
                return file_id
            except mongoengine.NotUniqueError:
                existing = BlobDoc.objects(sha256=sha256).first()
        assert existing is not None
        if existing.file_id != file_id:
            self._bucket().delete(file_id)
        return ObjectId(existing.file_id)

    def discard_upload(self, file_id: ObjectId) -> None:
        with contextlib.suppress(gridfs.errors.NoFile):
            self._bucket().delete(file_id)

    def insert_model_version(self, mv: ModelVersion) -> bool:
        """Stores a version; False when its id is taken (by a restore, or a concurrent one)."""
        try:
            ModelVersionDoc(
                key=version_key(mv.model_id, mv.version_id),
                model_id=mv.model_id,
                project=mv.project,
                version_id=mv.version_id,
                sha256=mv.sha256,
                size_bytes=mv.size_bytes,
                producing_run=mv.lineage.producing_run,
                producing_node=mv.lineage.producing_node,
                dataset_refs=[d.__dict__ for d in mv.lineage.dataset_refs],
                labels_json=json.dumps(mv.lineage.labels, sort_keys=True),
                create_ms=_ms(mv.create_time),
            ).save(force_insert=True)
        except mongoengine.NotUniqueError:
            return False
        return True

    def get_model_version(self, model_id: str, version_id: int) -> ModelVersion | None:
        doc = ModelVersionDoc.objects(key=version_key(model_id, version_id)).first()
        return doc.to_domain() if doc else None

    def model_project(self, model_id: str) -> str | None:
        """The project that owns a model (that of its first version), or None if it has none."""
        doc = (
            ModelVersionDoc.objects(key__gt=version_key(model_id, 0), key__lt=f"{model_id};")
            .order_by("key")
            .only("project")
            .first()
        )
        return (doc.project or "default") if doc else None

    def latest_model_version(self, model_id: str) -> ModelVersion | None:
        query = ModelVersionDoc.objects(
            key__gt=version_key(model_id, 0), key__lt=f"{model_id};"
        ).order_by("-key")
        doc = query.first()
        return doc.to_domain() if doc else None

    def list_model_versions(self, model_id: str, after: int, limit: int) -> list[ModelVersion]:
        """Oldest first, starting above ``after``."""
        query = ModelVersionDoc.objects(
            key__gt=version_key(model_id, after), key__lt=f"{model_id};"
        ).order_by("key")
        return [d.to_domain() for d in query.limit(limit)]

    def read_blob(self, sha256: str, chunk_size: int) -> Iterator[bytes]:
        """The bytes of a blob, ``chunk_size`` at a time, never all at once."""
        blob = BlobDoc.objects(sha256=sha256).first()
        if blob is None:
            raise FileNotFoundError(sha256)
        yield from blobs.read_chunks(self._db(), BUCKET, blob.file_id, chunk_size)

    # -------------------------------------------------------------------- code snapshots

    def insert_code_snapshot(self, snap: CodeSnapshot) -> CodeSnapshot:
        """Records a project's snapshot; when that project has it already (a concurrent
        upload of the same tree), returns the one stored first."""
        assert snap.create_time is not None
        files = json.dumps(snap.files, sort_keys=True, separators=(",", ":")).encode()
        try:
            CodeSnapshotDoc(
                key=snapshot_key(snap.project, snap.sha256),
                sha256=snap.sha256,
                project=snap.project,
                kind=snap.kind,
                archive_sha256=snap.archive_sha256,
                archive_bytes=snap.archive_bytes,
                file_count=snap.file_count,
                tree_bytes=snap.tree_bytes,
                files_z=zlib.compress(files, 6),
                repo=snap.repo,
                commit=snap.commit,
                dirty=snap.dirty,
                repo_path=snap.repo_path,
                create_ms=_ms(snap.create_time),
            ).save(force_insert=True)
        except mongoengine.NotUniqueError:
            found = self.get_code_snapshot(snap.sha256, snap.project)
            assert found is not None
            return found
        return snap

    def get_code_snapshot(self, sha256: str, project: str | None) -> CodeSnapshot | None:
        """``project``'s snapshot of the tree ``sha256``; any project's when None."""
        if project is None:
            doc = CodeSnapshotDoc.objects(sha256=sha256).first()
        else:
            doc = CodeSnapshotDoc.objects(key=snapshot_key(project, sha256)).first()
        return doc.to_domain() if doc else None
