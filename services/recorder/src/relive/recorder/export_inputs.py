"""The recorded inputs a capture's events name, carried by its export and restored by its
import, so a relaunch elsewhere feeds the same batches and call results.

An export holds each input as ``inputs/<sha256>.parquet`` (tabular batches, media type
``application/vnd.apache.parquet``) or ``inputs/<sha256>.bin`` (anything else), byte for
byte, beside ``inputs/<sha256>.json`` (its metadata); MANIFEST.json lists them like every
other file. An event that names an input the recorder does not hold fails the export: a
package that could not relaunch is never written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from relive import errors
from relive.recorder.inputs import PARQUET, RecordedInput, RecordedInputs, parse_input_name

MISSING = "RECORDED_INPUT_MISSING"
META_FILE = re.compile(r"^inputs/([0-9a-f]{64})\.json$")


class Files(Protocol):
    """The export's files being written (export._Files)."""

    def open(self, name: str, mode: str = "w") -> IO[Any]: ...

    def discard(self, name: str) -> None: ...

    def write_json(self, name: str, value: Any) -> None: ...


def data_file(sha256: str, media_type: str) -> str:
    return f"inputs/{sha256}.{'parquet' if media_type == PARQUET else 'bin'}"


def _missing(capture: str, name: str, used_by: str, why: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"cannot export {capture}: {used_by} names recorded input {name[:200]!r}, {why}; "
        "without it the export could not be relaunched",
        field="name",
        reason=MISSING,
        metadata={"input": name[:200], "event": used_by},
    )


def write_inputs(
    named: Mapping[str, str], ion: str, inputs: RecordedInputs, files: Files, capture: str
) -> list[str]:
    """Copies every input in ``named`` (name -> an event that names it) into the export;
    returns their names."""
    for name, used_by in sorted(named.items()):
        try:
            owner, sha = parse_input_name(name)
        except errors.InvalidArgument:
            raise _missing(capture, name, used_by, "which is not an input name") from None
        if owner != ion:
            raise _missing(capture, name, used_by, "an input of another ION")
        try:
            found = inputs.get(name)
        except errors.NotFound:
            raise _missing(capture, name, used_by, "which the recorder does not hold") from None
        target = data_file(sha, found.media_type)
        try:
            with files.open(target, "wb") as out:
                inputs.write_to(name, out)
        except errors.NotFound:
            files.discard(target)
            raise _missing(capture, name, used_by, "which retention deleted just now") from None
        except BaseException:
            files.discard(target)
            raise
        files.write_json(f"inputs/{sha}.json", found.to_json())
    return sorted(named)


def _exported(root: Path, meta: str, sha256: str) -> RecordedInput:
    try:
        raw = json.loads((root / meta).read_text(encoding="utf-8"))
        found = RecordedInput.from_json(raw)
    except (ValueError, KeyError, TypeError) as e:
        raise errors.InvalidArgument(f"{meta} is not a recorded input: {e}", field="chunk") from e
    if found.sha256 != sha256:
        raise errors.InvalidArgument(
            f"{meta} describes input {found.sha256[:80]!r}, not {sha256}", field="chunk"
        )
    return found


Exported = list[tuple[RecordedInput, Path]]


def exported_inputs(
    root: Path, manifest: Mapping[str, Mapping[str, Any]], ion: str, inputs: RecordedInputs
) -> Exported:
    """The recorded inputs of an extracted, verified export (``manifest``: its files with
    their sha256), each with the file of its bytes, all checked, and each fitting this
    deployment's bounds."""
    found: Exported = []
    for name in sorted(manifest):
        match = META_FILE.match(name)
        if match is None:
            continue
        sha = match.group(1)
        meta = _exported(root, name, sha)
        data = data_file(sha, meta.media_type)
        if data not in manifest:
            raise errors.InvalidArgument(f"the archive has {name} but no {data}", field="chunk")
        if manifest[data].get("sha256") != sha:
            raise errors.InvalidArgument(
                f"{data} does not hold the bytes of input {sha}", field="chunk"
            )
        try:
            inputs.check_restorable(ion, meta, (root / data).stat().st_size)
        except errors.InvalidArgument as e:
            raise errors.InvalidArgument(f"{name}: {e.message}", field="chunk") from e
        found.append((meta, root / data))
    return found


def restore_inputs(found: Exported, ion: str, inputs: RecordedInputs) -> list[str]:
    """Stores the ``exported_inputs`` in this recorder for ``ion``, with the use spans and
    creation times they had; one stored already is kept once. Returns their names."""
    return [inputs.restore(ion, meta, path).name for meta, path in found]
