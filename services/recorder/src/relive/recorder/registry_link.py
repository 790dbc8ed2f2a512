"""What the recorder asks the registry: does an ION exist, its project, retention, revisions.

The recorder never writes registry data except when an import recreates exported revisions.
With auth on it calls with the service token (RELIVE_SERVICE_TOKEN), which sees every
project; the recorder itself decides what its caller may see.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, Any, Protocol

import grpc
from google.protobuf import json_format

from relive.core import errors, identity
from relive.core.interceptors import PROJECT_METADATA
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

TIMEOUT_S = 10.0


class Registry(Protocol):
    def ion_exists(self, ion: str) -> bool: ...

    def project_of(self, ion: str, fresh: bool = False) -> str | None: ...

    def retention_days(self, ion: str) -> int | None: ...

    def revisions(self, ion: str) -> list[registry_pb2.Revision]: ...

    def restore_revisions(self, ion: str, yamls: list[tuple[str, str]]) -> int: ...

    def download_model(self, name: str, out: IO[bytes]) -> dict[str, Any]: ...


def _domain_error(e: grpc.RpcError, what: str) -> errors.ReliveError:
    code = e.code() if hasattr(e, "code") else None
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return errors.FailedPrecondition(
            f"{what}: the registry refused this service's token ({e.details()}); set "
            "RELIVE_SERVICE_TOKEN to a token with role: service in the tokens file",
            field="RELIVE_SERVICE_TOKEN",
        )
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return errors.AlreadyExists(f"{what}: {e.details()}")
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(f"{what}: {e.details()}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{what}: {e.details()}")
    return errors.Unavailable(f"{what}: the registry answered {code}: {e.details()}")


class RegistryLink:
    """A gRPC client of the registry; positive ION lookups (the ION's project) are cached
    for 30 s (IONs are rarely deleted, and a stale yes only lets events of a deleted
    ION in)."""

    def __init__(self, endpoint: str, token: str | None = None, tls_ca: Path | None = None) -> None:
        self._endpoint = endpoint
        self._token = token
        self._tls_ca = tls_ca
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._projects = identity.ProjectCache(self._lookup_project)

    def _metadata(self, for_project: str | None = None) -> tuple[tuple[str, str | bytes], ...]:
        """The service token, and the project the call is for: the registry then shows and
        creates only there (the recorder's caller's, unless the caller sees every project)."""
        out: list[tuple[str, str | bytes]] = []
        if self._token:
            out.append(("authorization", f"Bearer {self._token}"))
        if for_project:
            out.append((PROJECT_METADATA, for_project))
        return tuple(out)

    def _stub(self) -> registry_pb2_grpc.RegistryServiceStub:
        with self._lock:
            if self._channel is None:
                # A plain channel: token and project go on each call (see _metadata), and
                # these lookups make no spans (the recorder would record its own tracing).
                self._channel = (
                    grpc.secure_channel(
                        self._endpoint, grpc.ssl_channel_credentials(self._tls_ca.read_bytes())
                    )
                    if self._tls_ca
                    else grpc.insecure_channel(self._endpoint)
                )
            return registry_pb2_grpc.RegistryServiceStub(self._channel)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def _get_ion(self, ion: str) -> registry_pb2.Ion | None:
        for attempt in range(3):
            try:
                return self._stub().GetIon(
                    registry_pb2.GetIonRequest(name=f"ions/{ion}"),
                    timeout=TIMEOUT_S,
                    metadata=self._metadata(),
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                    raise _domain_error(e, f"cannot look up ions/{ion}") from e
        return None

    def _lookup_project(self, ion: str) -> str | None:
        found = self._get_ion(ion)
        return None if found is None else found.project or identity.DEFAULT_PROJECT

    def project_of(self, ion: str, fresh: bool = False) -> str | None:
        """The ION's project, or None when the registry does not know the ION. ``fresh``
        asks the registry even when the answer is cached."""
        return self._projects.get(ion, fresh)

    def ion_exists(self, ion: str) -> bool:
        return self.project_of(ion) is not None

    def retention_days(self, ion: str) -> int | None:
        found = self._get_ion(ion)
        return int(found.retention_days) if found and found.retention_days > 0 else None

    def revisions(self, ion: str) -> list[registry_pb2.Revision]:
        """Every revision of the ION, oldest first."""
        out: list[registry_pb2.Revision] = []
        token = ""
        while True:
            try:
                resp = self._stub().ListRevisions(
                    registry_pb2.ListRevisionsRequest(
                        parent=f"ions/{ion}", page_size=100, page_token=token
                    ),
                    timeout=TIMEOUT_S,
                    metadata=self._metadata(identity.current().scope),
                )
            except grpc.RpcError as e:
                raise _domain_error(e, f"cannot list the revisions of ions/{ion}") from e
            out.extend(resp.revisions)
            token = resp.next_page_token
            if not token:
                break
        return sorted(out, key=lambda r: r.revision_id)

    def restore_revisions(self, ion: str, yamls: list[tuple[str, str]]) -> int:
        """Recreates exported revisions (source YAML, source path), oldest first, skipping
        those whose YAML is already a revision here. Returns how many it created. A new ION
        belongs to the caller's project (the recorder checked that an existing one does)."""
        stub = self._stub()
        project = identity.current().project
        metadata = self._metadata(project)
        existing: list[registry_pb2.Revision] = []
        if self._get_ion(ion) is not None:
            existing = self.revisions(ion)
        have = {r.source_yaml for r in existing}
        created = 0
        for text, path in yamls:
            if text in have:
                continue
            try:
                if not existing and created == 0:
                    stub.CreateIon(
                        registry_pb2.CreateIonRequest(
                            ion_id=ion, definition_yaml=text, source_path=path
                        ),
                        timeout=TIMEOUT_S,
                        metadata=metadata,
                    )
                    self._projects.remember(ion, project)
                else:
                    stub.CreateRevision(
                        registry_pb2.CreateRevisionRequest(
                            parent=f"ions/{ion}", definition_yaml=text, source_path=path
                        ),
                        timeout=TIMEOUT_S,
                        metadata=metadata,
                    )
            except grpc.RpcError as e:
                raise _domain_error(e, f"cannot recreate a revision of ions/{ion}") from e
            have.add(text)
            created += 1
        return created

    def download_model(self, name: str, out: IO[bytes]) -> dict[str, Any]:
        """Streams a model version's bytes into ``out``; returns its metadata as JSON."""
        meta: dict[str, Any] = {}
        try:
            for message in self._stub().DownloadModelVersion(
                registry_pb2.DownloadModelVersionRequest(name=name),
                timeout=300,
                # Only the caller's models: an event may name any model.
                metadata=self._metadata(identity.current().scope),
            ):
                if message.WhichOneof("payload") == "chunk":
                    out.write(message.chunk)
                else:
                    meta = json_format.MessageToDict(
                        message.model_version, preserving_proto_field_name=True
                    )
        except grpc.RpcError as e:
            raise _domain_error(e, f"cannot download {name}") from e
        return meta
