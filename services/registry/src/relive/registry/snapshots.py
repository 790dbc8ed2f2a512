"""Code snapshots: the files of a code tree, stored once per content hash. Knows no gRPC.

A snapshot is named by its tree's hash, ``codeSnapshots/{sha256}``. Each project keeps its own
record of a tree, so a project sees only the snapshots it stored (another project's answer
NOT_FOUND, as missing ones do), and storing a tree the project has already is a no-op that
returns the stored one. The archive is opaque bytes (the snapshot library's tar.gz), kept as a
blob addressed by its sha256, so identical archives are stored once across projects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from bson import ObjectId

from relive.core import identity
from relive.errors import InvalidArgument, NotFound, ResourceExhausted
from relive.registry.model import CodeSnapshot
from relive.registry.store import RegistryStore

NAME_PREFIX = "codeSnapshots/"
KINDS = ("git", "files")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The archive bound is a setting (Config.max_code_snapshot_bytes); these are not: they keep a
# snapshot's record well inside one MongoDB document (16 MB) and one gRPC message.
MAX_FILES = 100_000
MAX_FILE_PATH = 4096
MAX_FILES_BYTES = 8 * 1024 * 1024
MAX_TEXT = 4096
DOWNLOAD_CHUNK = 1024 * 1024
MAX_BYTES_SETTING = "RELIVE_MAX_CODE_SNAPSHOT_BYTES"


def snapshot_name(sha256: str) -> str:
    return f"{NAME_PREFIX}{sha256}"


def parse_snapshot_name(name: str, field: str = "name") -> str:
    """The tree hash in ``codeSnapshots/{sha256}`` (64 lowercase hex digits)."""
    if not name:
        raise InvalidArgument(f"{field} is required", field=field)
    sha = name.removeprefix(NAME_PREFIX)
    if sha == name or not SHA256.match(sha):
        raise InvalidArgument(
            f"{field} {name[:200]!r} is not a code snapshot name: use "
            "'codeSnapshots/{sha256}' with 64 lowercase hex digits",
            field=field,
        )
    return sha


def _sha256(value: str, field: str) -> str:
    if not SHA256.match(value):
        raise InvalidArgument(
            f"{field} must be a sha256: 64 lowercase hex digits, got {value[:80]!r}", field=field
        )
    return value


def _text(value: str, field: str) -> None:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; the limit is {MAX_TEXT}", field=field
        )
    if not value.isprintable():
        raise InvalidArgument(f"{field} must be printable", field=field)


def _file_path(path: str, field: str) -> None:
    """A path relative to the code root that stays inside it."""
    if not path or len(path) > MAX_FILE_PATH:
        raise InvalidArgument(
            f"{field} holds a path of {len(path)} characters; use 1 to {MAX_FILE_PATH}",
            field=field,
        )
    if not path.isprintable() or "\\" in path:
        raise InvalidArgument(
            f"{field} holds {path[:200]!r}: paths are printable, with '/' between parts",
            field=field,
        )
    parts = path.split("/")
    if path.startswith("/") or posixpath.normpath(path) != path or ".." in parts:
        raise InvalidArgument(
            f"{field} holds {path[:200]!r}: paths are relative to the code root, normalised, "
            "and never leave it",
            field=field,
        )


def check_header(header: CodeSnapshot) -> CodeSnapshot:
    """Validates an upload's header, naming the field at fault; returns it as given."""
    _sha256(header.sha256, "header.sha256")
    _sha256(header.archive_sha256, "header.archive_sha256")
    if header.kind not in KINDS:
        raise InvalidArgument(
            f"header.kind is {header.kind[:80]!r}; use one of {', '.join(KINDS)}",
            field="header.kind",
        )
    if len(header.files) > MAX_FILES:
        raise InvalidArgument(
            f"header.files lists {len(header.files)} files; the limit is {MAX_FILES}",
            field="header.files",
        )
    listed = 0
    for path, digest in header.files.items():
        _file_path(path, "header.files")
        _sha256(digest, f"header.files[{path}]")
        listed += len(path) + len(digest)
    if listed > MAX_FILES_BYTES:
        raise InvalidArgument(
            f"header.files takes {listed} bytes; the limit is {MAX_FILES_BYTES}",
            field="header.files",
        )
    # 0 is proto3's unset: the count of header.files is taken.
    if header.file_count < 0 or (header.files and header.file_count not in (0, len(header.files))):
        raise InvalidArgument(
            f"header.file_count is {header.file_count}, but header.files lists "
            f"{len(header.files)} files",
            field="header.file_count",
        )
    if header.tree_bytes < 0:
        raise InvalidArgument("header.tree_bytes must not be negative", field="header.tree_bytes")
    for attr in ("repo", "commit", "repo_path"):
        _text(getattr(header, attr), f"header.{attr}")
    if header.repo_path:
        _file_path(header.repo_path, "header.repo_path")
    return header


class CodeSnapshotService:
    """Stores, describes and serves code snapshots."""

    def __init__(self, store: RegistryStore, max_archive_bytes: int) -> None:
        self.store = store
        self.max_archive_bytes = max_archive_bytes

    def create(self, header: CodeSnapshot, chunks: Iterable[bytes], name: str = "") -> CodeSnapshot:
        """Stores the archive streamed in ``chunks`` under ``header``; a tree the caller's
        project has already is returned as stored, and nothing is stored again."""
        check_header(header)
        if name and name != header.name:
            raise InvalidArgument(
                f"header.name {name[:200]!r} does not match header.sha256 (want {header.name})",
                field="header.name",
            )
        project = identity.current().project
        stored = self.store.get_code_snapshot(header.sha256, project)
        if stored is not None:
            for _ in chunks:  # the client streams the archive anyway; it was stored before
                pass
            return stored
        size, file_id = self._receive(header, chunks)
        self.store.keep_blob(header.archive_sha256, file_id, size)
        now = datetime.now(UTC)
        snap = dataclasses.replace(
            header,
            file_count=header.file_count or len(header.files),
            archive_bytes=size,
            project=project,
            create_time=now.replace(microsecond=now.microsecond // 1000 * 1000),
        )
        return self.store.insert_code_snapshot(snap)

    def _receive(self, header: CodeSnapshot, chunks: Iterable[bytes]) -> tuple[int, ObjectId]:
        """Streams the archive into a GridFS file, hashing and bounding it as it comes; on
        any failure the file is deleted, so nothing is left behind."""
        digest = hashlib.sha256()
        size = 0
        upload = self.store.open_upload(header.name)
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > self.max_archive_bytes:
                    raise ResourceExhausted(
                        f"the archive of {header.name} is over {self.max_archive_bytes} bytes, "
                        f"the registry's limit ({MAX_BYTES_SETTING})",
                        field="chunk",
                        metadata={"setting": MAX_BYTES_SETTING},
                    )
                digest.update(chunk)
                upload.write(chunk)
            sha = digest.hexdigest()
            if sha != header.archive_sha256:
                raise InvalidArgument(
                    f"the archive's sha256 is {sha}, not header.archive_sha256 "
                    f"{header.archive_sha256}",
                    field="header.archive_sha256",
                )
            file_id = upload.close()
        except BaseException:
            upload.abort()
            raise
        return size, file_id

    def get(self, name: str) -> CodeSnapshot:
        sha = parse_snapshot_name(name)
        found = self.store.get_code_snapshot(sha, identity.current().scope)
        if found is None:
            raise NotFound(f"code snapshot {name} not found", field="name")
        return found

    def download(self, name: str) -> tuple[CodeSnapshot, Iterator[bytes]]:
        """The snapshot's metadata, and its archive in chunks of 1 MiB."""
        snap = self.get(name)
        return snap, self.store.read_blob(snap.archive_sha256, DOWNLOAD_CHUNK)
