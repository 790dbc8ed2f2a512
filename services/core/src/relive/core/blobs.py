"""GridFS files written and read one chunk at a time: the registry's models and code archives,
and the recorder's recorded inputs.

The standard GridFS layout (``<bucket>.files`` and ``<bucket>.chunks``), so any MongoDB tool
reads it, but not pymongo's ``GridIn``/``GridOut``: ``GridIn`` buffers up to 48 MB of chunks
before it inserts them, and the embedded store answers a ``GridOut`` cursor with every
remaining chunk in one reply (the whole file in memory, and past 48 MB a protocol error).
The embedded store keeps GridFS collections in tables of their own with the bytes in a plain
column, which makes them its fastest place for large binary values (docs/recorder-storage.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import gridfs
from bson import Binary, ObjectId

GRIDFS_CHUNK = 1024 * 1024


def ensure_indexes(db: Any, bucket: str) -> None:
    """The GridFS standard indexes, plus a single-field one the embedded store can use."""
    chunks = db[f"{bucket}.chunks"]
    chunks.create_index([("files_id", 1), ("n", 1)], unique=True)
    chunks.create_index("files_id")
    db[f"{bucket}.files"].create_index([("filename", 1), ("uploadDate", 1)])


class BlobWriter:
    """Writes one GridFS file, a chunk at a time; it holds at most one chunk in memory."""

    def __init__(self, db: Any, bucket: str, filename: str, chunk_size: int = GRIDFS_CHUNK) -> None:
        self._files = db[f"{bucket}.files"]
        self._chunks = db[f"{bucket}.chunks"]
        self.file_id = ObjectId()
        self.filename = filename
        self.chunk_size = chunk_size
        self.length = 0
        self._n = 0
        self._pending = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        self._pending += data
        self.length += len(data)
        while len(self._pending) >= self.chunk_size:
            self._put(bytes(self._pending[: self.chunk_size]))
            del self._pending[: self.chunk_size]

    def _put(self, data: bytes) -> None:
        self._chunks.insert_one({"files_id": self.file_id, "n": self._n, "data": Binary(data)})
        self._n += 1

    def close(self) -> ObjectId:
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        self._files.insert_one(
            {
                "_id": self.file_id,
                "length": self.length,
                "chunkSize": self.chunk_size,
                "uploadDate": datetime.now(UTC),
                "filename": self.filename,
            }
        )
        self._closed = True
        return self.file_id

    def abort(self) -> None:
        """Deletes what was written. The files document exists only once closed (and the
        embedded store fails a delete of a GridFS files document it does not have)."""
        self._chunks.delete_many({"files_id": self.file_id})
        if self._closed:
            self._files.delete_many({"_id": self.file_id})


def read_chunks(db: Any, bucket: str, file_id: Any, chunk_size: int) -> Iterator[bytes]:
    """The bytes of one GridFS file, ``chunk_size`` at a time, one query per stored chunk.
    FileNotFoundError when the file or one of its chunks is missing."""
    meta = db[f"{bucket}.files"].find_one({"_id": file_id}, {"length": 1, "chunkSize": 1})
    if meta is None:
        raise FileNotFoundError(str(file_id))
    chunks = db[f"{bucket}.chunks"]
    count = -(-int(meta["length"]) // int(meta["chunkSize"]))
    pending = bytearray()
    for n in range(count):
        doc = chunks.find_one({"files_id": file_id, "n": n})
        if doc is None:
            raise FileNotFoundError(f"{file_id}: chunk {n} of {count} is missing")
        pending += doc["data"]
        while len(pending) >= chunk_size:
            yield bytes(pending[:chunk_size])
            del pending[:chunk_size]
    if pending:
        yield bytes(pending)


def delete_file(db: Any, bucket: str, file_id: Any) -> None:
    """Deletes one GridFS file; one that is already gone is no error."""
    with contextlib.suppress(gridfs.errors.NoFile):
        gridfs.GridFSBucket(db, bucket_name=bucket, chunk_size_bytes=GRIDFS_CHUNK).delete(file_id)
