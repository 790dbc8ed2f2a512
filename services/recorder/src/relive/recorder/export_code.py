"""The code snapshots a capture's runs ran, carried by its export and restored by its import.

The executor names, in each ``run.launched`` event's spec, the snapshot of every code ref it
launched (``spec.code_refs[*].snapshot``, ``codeSnapshots/{sha256}``). An export holds each
one as ``code/<sha256>.tar.gz`` (the archive) and ``code/<sha256>.json`` (its CodeSnapshot
as JSON), so that a relaunch in another deployment, with no copy of the repository, finds the
code; an import stores them in that deployment's registry before it appends the events.
A run with no snapshot refs (one launched before snapshots existed) needs none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format

from relive import errors
from relive.recorder.registry_link import Registry
from relive.registry.v1 import registry_pb2

SNAPSHOT_NAME = re.compile(r"^codeSnapshots/([0-9a-f]{64})$")
META_FILE = re.compile(r"^code/([0-9a-f]{64})\.json$")
MISSING = "CODE_SNAPSHOT_MISSING"


class Files(Protocol):
    """The export's files being written (export._Files)."""

    def path(self, name: str) -> Path: ...

    def discard(self, name: str) -> None: ...

    def write_json(self, name: str, value: Any) -> None: ...


def snapshots_of_launch(details: dict[str, Any]) -> list[str]:
    """The distinct snapshot names in a ``run.launched`` event's details, in ref order.
    Anything else in there (an event any producer may write) is ignored."""
    spec = details.get("spec")
    refs = spec.get("code_refs") if isinstance(spec, dict) else None
    found: list[str] = []
    for ref in refs if isinstance(refs, list) else ():
        name = ref.get("snapshot") if isinstance(ref, dict) else None
        if isinstance(name, str) and name and name not in found:
            found.append(name)
    return found


def archive_files(sha256: str) -> tuple[str, str]:
    """The archive's and the metadata's file in an export."""
    return f"code/{sha256}.tar.gz", f"code/{sha256}.json"


def write_snapshots(
    used: dict[str, str], registry: Registry | None, files: Files, capture: str
) -> list[str]:
    """Downloads every snapshot in ``used`` (name -> a run that ran it) into the export.

    One that cannot be had is an error naming it: a package without it could not relaunch.
    """
    for name, run in sorted(used.items()):
        match = SNAPSHOT_NAME.match(name)
        if match is None:
            raise errors.FailedPrecondition(
                f"cannot export {capture}: run {run} names code snapshot {name[:200]!r}, "
                "which is not a snapshot name (codeSnapshots/{sha256})",
                field="name",
                reason=MISSING,
                metadata={"snapshot": name[:200], "run": run},
            )
        if registry is None:
            raise errors.FailedPrecondition(
                f"cannot export {capture}: run {run} ran code snapshot {name}, and this "
                "recorder has no registry to fetch it from",
                field="name",
                reason=MISSING,
                metadata={"snapshot": name, "run": run},
            )
        archive, meta = archive_files(match.group(1))
        try:
            snapshot = registry.download_code_snapshot(name, files.path(archive))
        except errors.NotFound as e:
            files.discard(archive)
            raise errors.FailedPrecondition(
                f"cannot export {capture}: run {run} ran code snapshot {name}, which the "
                "registry does not hold (for this project); without it the export could not "
                "be relaunched",
                field="name",
                reason=MISSING,
                metadata={"snapshot": name, "run": run},
            ) from e
        except BaseException:
            files.discard(archive)
            raise
        files.write_json(meta, snapshot)
    return sorted(used)


def _header(root: Path, meta: str, sha256: str) -> registry_pb2.CodeSnapshot:
    try:
        raw = json.loads((root / meta).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        header = json_format.ParseDict(raw, registry_pb2.CodeSnapshot(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as e:
        raise errors.InvalidArgument(f"{meta} is not a code snapshot: {e}", field="chunk") from e
    if header.sha256 != sha256:
        raise errors.InvalidArgument(
            f"{meta} describes code snapshot {header.sha256[:80]!r}, not {sha256}", field="chunk"
        )
    return header


def restore_snapshots(root: Path, listed: Collection[str], registry: Registry | None) -> list[str]:
    """Stores every snapshot of an extracted, verified export (``listed``: its manifest's
    files) in this deployment's registry, for the caller's project; a snapshot already there
    is stored once. Returns their names. Everything is checked before anything is stored."""
    found = []
    for name in sorted(listed):
        match = META_FILE.match(name)
        if match is None:
            continue
        sha = match.group(1)
        archive, meta = archive_files(sha)
        if archive not in listed:
            raise errors.InvalidArgument(f"the archive has {meta} but no {archive}", field="chunk")
        found.append((_header(root, meta, sha), root / archive))
    if not found:
        return []
    if registry is None:
        raise errors.FailedPrecondition(
            "the archive carries code snapshots, and this recorder has no registry to store "
            "them in",
            field="chunk",
        )
    return [registry.restore_code_snapshot(header, path) for header, path in found]
