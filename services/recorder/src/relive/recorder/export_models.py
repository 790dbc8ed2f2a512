"""The model versions a capture's runs used, carried by its export (when asked for) and
restored by its import under the same names, so a single-pipeline relaunch in another
deployment loads the recorded upstream models.

An export holds each one as ``models/<name with / as _>.bin`` (its bytes) and ``.json`` (its
ModelVersion as JSON). The import uploads each into this deployment's registry with
``restore_version_id`` set to the exported id: ``models/m/versions/3`` there is
``models/m/versions/3`` here, so the names in the events and launch specs resolve.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from google.protobuf import json_format

from relive import errors
from relive.recorder.registry_link import Registry
from relive.registry.v1 import registry_pb2

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"^models/([a-z]([a-z0-9-]{0,61}[a-z0-9])?)/versions/([1-9][0-9]{0,9})$")
META_FILE = re.compile(r"^models/(.+)\.json$")


class Files(Protocol):
    """The export's files being written (export._Files)."""

    def open(self, name: str, mode: str = "w") -> IO[Any]: ...

    def discard(self, name: str) -> None: ...

    def write_json(self, name: str, value: Any) -> None: ...


def model_files(name: str) -> tuple[str, str]:
    """The bytes' and the metadata's file of a model version in an export."""
    safe = name.replace("/", "_")
    return f"models/{safe}.bin", f"models/{safe}.json"


def models_of_launch(details: Mapping[str, Any]) -> list[str]:
    """The model versions a ``run.launched`` event's spec pins (``spec.pinned_models``,
    reused instead of running their nodes); anything else in there is ignored."""
    spec = details.get("spec")
    pinned = spec.get("pinned_models") if isinstance(spec, dict) else None
    if not isinstance(pinned, dict):
        return []
    return sorted({v for v in pinned.values() if isinstance(v, str) and v})


def write_models(names: Iterable[str], registry: Registry | None, files: Files) -> list[str]:
    """Downloads each model version into the export; returns those written. One the
    registry cannot give (missing, or another project's) is left out with a warning."""
    written: list[str] = []
    if registry is None:
        return written
    for name in sorted(set(names)):
        data, meta = model_files(name)
        try:
            with files.open(data, "wb") as f:
                version = registry.download_model(name, f)
            files.write_json(meta, version)
            written.append(name)
        except errors.ReliveError as e:
            # The archive holds no partial file of it.
            files.discard(data)
            log.warning("export: model %s not included: %s", name, e)
    return written


def _exported(root: Path, meta: str) -> registry_pb2.ModelVersion:
    try:
        raw = json.loads((root / meta).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        version = json_format.ParseDict(
            raw, registry_pb2.ModelVersion(), ignore_unknown_fields=True
        )
    except (ValueError, json_format.ParseError) as e:
        raise errors.InvalidArgument(f"{meta} is not a model version: {e}", field="chunk") from e
    if not VERSION_NAME.match(version.name) or model_files(version.name)[1] != meta:
        raise errors.InvalidArgument(
            f"{meta} names model version {version.name[:200]!r}, which does not fit its file",
            field="chunk",
        )
    return version


Exported = list[tuple[registry_pb2.ModelVersion, Path]]


def exported_models(root: Path, manifest: Mapping[str, Mapping[str, Any]]) -> Exported:
    """The model versions of an extracted, verified export (``manifest``: its files with
    their sha256), each with the file of its bytes, all checked."""
    found: Exported = []
    for name in sorted(manifest):
        if META_FILE.match(name) is None:
            continue
        version = _exported(root, name)
        data = model_files(version.name)[0]
        if data not in manifest:
            raise errors.InvalidArgument(f"the archive has {name} but no {data}", field="chunk")
        if manifest[data].get("sha256") != version.sha256:
            raise errors.InvalidArgument(
                f"{data} does not hold the bytes of {version.name} (sha256 {version.sha256})",
                field="chunk",
            )
        found.append((version, root / data))
    return found


def restore_models(found: Exported, registry: Registry | None) -> list[str]:
    """Stores the ``exported_models`` in this deployment's registry under their exported
    names, for the caller's project; returns the names. A version stored already with the
    same bytes is left as it is; one with other bytes under that name fails the import
    (ALREADY_EXISTS, field ``header.restore_version_id``)."""
    if not found:
        return []
    if registry is None:
        raise errors.FailedPrecondition(
            "the archive carries model versions, and this recorder has no registry to store "
            "them in",
            field="chunk",
        )
    return [registry.restore_model(version, path) for version, path in found]
