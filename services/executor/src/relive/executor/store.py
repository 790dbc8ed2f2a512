"""The executor's mongoengine documents and queries; nothing else touches its database.

A run is kept as its serialized ``Run`` message plus the few fields queries need, each with a
single-field index (the embedded store does not use compound indexes for queries).
"""

from __future__ import annotations

from collections.abc import Iterator

import mongoengine as me
from pymongo import ReturnDocument

from relive.core.identity import DEFAULT_PROJECT
from relive.executor.v1 import executor_pb2

ALIAS = "executor"
TERMINAL = {
    executor_pb2.RUN_STATE_SUCCEEDED,
    executor_pb2.RUN_STATE_FAILED,
    executor_pb2.RUN_STATE_CANCELLED,
}


class ExecutorRunDoc(me.Document):
    meta = {
        "db_alias": ALIAS,
        "collection": "runs",
        "indexes": ["ion", "state", {"fields": ["request_key"], "sparse": True}],
    }
    name = me.StringField(required=True, unique=True)
    ion = me.StringField(required=True)
    # The ION's project: whoever cannot see it finds no such run. Runs written before
    # projects were kept belong to the default project.
    project = me.StringField(default=DEFAULT_PROJECT)
    number = me.IntField(required=True)
    state = me.IntField(required=True)
    request_key = me.StringField()
    data = me.BinaryField(required=True)


class ExecutorCounterDoc(me.Document):
    meta = {"db_alias": ALIAS, "collection": "counters"}
    key = me.StringField(required=True, unique=True)
    value = me.IntField(default=0)


class RunStore:
    def next_number(self, key: str) -> int:
        """An atomic per-key counter: 1, 2, 3, ..."""
        doc = ExecutorCounterDoc._get_collection().find_one_and_update(
            {"key": key},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["value"])

    def create(
        self,
        run: executor_pb2.Run,
        ion: str,
        project: str,
        number: int,
        request_key: str = "",
    ) -> None:
        doc = ExecutorRunDoc(
            name=run.name,
            ion=ion,
            project=project,
            number=number,
            state=int(run.state),
            data=run.SerializeToString(),
        )
        if request_key:
            doc.request_key = request_key
        doc.save(force_insert=True)

    def save(self, run: executor_pb2.Run) -> None:
        ExecutorRunDoc.objects(name=run.name).update_one(
            set__state=int(run.state), set__data=run.SerializeToString()
        )

    def get(self, name: str) -> executor_pb2.Run | None:
        doc = ExecutorRunDoc.objects(name=name).first()
        return _load(doc) if doc else None

    def get_with_project(self, name: str) -> tuple[executor_pb2.Run, str] | None:
        """The run and its project, in one read."""
        doc = ExecutorRunDoc.objects(name=name).first()
        return (_load(doc), doc.project or DEFAULT_PROJECT) if doc else None

    def project_of(self, name: str) -> str | None:
        """The run's project, or None when there is no such run."""
        doc = ExecutorRunDoc.objects(name=name).only("project").first()
        return (doc.project or DEFAULT_PROJECT) if doc else None

    def project_of_ion(self, ion: str) -> str | None:
        """The project of an ION's runs, or None when it has none (for an ION since deleted)."""
        doc = ExecutorRunDoc.objects(ion=ion).only("project").first()
        return (doc.project or DEFAULT_PROJECT) if doc else None

    def by_request(self, request_key: str) -> executor_pb2.Run | None:
        doc = ExecutorRunDoc.objects(request_key=request_key).first()
        return _load(doc) if doc else None

    def list_runs(
        self, ion: str, limit: int, before_number: int | None = None
    ) -> list[tuple[int, executor_pb2.Run]]:
        """Newest first."""
        query = ExecutorRunDoc.objects(ion=ion)
        if before_number is not None:
            query = query.filter(number__lt=before_number)
        docs = sorted(query, key=lambda d: -int(d.number))[:limit]
        return [(int(d.number), _load(d)) for d in docs]

    def all_of(self, ion: str) -> Iterator[executor_pb2.Run]:
        for doc in sorted(ExecutorRunDoc.objects(ion=ion), key=lambda d: -int(d.number)):
            yield _load(doc)

    def unfinished(self) -> list[tuple[executor_pb2.Run, str]]:
        """Runs not in a terminal state, each with its project."""
        docs = ExecutorRunDoc.objects(state__nin=[int(s) for s in TERMINAL])
        return [(_load(d), d.project or DEFAULT_PROJECT) for d in docs]


def _load(doc: ExecutorRunDoc) -> executor_pb2.Run:
    run = executor_pb2.Run()
    run.ParseFromString(doc.data)
    return run
