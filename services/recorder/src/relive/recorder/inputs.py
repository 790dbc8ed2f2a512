"""Recorded inputs: the bytes a run took from the world (a live batch, a recorded call's
result, a dataset snapshot), stored once per content hash per ION, so a relaunch feeds them
back instead of asking the world again. Knows no gRPC; ``store.py`` holds the queries.

An event names the input it used with the field ``input`` (docs/recorder-storage.md,
"Recorded inputs"): ``custom.data.input`` on ``stream.batch`` and ``call.recorded`` events,
``dataset.input`` on ``dataset.used`` ones. Each use records its time, and retention keeps
an input while any of its uses may still be needed (``sweep``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bson import Binary

from relive import errors
from relive.core.config import Config
from relive.core.names import check_id
from relive.recorder import store as st
from relive.recorder.retention import Windows, keeps_input
from relive.recorder.v1 import event_pb2

KINDS = ("batch", "call", "dataset")
PARQUET = "application/vnd.apache.parquet"
DEFAULT_MEDIA_TYPE = "application/octet-stream"
# A type/subtype, with optional parameters ("application/json; charset=utf-8").
MEDIA_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
    r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=[\x21-\x7e]+)*$"
)
MAX_MEDIA_TYPE = 255
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^ions/([^/]+)/inputs/([^/]+)$")
DOWNLOAD_CHUNK = 1 << 20
# An upload is held here (memory, then a temp file) until its hash is checked, so nothing
# is stored for bytes that do not match.
SPOOL_BYTES = 4 << 20
MAX_SETTING = "RELIVE_MAX_INPUT_BYTES"
HEADER = "header.recorded_input"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _now() -> dt.datetime:
    # The store keeps milliseconds; truncate so the first answer equals every later one.
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _ms(value: dt.datetime) -> int:
    return round(value.timestamp() * 1000)


def _iso(ms: int) -> str:
    value = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def input_name(ion: str, sha256: str) -> str:
    return f"ions/{ion}/inputs/{sha256}"


def parse_input_name(name: str, field: str = "name") -> tuple[str, str]:
    """``ions/{ion}/inputs/{sha256}`` -> (ion, sha256), naming ``field`` when malformed."""
    match = NAME.match(name or "")
    if match is None:
        raise errors.InvalidArgument(
            f"{field} {name[:200]!r} does not match 'ions/{{ion}}/inputs/{{sha256}}'",
            field=field,
        )
    ion, sha = match.groups()
    check_id(ion, f"{field} (ion)")
    if not SHA256.match(sha):
        raise errors.InvalidArgument(
            f"{field} names input {sha[:80]!r}: use its sha256, 64 lowercase hex digits",
            field=field,
        )
    return ion, sha


def input_names(e: event_pb2.Event) -> list[str]:
    """The recorded inputs an event names (its field ``input``), as written; malformed ones
    too, so an export can refuse them rather than drop them."""
    found: list[str] = []
    which = e.WhichOneof("attributes")
    if which == "custom" and "input" in e.custom.data.fields:
        value = e.custom.data.fields["input"]
        if value.WhichOneof("kind") == "string_value" and value.string_value:
            found.append(value.string_value)
    elif which == "dataset" and e.dataset.input:
        found.append(e.dataset.input)
    return found


# ---- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedInput:
    ion: str
    sha256: str
    kind: str
    media_type: str
    size_bytes: int
    first_use_ms: int
    last_use_ms: int
    create_time: dt.datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return input_name(self.ion, self.sha256)

    def to_json(self) -> dict[str, Any]:
        """Its metadata in an export: the proto's field names, times as RFC 3339 (and the use
        span in epoch milliseconds too, which an import reads)."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "kind": self.kind,
            "media_type": self.media_type,
            "size_bytes": self.size_bytes,
            "first_use_time": _iso(self.first_use_ms),
            "last_use_time": _iso(self.last_use_ms),
            "first_use_ms": self.first_use_ms,
            "last_use_ms": self.last_use_ms,
            "create_time": _iso(_ms(self.create_time)) if self.create_time else "",
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RecordedInput:
        """The inverse of ``to_json``; KeyError, ValueError or TypeError when malformed."""
        try:
            ion, sha = parse_input_name(str(raw["name"]))
        except errors.InvalidArgument as e:
            raise ValueError(e.message) from e
        if raw["sha256"] != sha:
            raise ValueError(f"its name names {sha}, its sha256 is {raw['sha256']!r}")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict):
            raise TypeError("labels is not an object")
        created = str(raw.get("create_time") or "")
        return cls(
            ion=ion,
            sha256=sha,
            kind=str(raw["kind"]),
            media_type=str(raw["media_type"]),
            size_bytes=int(raw["size_bytes"]),
            first_use_ms=int(raw["first_use_ms"]),
            last_use_ms=int(raw["last_use_ms"]),
            create_time=(
                dt.datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
            ),
            labels={str(k): str(v) for k, v in labels.items()},
        )

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> RecordedInput:
        return cls(
            ion=str(doc["ion"]),
            sha256=str(doc["sha256"]),
            kind=str(doc["kind"]),
            media_type=str(doc["media_type"]),
            size_bytes=int(doc["size_bytes"]),
            first_use_ms=int(doc["first_use_ms"]),
            last_use_ms=int(doc["last_use_ms"]),
            create_time=st.stored_datetime(doc.get("create_time")),
            labels=json.loads(doc.get("labels_json") or "{}"),
        )


@dataclass(frozen=True)
class InputHeader:
    """What a create says about its input, as received (``check`` validates it)."""

    sha256: str
    kind: str
    media_type: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # The name the client put in the header, if any; it must agree with parent and sha256.
    name: str = ""
    use_ms: int | None = None

    def check(self, ion: str) -> InputHeader:
        sha = self.sha256.lower()
        if not SHA256.match(sha):
            raise errors.InvalidArgument(
                f"{HEADER}.sha256 must be the sha256 of the bytes, 64 hex digits, "
                f"got {self.sha256[:80]!r}",
                field=f"{HEADER}.sha256",
            )
        if self.name and self.name != input_name(ion, sha):
            raise errors.InvalidArgument(
                f"{HEADER}.name is {self.name[:200]!r}, but parent and sha256 name "
                f"{input_name(ion, sha)}",
                field=f"{HEADER}.name",
            )
        if self.kind not in KINDS:
            raise errors.InvalidArgument(
                f"{HEADER}.kind is {self.kind[:80]!r}; use one of {', '.join(KINDS)}",
                field=f"{HEADER}.kind",
            )
        media_type = self.media_type or DEFAULT_MEDIA_TYPE
        if len(media_type) > MAX_MEDIA_TYPE or not MEDIA_TYPE.match(media_type):
            raise errors.InvalidArgument(
                f"{HEADER}.media_type {media_type[:80]!r} is not a media type (type/subtype, "
                f"at most {MAX_MEDIA_TYPE} characters)",
                field=f"{HEADER}.media_type",
            )
        _check_labels(self.labels)
        if self.use_ms is not None and not 0 <= self.use_ms <= st.MAX_MS:
            raise errors.InvalidArgument("header.use_time is out of range", field="header.use_time")
        return InputHeader(sha, self.kind, media_type, dict(self.labels), self.name, self.use_ms)


def _check_labels(labels: Mapping[str, str]) -> None:
    where = f"{HEADER}.labels"
    if len(labels) > MAX_LABELS:
        raise errors.InvalidArgument(
            f"{where} holds {len(labels)} labels; the limit is {MAX_LABELS}", field=where
        )
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or not key.isprintable():
            raise errors.InvalidArgument(
                f"{where} has the key {key[:80]!r}: use 1 to {MAX_LABEL_KEY} printable characters",
                field=where,
            )
        if len(value) > MAX_LABEL_VALUE or not value.isprintable():
            raise errors.InvalidArgument(
                f"{where}[{key}] must be printable and at most {MAX_LABEL_VALUE} characters",
                field=f"{where}[{key}]",
            )


# ---- the inputs --------------------------------------------------------------------------


class RecordedInputs:
    """Create (store once, or record one more use), get, download, restore and sweep."""

    def __init__(self, config: Config, store: st.Store, ion_of: Callable[[str, str], str]) -> None:
        self.config = config
        self.store = store
        self.ion_of = ion_of

    def _spool(self) -> IO[bytes]:
        base = Path(self.config.data_dir) / "tmp"
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            return tempfile.SpooledTemporaryFile(SPOOL_BYTES)
        return tempfile.SpooledTemporaryFile(SPOOL_BYTES, dir=str(base))

    def create(self, parent: str, header: InputHeader, chunks: Iterable[bytes]) -> RecordedInput:
        """Stores the bytes once per sha256 in the ION and records a use at ``use_ms``.

        With no chunks at all (the header alone) it only records the use, of an input that
        must be stored already. An empty input is one empty chunk."""
        ion = self.ion_of(parent, "header.parent")
        header = header.check(ion)
        use = now_ms() if header.use_ms is None else header.use_ms
        key = f"{ion}:{header.sha256}"
        pieces = iter(chunks)
        first = next(pieces, None)
        if first is None:
            touched = self.store.touch_input(key, use, use)
            if touched is None:
                raise errors.FailedPrecondition(
                    f"{input_name(ion, header.sha256)} is not stored: send the bytes",
                    field="chunk",
                )
            return RecordedInput.from_doc(touched)
        with self._spool() as spool:
            size = self._receive(first, pieces, header.sha256, spool)
            return self._keep(ion, header, spool, size, use, use)

    def _receive(self, first: bytes, rest: Iterator[bytes], sha256: str, out: IO[bytes]) -> int:
        """Writes the chunks to ``out``, checking the bound and then the hash."""
        limit = self.config.max_input_bytes
        digest = hashlib.sha256()
        size = 0
        for piece in itertools.chain((first,), rest):
            size += len(piece)
            if size > limit:
                raise errors.ResourceExhausted(
                    f"the input is larger than {MAX_SETTING} ({limit} bytes)", field=MAX_SETTING
                )
            digest.update(piece)
            out.write(piece)
        if digest.hexdigest() != sha256:
            raise errors.InvalidArgument(
                f"the bytes' sha256 is {digest.hexdigest()}, not {HEADER}.sha256 {sha256}",
                field=f"{HEADER}.sha256",
            )
        return size

    def _keep(
        self,
        ion: str,
        header: InputHeader,
        spool: IO[bytes],
        size: int,
        first_ms: int,
        last_ms: int,
        created: dt.datetime | None = None,
    ) -> RecordedInput:
        """Stores checked bytes unless the ION holds them already; either way the use span
        takes in [first_ms, last_ms]."""
        key = f"{ion}:{header.sha256}"
        touched = self.store.touch_input(key, first_ms, last_ms)
        if touched is not None:
            return RecordedInput.from_doc(touched)
        doc: dict[str, Any] = {
            "key": key,
            "ion": ion,
            "sha256": header.sha256,
            "kind": header.kind,
            "media_type": header.media_type,
            "size_bytes": size,
            "labels_json": json.dumps(dict(header.labels), sort_keys=True),
            "first_use_ms": first_ms,
            "last_use_ms": last_ms,
            "use_key": st.use_key(ion, last_ms, header.sha256),
            "create_time": created or _now(),
        }
        spool.seek(0)
        if size <= st.INLINE_MAX_BYTES:
            doc["data"] = Binary(spool.read())
        else:
            doc["file_id"] = self.store.write_input_file(
                input_name(ion, header.sha256), iter(lambda: spool.read(DOWNLOAD_CHUNK), b"")
            )
        if self.store.insert_input(doc):
            return RecordedInput.from_doc(doc)
        # A concurrent create stored it first: keep that one.
        if "file_id" in doc:
            self.store.delete_input_file(doc["file_id"])
        touched = self.store.touch_input(key, first_ms, last_ms)
        if touched is None:
            raise errors.Aborted(
                f"{input_name(ion, header.sha256)} was deleted while it was stored; send it again",
                field="chunk",
            )
        return RecordedInput.from_doc(touched)

    def _doc(self, name: str, with_data: bool = False) -> dict[str, Any]:
        ion, sha = parse_input_name(name)
        self.ion_of(f"ions/{ion}", "name")
        doc = self.store.get_input(f"{ion}:{sha}", with_data=with_data)
        if doc is None:
            raise errors.NotFound(f"recorded input {name} does not exist", field="name")
        return doc

    def get(self, name: str) -> RecordedInput:
        return RecordedInput.from_doc(self._doc(name))

    def download(self, name: str) -> tuple[RecordedInput, Iterator[bytes]]:
        """The input's metadata, and its bytes in chunks of DOWNLOAD_CHUNK."""
        doc = self._doc(name, with_data=True)
        return RecordedInput.from_doc(doc), self._bytes(name, doc)

    def _bytes(self, name: str, doc: dict[str, Any]) -> Iterator[bytes]:
        if doc.get("data") is not None:
            data = bytes(doc["data"])
            for start in range(0, len(data), DOWNLOAD_CHUNK):
                yield data[start : start + DOWNLOAD_CHUNK]
            return
        try:
            yield from self.store.read_input_file(doc.get("file_id"), DOWNLOAD_CHUNK)
        except FileNotFoundError as e:
            # Retention deleted it while it was being read.
            raise errors.NotFound(f"recorded input {name} does not exist", field="name") from e

    def write_to(self, name: str, out: IO[bytes]) -> RecordedInput:
        """Copies an input's bytes into ``out`` (an export); returns its metadata."""
        found, chunks = self.download(name)
        for chunk in chunks:
            out.write(chunk)
        return found

    def check_restorable(self, ion: str, meta: RecordedInput, size: int) -> InputHeader:
        """The header an exported input is stored with; it must fit this deployment."""
        header = InputHeader(meta.sha256, meta.kind, meta.media_type, meta.labels).check(ion)
        if size > self.config.max_input_bytes:
            raise errors.FailedPrecondition(
                f"the archive's input {input_name(ion, header.sha256)} is {size} bytes, more "
                f"than this deployment's {MAX_SETTING} ({self.config.max_input_bytes})",
                field=MAX_SETTING,
            )
        return header

    def restore(self, ion: str, meta: RecordedInput, path: Path) -> RecordedInput:
        """Stores an exported input (an import; ``path`` holds its checked bytes) with its
        use span and creation time, so exporting it again gives the same; one stored
        already keeps its bytes and takes in the span."""
        size = path.stat().st_size
        header = self.check_restorable(ion, meta, size)
        with path.open("rb") as f:
            return self._keep(
                ion, header, f, size, meta.first_use_ms, meta.last_use_ms, meta.create_time
            )

    def sweep(
        self, ion: str, cutoff_ms: int, windows: Windows, pinned: Callable[[], set[str]]
    ) -> int:
        """Deletes the inputs of ``ion`` whose last use is before the cutoff and whose use
        span meets no capture window, except those ``pinned`` names (inputs named by the
        launch records a capture pins; asked only when there is a candidate). Returns how
        many went. An input used again during the sweep stays (the delete is conditional)."""
        held: set[str] | None = None
        deleted = 0
        for doc in self.store.inputs_last_used_before(ion, cutoff_ms):
            first, last = int(doc["first_use_ms"]), int(doc["last_use_ms"])
            if keeps_input(first, last, cutoff_ms, windows, named_by_pinned=False):
                continue
            if held is None:
                held = pinned()
            named = input_name(ion, str(doc["sha256"])) in held
            if keeps_input(first, last, cutoff_ms, windows, named):
                continue
            if self.store.delete_input(str(doc["key"]), last):
                deleted += 1
                if doc.get("file_id") is not None:
                    self.store.delete_input_file(doc["file_id"])
        return deleted
