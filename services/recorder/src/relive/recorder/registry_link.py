"""What the recorder asks the registry: does an ION exist, its project, retention, revisions,
and, for an export, the models and code snapshots its events name.

The recorder never writes registry data except when an import recreates exported revisions,
code snapshots and model versions.
With auth on it calls with the service token (RELIVE_SERVICE_TOKEN), which sees every
project; the recorder itself decides what its caller may see.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Protocol

from google.protobuf import json_format

from relive.client.channel import Access
from relive.client.registry import RegistryClient
from relive.core import identity
from relive.core.calls import calling
from relive.errors import FailedPrecondition, NotFound, ResourceExhausted
from relive.registry.v1 import registry_pb2

TIMEOUT_S = 10.0
DOWNLOAD_TIMEOUT_S = 300.0


class Registry(Protocol):
    def ion_exists(self, ion: str) -> bool: ...

    def project_of(self, ion: str, fresh: bool = False) -> str | None: ...

    def retention_days(self, ion: str) -> int | None: ...

    def revisions(self, ion: str) -> list[registry_pb2.Revision]: ...

    def restore_revisions(self, ion: str, yamls: list[tuple[str, str]]) -> int: ...

    def download_model(self, name: str, out: IO[bytes]) -> dict[str, Any]: ...

    def download_code_snapshot(self, name: str, out: Path) -> dict[str, Any]: ...

    def restore_code_snapshot(self, header: registry_pb2.CodeSnapshot, archive: Path) -> str: ...

    def restore_model(self, version: registry_pb2.ModelVersion, data: Path) -> str: ...


class RegistryLink:
    """The SDK's registry client on this service's access; positive ION lookups (the ION's
    project) are cached for 30 s (IONs are rarely deleted, and a stale yes only lets events
    of a deleted ION in)."""

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        tls_ca: Path | None = None,
        *,
        access: Access | None = None,
    ) -> None:
        access = access or Access(token=token or "", tls_ca=str(tls_ca or ""))
        # Untraced: the recorder takes in spans, and its lookups must not make spans of their own.
        self._client = RegistryClient(access.connect(endpoint, traced=False), timeout=TIMEOUT_S)
        self._projects = identity.ProjectCache(self._lookup_project)

    def close(self) -> None:
        self._client.channel.close()

    def _get_ion(self, ion: str) -> registry_pb2.Ion | None:
        with calling("registry", f"cannot look up ions/{ion}"):
            try:
                return self._client.get_ion(ion)
            except NotFound:
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
        """Every revision of the ION, oldest first; only those the caller may see."""
        client = self._client.for_project(identity.current().scope)
        with calling("registry", f"cannot list the revisions of ions/{ion}"):
            found = list(client.list_revisions(ion, page_size=100))
        return sorted(found, key=lambda r: r.revision_id)

    def restore_revisions(self, ion: str, yamls: list[tuple[str, str]]) -> int:
        """Recreates exported revisions (source YAML, source path), oldest first, skipping
        those whose YAML is already a revision here. Returns how many it created. A new ION
        belongs to the caller's project (the recorder checked that an existing one does)."""
        project = identity.current().project
        client = self._client.for_project(project)
        existing: list[registry_pb2.Revision] = []
        if self._get_ion(ion) is not None:
            existing = self.revisions(ion)
        have = {r.source_yaml for r in existing}
        created = 0
        for text, path in yamls:
            if text in have:
                continue
            with calling("registry", f"cannot recreate a revision of ions/{ion}"):
                if not existing and created == 0:
                    client.create_ion(ion, text, source_path=path, restore=True)
                    self._projects.remember(ion, project)
                else:
                    client.create_revision(ion, text, source_path=path, restore=True)
            have.add(text)
            created += 1
        return created

    def download_model(self, name: str, out: IO[bytes]) -> dict[str, Any]:
        """Streams a model version's bytes into ``out``; returns its metadata as JSON. Only
        the caller's models: an event may name any model."""
        client = self._client.for_project(identity.current().scope)
        with calling("registry", f"cannot download {name}"):
            version = client.download_model(name, out, timeout=DOWNLOAD_TIMEOUT_S, verify=False)
        return json_format.MessageToDict(version, preserving_proto_field_name=True)

    def download_code_snapshot(self, name: str, out: Path) -> dict[str, Any]:
        """Writes a code snapshot's archive to ``out`` (whole or not at all); returns its
        metadata as JSON. Only the caller's snapshots: an event may name any."""
        client = self._client.for_project(identity.current().scope)
        with calling("registry", f"cannot download {name}"):
            snapshot = client.download_code_snapshot(name, out, timeout=DOWNLOAD_TIMEOUT_S)
        return json_format.MessageToDict(snapshot, preserving_proto_field_name=True)

    def restore_code_snapshot(self, header: registry_pb2.CodeSnapshot, archive: Path) -> str:
        """Stores an exported code snapshot for the caller's project (once: a tree it holds
        already is left as it is); returns its name."""
        client = self._client.for_project(identity.current().project)
        what = f"cannot store code snapshot codeSnapshots/{header.sha256}"
        with calling("registry", what):
            try:
                stored = client.create_code_snapshot(header, archive, timeout=DOWNLOAD_TIMEOUT_S)
            except ResourceExhausted as e:
                # Over this registry's size limit: the caller's package, not a failed call.
                raise FailedPrecondition(e.message, field=e.field, metadata=e.metadata) from e
        return stored.name

    def restore_model(self, version: registry_pb2.ModelVersion, data: Path) -> str:
        """Stores an exported model version under its exported id, for the caller's project
        (once: the same id with the same bytes is the stored version); returns its name."""
        parts = version.name.split("/")
        client = self._client.for_project(identity.current().project)
        with calling("registry", f"cannot store model version {version.name}"):
            stored = client.upload_model(
                parts[1],
                data,
                producing_run=version.producing_run,
                producing_node=version.producing_node,
                dataset_refs=list(version.dataset_refs),
                labels=dict(version.labels),
                expected_sha256=version.sha256,
                restore_version_id=int(parts[3]),
                timeout=DOWNLOAD_TIMEOUT_S,
            )
        return stored.name
