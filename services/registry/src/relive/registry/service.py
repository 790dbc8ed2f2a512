"""The registry's domain logic: IONs, immutable revisions, and model versions. Knows no gRPC.

Everything belongs to a project: an ION to its creator's, a model to the creator of its first
version's. Another project's resources answer NOT_FOUND exactly as missing ones do; ids stay
unique across the deployment, so creating a taken id answers ALREADY_EXISTS either way. A
deleted ION's id stays its project's (the recorder keeps its events).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from bson import ObjectId

from relive.core import identity, names
from relive.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from relive.registry import definition
from relive.registry.model import CodeRef, Ion, Lineage, ModelVersion, Page, Revision
from relive.registry.store import RegistryStore

MAX_REQUEST_ID = 128
MAX_SOURCE_PATH = 4096
MAX_CODE_REFS = 1000
MAX_TEXT = 4096
MAX_LABELS = 64
DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The largest version id: version keys hold 10 digits (store.version_key).
MAX_VERSION_ID = 10**10 - 1


def _now() -> datetime:
    # MongoDB keeps milliseconds; truncate so a value reads back as it was written.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _bounded(value: str, field: str, limit: int = MAX_TEXT) -> str:
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; the limit is {limit}", field=field
        )
    return value


def _request_id(value: str, field: str = "request_id") -> str:
    _bounded(value, field, MAX_REQUEST_ID)
    if value and not value.isprintable():
        raise InvalidArgument(f"{field} must be printable", field=field)
    return value


def _same_code(before: Sequence[CodeRef], now: Sequence[CodeRef]) -> bool:
    """Whether registering again saw the same code: a new commit (or a tree that became
    dirty) makes a new revision even when the ION file did not change. A client that
    sends no refs does not know, and keeps the latest revision."""
    if not now:
        return True

    def key(refs: Sequence[CodeRef]) -> set[tuple[str, str, str, str, bool]]:
        return {(r.module, r.repo, r.path, r.commit, r.dirty) for r in refs}

    return key(before) == key(now)


def _code_refs(refs: Sequence[CodeRef]) -> list[CodeRef]:
    if len(refs) > MAX_CODE_REFS:
        raise InvalidArgument(f"at most {MAX_CODE_REFS} code_refs", field="code_refs")
    for i, ref in enumerate(refs):
        for attr in (
            "module",
            "repo",
            "path",
            "commit",
            "tree_sha256",
            "snapshot",
            "root",
            "file_sha256",
        ):
            _bounded(getattr(ref, attr), f"code_refs[{i}].{attr}")
    return list(refs)


def _which(value: str, field: str, what: str) -> int | None:
    """A revision or version id: a number from 1, or "latest" (None)."""
    if value == "latest":
        return None
    if not value.isdigit() or int(value) < 1 or len(value) > 18:
        raise InvalidArgument(
            f"{field} names {what} {value!r}: use a number from 1, or 'latest'", field=field
        )
    return int(value)


class RegistryService:
    """IONs and their revisions, and model versions with their bytes."""

    def __init__(self, store: RegistryStore, code_path: Sequence[str]):
        self.store = store
        self.code_path = tuple(code_path)

    # ------------------------------------------------------------------------------ IONs

    def create_ion(
        self,
        ion_id: str,
        definition_yaml: str,
        *,
        source_path: str = "",
        code_refs: Sequence[CodeRef] = (),
        request_id: str = "",
        restore: bool = False,
    ) -> Ion:
        """Creates an ION with its first revision; a repeated request_id returns the ION."""
        names.check_id(ion_id, "ion_id")
        _request_id(request_id)
        _bounded(source_path, "source_path", MAX_SOURCE_PATH)
        refs = _code_refs(code_refs)
        project = identity.current().project
        # Request ids are the caller's: another project's same id is another request.
        request_key = f"ion:{project}:{request_id}"
        if request_id and (earlier := self._recalled_ion(request_key)):
            return earlier
        parsed = definition.parse(
            definition_yaml,
            source=source_path,
            ion_id=ion_id,
            # A restored revision's code comes with its export's code snapshots.
            code_path=None if restore else self.code_path,
        )
        now = _now()
        # Claim the request id first, so concurrent repeats wait for one create.
        if request_id and not self.store.claim(request_key, f"ions/{ion_id}", now):
            return self._await_ion(request_key)
        try:
            former = self.store.former_project(ion_id)
            if former is not None and former != project:
                raise AlreadyExists(f"ION ions/{ion_id} already exists", field="ion_id")
            self.store.insert_ion(ion_id, project, parsed["retention_days"], now)
        except AlreadyExists:
            if request_id:
                self.store.forget(request_key)
            raise
        self.store.drop_counter(f"rev:{ion_id}")
        self._add_revision(ion_id, parsed, definition_yaml, source_path, refs, now)
        return self._ion(ion_id)

    def _await_ion(self, request_key: str, timeout: float = 10.0) -> Ion:
        """The ION that another call with the same request id is creating."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = self.store.recall(request_key)
            if name is None:
                break  # that call failed; so does this repeat of it
            ion = self._visible(self.store.get_ion(name.removeprefix("ions/")))
            if ion is not None and ion.latest_revision > 0:
                return ion
            time.sleep(0.02)
        else:
            # The claimant died between claiming and creating: release its claim, so the
            # client's retry (ABORTED is retried) creates the ION.
            self.store.forget(request_key)
        raise Aborted("a create with the same request_id did not finish; retry")

    def _recalled_ion(self, request_key: str) -> Ion | None:
        name = self.store.recall(request_key)
        if name is None:
            return None
        ion = self._visible(self.store.get_ion(name.removeprefix("ions/")))
        if ion is not None and ion.latest_revision == 0:
            return self._await_ion(request_key)
        return ion

    @staticmethod
    def _visible(ion: Ion | None) -> Ion | None:
        """The ION if the caller's project may see it; another project's is as good as none."""
        return ion if ion is not None and identity.current().sees(ion.project) else None

    def _ion(self, ion_id: str, field: str = "name") -> Ion:
        ion = self._visible(self.store.get_ion(ion_id))
        if ion is None:
            raise NotFound(f"ION ions/{ion_id} not found", field=field)
        return ion

    def get_ion(self, name: str) -> Ion:
        return self._ion(names.parse_name(name, "ions/{ion}")["ion"])

    def list_ions(self, page_size: int, page_token: str) -> Page[Ion]:
        size = names.page_size(page_size)
        token = names.decode_token(page_token, expect={"k": "ions"})
        after = token.get("after", "")
        if not isinstance(after, str):
            raise InvalidArgument("page_token is malformed", field="page_token")
        who = identity.current()
        ions = self.store.list_ions(after, size + 1, None if who.sees_all else who.project)
        more = len(ions) > size
        ions = ions[:size]
        next_token = names.encode_token({"k": "ions", "after": ions[-1].ion_id}) if more else ""
        return Page(ions, next_token)

    def delete_ion(self, name: str) -> None:
        ion_id = names.parse_name(name, "ions/{ion}")["ion"]
        self._ion(ion_id)
        if not self.store.delete_ion(ion_id):
            raise NotFound(f"ION ions/{ion_id} not found", field="name")

    # ------------------------------------------------------------------------- revisions

    def _add_revision(
        self,
        ion_id: str,
        parsed: dict[str, object],
        source_yaml: str,
        source_path: str,
        code_refs: list[CodeRef],
        now: datetime,
    ) -> Revision:
        revision_id = self.store.next_value(f"rev:{ion_id}")
        rev = Revision(
            ion_id=ion_id,
            revision_id=revision_id,
            definition=parsed,
            source_yaml=source_yaml,
            source_path=source_path,
            code_refs=code_refs,
            definition_sha256=definition.definition_sha256(parsed),
            create_time=now,
        )
        self.store.insert_revision(rev)
        retention = parsed["retention_days"]
        assert isinstance(retention, int)
        self.store.advance_ion(ion_id, revision_id, retention, now)
        return rev

    def create_revision(
        self,
        parent: str,
        definition_yaml: str,
        *,
        source_path: str = "",
        code_refs: Sequence[CodeRef] = (),
        request_id: str = "",
        restore: bool = False,
    ) -> Revision:
        """Adds a revision when the definition changed; otherwise returns the latest one."""
        ion_id = names.parse_name(parent, "ions/{ion}", "parent")["ion"]
        _request_id(request_id)
        _bounded(source_path, "source_path", MAX_SOURCE_PATH)
        refs = _code_refs(code_refs)
        ion = self._ion(ion_id, "parent")
        request_key = f"rev:{ion_id}:{request_id}"
        if request_id and (earlier := self.store.recall(request_key)):
            found = self._recalled_revision(earlier)
            if found is not None:
                return found
        parsed = definition.parse(
            definition_yaml,
            source=source_path,
            ion_id=ion_id,
            # A restored revision's code comes with its export's code snapshots.
            code_path=None if restore else self.code_path,
        )
        digest = definition.definition_sha256(parsed)
        latest = self.store.get_revision(ion_id, ion.latest_revision)
        now = _now()
        if (
            latest is not None
            and latest.definition_sha256 == digest
            and _same_code(latest.code_refs, refs)
        ):
            rev = latest
        else:
            rev = self._add_revision(ion_id, parsed, definition_yaml, source_path, refs, now)
        if request_id:
            first = self.store.remember(request_key, rev.name, now)
            if first != rev.name and (found := self._recalled_revision(first)):
                return found
        return rev

    def _recalled_revision(self, name: str) -> Revision | None:
        parts = names.parse_name(name, "ions/{ion}/revisions/{revision}")
        return self.store.get_revision(parts["ion"], int(parts["revision"]))

    def get_revision(self, name: str) -> Revision:
        parts = names.parse_name(name, "ions/{ion}/revisions/{revision}")
        ion_id = parts["ion"]
        which = _which(parts["revision"], "name", "revision")
        ion = self._ion(ion_id)
        revision_id = ion.latest_revision if which is None else which
        rev = self.store.get_revision(ion_id, revision_id)
        if rev is None:
            raise NotFound(f"revision {name} not found", field="name")
        return rev

    def list_revisions(self, parent: str, page_size: int, page_token: str) -> Page[Revision]:
        ion_id = names.parse_name(parent, "ions/{ion}", "parent")["ion"]
        size = names.page_size(page_size)
        token = names.decode_token(page_token, expect={"k": "revisions", "parent": parent})
        before = token.get("before")
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token is malformed", field="page_token")
        self._ion(ion_id, "parent")
        revs = self.store.list_revisions(ion_id, before, size + 1)
        more = len(revs) > size
        revs = revs[:size]
        next_token = (
            names.encode_token({"k": "revisions", "parent": parent, "before": revs[-1].revision_id})
            if more
            else ""
        )
        return Page(revs, next_token)

    # -------------------------------------------------------------------- model versions

    def create_model_version(
        self,
        parent: str,
        lineage: Lineage,
        chunks: Iterable[bytes],
        *,
        expected_sha256: str = "",
        request_id: str = "",
        restore_version_id: int = 0,
    ) -> ModelVersion:
        """Streams the bytes into GridFS, hashing as they come, and keeps one copy per sha256.

        ``restore_version_id`` (an import) stores the version under that id, so the names
        another deployment recorded resolve here: the same id with the same bytes returns
        the stored version, with other bytes it is ALREADY_EXISTS."""
        model_id = names.parse_name(parent, "models/{model}", "header.parent")["model"]
        _request_id(request_id, "header.request_id")
        self._check_lineage(lineage)
        expected = expected_sha256.lower()
        if expected and not SHA256.match(expected):
            raise InvalidArgument(
                "header.expected_sha256 must be 64 hex digits", field="header.expected_sha256"
            )
        if not 0 <= restore_version_id <= MAX_VERSION_ID:
            raise InvalidArgument(
                f"header.restore_version_id must be between 1 and {MAX_VERSION_ID}, "
                f"got {restore_version_id}",
                field="header.restore_version_id",
            )
        # A model belongs to its first version's project; ids are unique across projects.
        who = identity.current()
        owner = self.store.model_project(model_id)
        if owner is not None and not who.sees(owner):
            raise AlreadyExists(f"model models/{model_id} already exists", field="header.parent")
        project = owner or who.project
        request_key = f"mv:{model_id}:{request_id}"
        if request_id and (earlier := self.store.recall(request_key)):
            found = self._recalled_version(earlier)
            if found is not None:
                for _ in chunks:  # the bytes were stored the first time
                    pass
                return found

        sha, size, file_id = self._upload(model_id, chunks, expected)
        mv = ModelVersion(
            model_id=model_id,
            version_id=restore_version_id,
            sha256=sha,
            size_bytes=size,
            lineage=lineage,
            create_time=_now(),
            project=project,
        )
        if restore_version_id:
            try:
                stored = self._restored(mv)
            except AlreadyExists:
                self.store.discard_upload(file_id)
                raise
            if stored is not None:
                self.store.discard_upload(file_id)  # the bytes are there already
                return stored
        self.store.keep_blob(sha, file_id, size)
        mv = self._restore_version(mv) if restore_version_id else self._new_version(mv)
        if request_id:
            first = self.store.remember(request_key, mv.name, mv.create_time)
            if first != mv.name and (found := self._recalled_version(first)):
                return found
        return mv

    def _upload(
        self, model_id: str, chunks: Iterable[bytes], expected: str
    ) -> tuple[str, int, ObjectId]:
        """Writes the bytes to a new GridFS file, checking ``expected``; returns (sha256,
        size, file). ``store.keep_blob`` then keeps one copy per sha256."""
        digest = hashlib.sha256()
        size = 0
        upload = self.store.open_upload(f"models/{model_id}")
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                upload.write(chunk)
            file_id = upload.close()
        except BaseException:
            upload.abort()
            raise
        sha = digest.hexdigest()
        if expected and expected != sha:
            self.store.discard_upload(file_id)
            raise InvalidArgument(
                f"the bytes' sha256 is {sha}, not the expected {expected}",
                field="header.expected_sha256",
            )
        return sha, size, file_id

    def _new_version(self, mv: ModelVersion) -> ModelVersion:
        """The next id of the model's counter. An id a concurrent restore took is skipped."""
        for _ in range(8):
            numbered = replace(mv, version_id=self.store.next_value(f"mv:{mv.model_id}"))
            if self.store.insert_model_version(numbered):
                return numbered
        raise Aborted(f"models/{mv.model_id} is being restored; try again", field="header.parent")

    def _restored(self, mv: ModelVersion) -> ModelVersion | None:
        """The version stored under ``mv``'s id when it holds the same bytes (a repeated
        import), None when the id is free; ALREADY_EXISTS when it holds other bytes."""
        stored = self.store.get_model_version(mv.model_id, mv.version_id)
        if stored is None:
            return None
        if stored.sha256 == mv.sha256:
            return stored
        raise AlreadyExists(
            f"{mv.name} already exists here with other bytes (sha256 {stored.sha256}, "
            f"not {mv.sha256})",
            field="header.restore_version_id",
        )

    def _restore_version(self, mv: ModelVersion) -> ModelVersion:
        """The version under its exported id. The counter moves past the id first, so a
        later create never hands it out again."""
        self.store.advance_counter(f"mv:{mv.model_id}", mv.version_id)
        if self.store.insert_model_version(mv):
            return mv
        # Taken between the check and the insert (a concurrent create or restore).
        stored = self._restored(mv)
        if stored is None:
            raise Aborted(f"{mv.name} is being stored by another call; try again", field="name")
        return stored

    @staticmethod
    def _check_lineage(lineage: Lineage) -> None:
        field = "header.model_version"
        _bounded(lineage.producing_run, f"{field}.producing_run", 1024)
        if lineage.producing_node and not definition.LOCAL_ID.match(lineage.producing_node):
            raise InvalidArgument(
                f"{field}.producing_node {lineage.producing_node!r} is not a node id",
                field=f"{field}.producing_node",
            )
        if len(lineage.dataset_refs) > MAX_CODE_REFS:
            raise InvalidArgument("too many dataset_refs", field=f"{field}.dataset_refs")
        for i, ref in enumerate(lineage.dataset_refs):
            _bounded(ref.uri, f"{field}.dataset_refs[{i}].uri")
            if ref.sha256 and not SHA256.match(ref.sha256):
                raise InvalidArgument(
                    f"{field}.dataset_refs[{i}].sha256 must be 64 hex digits",
                    field=f"{field}.dataset_refs[{i}].sha256",
                )
            if ref.size_bytes < 0:
                raise InvalidArgument(
                    "size_bytes must not be negative", field=f"{field}.dataset_refs[{i}].size_bytes"
                )
        if len(lineage.labels) > MAX_LABELS:
            raise InvalidArgument(f"at most {MAX_LABELS} labels", field=f"{field}.labels")
        for key, value in lineage.labels.items():
            _bounded(key, f"{field}.labels", 63)
            _bounded(value, f"{field}.labels[{key}]", 1024)

    def _recalled_version(self, name: str) -> ModelVersion | None:
        parts = names.parse_name(name, "models/{model}/versions/{version}")
        return self.store.get_model_version(parts["model"], int(parts["version"]))

    def get_model_version(self, name: str) -> ModelVersion:
        parts = names.parse_name(name, "models/{model}/versions/{version}")
        model_id = parts["model"]
        which = _which(parts["version"], "name", "version")
        found = (
            self.store.latest_model_version(model_id)
            if which is None
            else self.store.get_model_version(model_id, which)
        )
        if found is None or not identity.current().sees(found.project):
            raise NotFound(f"model version {name} not found", field="name")
        return found

    def list_model_versions(
        self, parent: str, page_size: int, page_token: str
    ) -> Page[ModelVersion]:
        model_id = names.parse_name(parent, "models/{model}", "parent")["model"]
        size = names.page_size(page_size)
        token = names.decode_token(page_token, expect={"k": "versions", "parent": parent})
        after = token.get("after", 0)
        if not isinstance(after, int):
            raise InvalidArgument("page_token is malformed", field="page_token")
        owner = self.store.model_project(model_id)
        if owner is not None and not identity.current().sees(owner):
            return Page([], "")
        versions = self.store.list_model_versions(model_id, after, size + 1)
        more = len(versions) > size
        versions = versions[:size]
        next_token = (
            names.encode_token(
                {"k": "versions", "parent": parent, "after": versions[-1].version_id}
            )
            if more
            else ""
        )
        return Page(versions, next_token)

    def download_model_version(
        self, name: str, chunk_size: int
    ) -> tuple[ModelVersion, Iterator[bytes]]:
        if chunk_size < 0:
            raise InvalidArgument("chunk_size must not be negative", field="chunk_size")
        size = min(chunk_size or DEFAULT_CHUNK, MAX_CHUNK)
        mv = self.get_model_version(name)
        return mv, self.store.read_blob(mv.sha256, size)
