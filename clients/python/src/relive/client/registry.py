"""A typed client of the registry: IONs, revisions, model versions, and code snapshots.

Every call goes through ``relive.client.channel.call``, so it has a deadline and fails with
the ``relive.errors`` exception tree; the channel retries UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import grpc
import yaml

from relive.client.channel import DEFAULT_TIMEOUT_S, call, with_project
from relive.code import find_module_file
from relive.errors import AlreadyExists, NotFound
from relive.registry.v1 import registry_pb2 as pb
from relive.registry.v1 import registry_pb2_grpc

T = TypeVar("T")

CHUNK_SIZE = 256 * 1024
TRANSFER_TIMEOUT_S = 3600.0


def ion_name(ion: str) -> str:
    """``churn`` or ``ions/churn`` -> ``ions/churn``."""
    return ion if ion.startswith("ions/") else f"ions/{ion}"


def model_name(model: str) -> str:
    return model if model.startswith("models/") else f"models/{model}"


def code_snapshot_name(snapshot: str) -> str:
    """``<sha256>`` or ``codeSnapshots/<sha256>`` -> ``codeSnapshots/<sha256>``."""
    return snapshot if snapshot.startswith("codeSnapshots/") else f"codeSnapshots/{snapshot}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Registration:
    """What ``register`` did: made the ION, added a revision, or found it unchanged."""

    ion: pb.Ion
    revision: pb.Revision
    created: bool
    new_revision: bool


def _pages(fetch: Callable[[str], tuple[list[T], str]]) -> Iterator[T]:
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


class RegistryClient:
    """The registry's RPCs, with names, paging and streaming taken care of."""

    def __init__(self, channel: grpc.Channel, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.channel = channel
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self.timeout = timeout

    def for_project(self, project: str | None) -> RegistryClient:
        """This client with its calls made for ``project``, over the same connection: what a
        service token does when it works for a caller (docs/auth.md)."""
        if not project:
            return self
        return RegistryClient(with_project(self.channel, project), timeout=self.timeout)

    # ------------------------------------------------------------------------------ IONs

    def create_ion(
        self,
        ion_id: str,
        definition_yaml: str,
        *,
        source_path: str = "",
        code_refs: Sequence[pb.CodeRef] = (),
        request_id: str | None = None,
        restore: bool = False,
    ) -> pb.Ion:
        """Creates an ION with its first revision. ``restore`` (for imports) checks each
        call's form but not that it imports on the registry's code path."""
        request = pb.CreateIonRequest(
            ion_id=ion_id,
            definition_yaml=definition_yaml,
            source_path=source_path,
            code_refs=list(code_refs),
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            restore=restore,
        )
        return call(self._stub.CreateIon, request, timeout=self.timeout)

    def create_revision(
        self,
        ion: str,
        definition_yaml: str,
        *,
        source_path: str = "",
        code_refs: Sequence[pb.CodeRef] = (),
        request_id: str | None = None,
        restore: bool = False,
    ) -> pb.Revision:
        request = pb.CreateRevisionRequest(
            parent=ion_name(ion),
            definition_yaml=definition_yaml,
            source_path=source_path,
            code_refs=list(code_refs),
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            restore=restore,
        )
        return call(self._stub.CreateRevision, request, timeout=self.timeout)

    def register(self, path: str | os.PathLike[str]) -> Registration:
        """Creates the ION an ION file describes, or adds a revision when it changed.

        Code refs (repository, path, commit, dirty flag) are captured here, on the machine
        that holds the code, for every module a component calls.
        """
        path = Path(path)
        text = path.read_text()
        ion_id = _name_in(text) or path.stem
        refs = capture_code_refs(text, path.resolve().parent)
        try:
            ion = self.get_ion(ion_id)
        except NotFound:
            try:
                ion = self.create_ion(ion_id, text, source_path=str(path), code_refs=refs)
                revision = self.get_revision(ion_id, "latest")
                return Registration(ion, revision, created=True, new_revision=True)
            except AlreadyExists:
                ion = self.get_ion(ion_id)  # someone registered it meanwhile
        revision = self.create_revision(ion_id, text, source_path=str(path), code_refs=refs)
        new = revision.revision_id > ion.latest_revision
        return Registration(self.get_ion(ion_id), revision, created=False, new_revision=new)

    def get_ion(self, ion: str) -> pb.Ion:
        return call(self._stub.GetIon, pb.GetIonRequest(name=ion_name(ion)), timeout=self.timeout)

    def list_ions(self, *, page_size: int = 0) -> Iterator[pb.Ion]:
        def fetch(token: str) -> tuple[list[pb.Ion], str]:
            request = pb.ListIonsRequest(page_size=page_size, page_token=token)
            response = call(self._stub.ListIons, request, timeout=self.timeout)
            return list(response.ions), response.next_page_token

        return _pages(fetch)

    def delete_ion(self, ion: str) -> None:
        call(self._stub.DeleteIon, pb.DeleteIonRequest(name=ion_name(ion)), timeout=self.timeout)

    def get_revision(self, ion: str, revision: int | str = "latest") -> pb.Revision:
        name = f"{ion_name(ion)}/revisions/{revision}"
        return call(self._stub.GetRevision, pb.GetRevisionRequest(name=name), timeout=self.timeout)

    def list_revisions(self, ion: str, *, page_size: int = 0) -> Iterator[pb.Revision]:
        """Newest first."""

        def fetch(token: str) -> tuple[list[pb.Revision], str]:
            request = pb.ListRevisionsRequest(
                parent=ion_name(ion), page_size=page_size, page_token=token
            )
            response = call(self._stub.ListRevisions, request, timeout=self.timeout)
            return list(response.revisions), response.next_page_token

        return _pages(fetch)

    # -------------------------------------------------------------------- model versions

    def upload_model(
        self,
        model_id: str,
        data: bytes | str | os.PathLike[str] | IO[bytes],
        *,
        producing_run: str = "",
        producing_node: str = "",
        dataset_refs: Iterable[pb.DatasetRef] = (),
        labels: dict[str, str] | None = None,
        expected_sha256: str = "",
        request_id: str | None = None,
        restore_version_id: int = 0,
        chunk_size: int = CHUNK_SIZE,
        timeout: float = TRANSFER_TIMEOUT_S,
    ) -> pb.ModelVersion:
        """Streams a model's bytes (bytes, a path, or a binary file) in chunks.

        The channel retries UNAVAILABLE while gRPC still holds the messages sent so far;
        the request_id makes such a resend safe. ``restore_version_id`` (an import) stores
        the version under that id, as another deployment named it.
        """
        header = pb.ModelVersionHeader(
            parent=model_name(model_id),
            model_version=pb.ModelVersion(
                producing_run=producing_run,
                producing_node=producing_node,
                dataset_refs=list(dataset_refs),
                labels=labels or {},
            ),
            expected_sha256=expected_sha256,
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            restore_version_id=restore_version_id,
        )
        opened: IO[bytes] | None = None
        if isinstance(data, bytes):
            source: IO[bytes] = io.BytesIO(data)
        elif isinstance(data, str | os.PathLike):
            opened = source = open(data, "rb")  # noqa: SIM115 - closed below
        else:
            source = data
        try:

            def messages() -> Iterator[pb.CreateModelVersionRequest]:
                yield pb.CreateModelVersionRequest(header=header)
                while chunk := source.read(chunk_size):
                    yield pb.CreateModelVersionRequest(chunk=chunk)

            def send(_: None, timeout: float) -> pb.ModelVersion:
                return self._stub.CreateModelVersion(messages(), timeout=timeout)

            return call(send, None, timeout=timeout)
        finally:
            if opened is not None:
                opened.close()

    def download_model(
        self,
        name: str,
        dest: IO[bytes],
        *,
        chunk_size: int = 0,
        timeout: float = TRANSFER_TIMEOUT_S,
        verify: bool = True,
    ) -> pb.ModelVersion:
        """Writes a model version's bytes into ``dest`` as they arrive; returns its metadata.

        ``name`` is ``models/{model}/versions/{version}`` (version may be ``latest``). With
        ``verify``, the bytes' sha256 is checked against the version's.
        """
        request = pb.DownloadModelVersionRequest(name=name, chunk_size=chunk_size)

        def receive(req: pb.DownloadModelVersionRequest, timeout: float) -> pb.ModelVersion:
            meta: pb.ModelVersion | None = None
            digest = hashlib.sha256()
            for message in self._stub.DownloadModelVersion(req, timeout=timeout):
                if message.HasField("model_version"):
                    meta = message.model_version
                else:
                    digest.update(message.chunk)
                    dest.write(message.chunk)
            if meta is None:
                raise OSError(f"{name}: the download carried no metadata")
            if verify and digest.hexdigest() != meta.sha256:
                raise OSError(f"{name}: downloaded bytes do not match sha256 {meta.sha256}")
            return meta

        return call(receive, request, timeout=timeout)

    def get_model_version(self, name: str) -> pb.ModelVersion:
        return call(
            self._stub.GetModelVersion, pb.GetModelVersionRequest(name=name), timeout=self.timeout
        )

    def list_model_versions(
        self, model_id: str, *, page_size: int = 0
    ) -> Iterator[pb.ModelVersion]:
        """Oldest first."""

        def fetch(token: str) -> tuple[list[pb.ModelVersion], str]:
            request = pb.ListModelVersionsRequest(
                parent=model_name(model_id), page_size=page_size, page_token=token
            )
            response = call(self._stub.ListModelVersions, request, timeout=self.timeout)
            return list(response.model_versions), response.next_page_token

        return _pages(fetch)

    # -------------------------------------------------------------------- code snapshots

    def create_code_snapshot(
        self,
        header: pb.CodeSnapshot,
        archive: Path,
        *,
        chunk_size: int = CHUNK_SIZE,
        timeout: float = TRANSFER_TIMEOUT_S,
    ) -> pb.CodeSnapshot:
        """Stores a code snapshot: ``header`` (its ``sha256`` names it), then the archive
        file in chunks. A tree the project holds already is returned as it was stored.
        ``header.archive_sha256`` is computed from the file when it is empty."""
        archive = Path(archive)
        if not header.archive_sha256:
            filled = pb.CodeSnapshot()
            filled.CopyFrom(header)
            filled.archive_sha256 = file_sha256(archive)
            header = filled
        with archive.open("rb") as source:

            def messages() -> Iterator[pb.CreateCodeSnapshotRequest]:
                yield pb.CreateCodeSnapshotRequest(header=header)
                while chunk := source.read(chunk_size):
                    yield pb.CreateCodeSnapshotRequest(chunk=chunk)

            def send(_: None, timeout: float) -> pb.CodeSnapshot:
                return self._stub.CreateCodeSnapshot(messages(), timeout=timeout)

            return call(send, None, timeout=timeout)

    def get_code_snapshot(self, name: str) -> pb.CodeSnapshot:
        """A snapshot's metadata; ``name`` is ``codeSnapshots/<sha256>`` (or the sha256)."""
        request = pb.GetCodeSnapshotRequest(name=code_snapshot_name(name))
        return call(self._stub.GetCodeSnapshot, request, timeout=self.timeout)

    def download_code_snapshot(
        self, name: str, out: Path, *, timeout: float = TRANSFER_TIMEOUT_S
    ) -> pb.CodeSnapshot:
        """Writes a snapshot's archive to ``out`` and returns its metadata. The bytes go to a
        temp file beside ``out``, are checked against ``archive_sha256``, and only then take
        its name: a broken download leaves nothing at ``out`` (OSError when they differ)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        request = pb.DownloadCodeSnapshotRequest(name=code_snapshot_name(name))

        def receive(req: pb.DownloadCodeSnapshotRequest, timeout: float) -> pb.CodeSnapshot:
            meta: pb.CodeSnapshot | None = None
            digest = hashlib.sha256()
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    for message in self._stub.DownloadCodeSnapshot(req, timeout=timeout):
                        if message.HasField("code_snapshot"):
                            meta = message.code_snapshot
                        else:
                            digest.update(message.chunk)
                            f.write(message.chunk)
                if meta is None:
                    raise OSError(f"{req.name}: the download carried no metadata")
                if digest.hexdigest() != meta.archive_sha256:
                    raise OSError(
                        f"{req.name}: the downloaded archive does not match its sha256 "
                        f"{meta.archive_sha256}"
                    )
                os.replace(tmp, out)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return meta

        return call(receive, request, timeout=timeout)


# ------------------------------------------------------------------------- code refs


def _name_in(text: str) -> str:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return ""  # the registry reports the error with its line
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else ""


def _called_modules(text: str) -> list[str]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    modules: set[str] = set()
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    for node in (nodes or {}).values() if isinstance(nodes, dict) else ():
        pipeline = node.get("pipeline") if isinstance(node, dict) else None
        components = pipeline.get("components") if isinstance(pipeline, dict) else None
        for component in (components or {}).values() if isinstance(components, dict) else ():
            target = component.get("call") if isinstance(component, dict) else None
            if isinstance(target, str) and ":" in target:
                modules.add(target.split(":", 1)[0])
    return sorted(modules)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_ref(module: str, file: Path) -> pb.CodeRef | None:
    """Where ``file`` lives in git: remote URL (or the repo path), path, HEAD, dirty flag."""
    top = _git(file.parent, "rev-parse", "--show-toplevel")
    if not top:
        return None
    top_path = Path(top)
    repo = _git(top_path, "remote", "get-url", "origin")
    if not repo:
        remotes = (_git(top_path, "remote") or "").split()
        repo = (_git(top_path, "remote", "get-url", remotes[0]) if remotes else None) or top
    rel = file.resolve().relative_to(top_path.resolve()).as_posix()
    commit = _git(top_path, "rev-parse", "HEAD") or ""
    status = _git(top_path, "status", "--porcelain", "--", rel)
    return pb.CodeRef(
        module=module, repo=repo, path=rel, commit=commit, dirty=bool(status) or not commit
    )


def capture_code_refs(text: str, base: Path, cwd: Path | None = None) -> list[pb.CodeRef]:
    """Code refs of every module the ION file's components call, when it is in git.

    Modules are looked up where the executor imports them from first (RELIVE_CODE_PATH),
    then under the file's directory, its parents up to the top of its git repository, and
    the working directory. These refs say what the client saw; a launch records the code it
    really runs (docs/code-provenance.md).
    """
    roots = [p for p in os.environ.get("RELIVE_CODE_PATH", "").split(os.pathsep) if p]
    roots.append(str(base))
    top = _git(base, "rev-parse", "--show-toplevel")
    if top:
        for parent in base.parents:
            roots.append(str(parent))
            if parent == Path(top):
                break
    roots.append(str(cwd or Path.cwd()))
    refs = []
    for module in _called_modules(text):
        file = find_module_file(module, roots)
        if file is not None and (ref := code_ref(module, file)) is not None:
            refs.append(ref)
    return refs
