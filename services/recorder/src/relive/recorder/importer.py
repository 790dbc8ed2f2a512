"""Import of an exported capture into this deployment: the archive is written to a temp file,
extracted (refusing links and paths that leave it), and checked against MANIFEST.json; then
what a relaunch needs (code snapshots, model versions, recorded inputs, the revisions) is
stored before the events, and importing twice stores nothing twice (docs/recorder-storage.md,
"Export and import").
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from relive import errors
from relive.core import identity
from relive.core.config import Config
from relive.core.names import check_id
from relive.recorder import export_code, export_inputs, export_models
from relive.recorder.export import CHUNK_BYTES, workdir
from relive.recorder.registry_link import Registry
from relive.recorder.service import Capture, RecorderService
from relive.recorder.v1 import event_pb2

IMPORT_BATCH = 1000


@dataclass
class ImportResult:
    capture: Capture
    imported: int
    already_present: int


def _event_of(value: Any, where: str, parent: str) -> event_pb2.Event:
    """An exported event (a JSON line, or its parsed dict), for ``parent``."""
    try:
        raw = json.loads(value) if isinstance(value, str) else value
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        e = json_format.ParseDict(raw, event_pb2.Event())
    except (ValueError, json_format.ParseError) as exc:
        raise errors.InvalidArgument(f"{where} is not an event: {exc}", field="chunk") from exc
    e.ion = parent
    return e


class Importer:
    def __init__(self, config: Config, service: RecorderService, registry: Registry | None) -> None:
        self.config = config
        self.service = service
        self.registry = registry

    def import_(self, capture_id: str, chunks: Iterator[bytes]) -> ImportResult:
        work = workdir(self.config)
        try:
            archive = work / "in.tar.gz"
            with archive.open("wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            root = work / "files"
            self._extract(archive, root)
            manifest = self._verify(root)
            meta = json.loads((root / "capture.json").read_text())
            ion = str(meta["ion"]).removeprefix("ions/")
            parent = f"ions/{ion}"
            target = check_id(capture_id or str(meta["capture_id"]), "header.capture_id")
            self._check_ion_is_ours(ion)
            if self.service.store.get_capture(f"{ion}:{target}") is not None:
                raise errors.AlreadyExists(
                    f"ION {parent} already has a capture named {target!r}", field="capture_id"
                )
            # Everything a relaunch needs first, each part checked before any is stored: a
            # part this deployment refuses stops the import before the capture is written.
            models = export_models.exported_models(root, manifest)
            inputs = export_inputs.exported_inputs(root, manifest, ion, self.service.inputs)
            launches = self._launch_records(root, manifest, parent)
            export_code.restore_snapshots(root, set(manifest), self.registry)
            export_models.restore_models(models, self.registry)
            self._restore_ion(ion, root)
            export_inputs.restore_inputs(inputs, ion, self.service.inputs)
            imported, present = self._append(parent, launches) if launches else (0, 0)
            for batch in self._event_batches(root, parent):
                i, p = self._append(parent, batch)
                imported, present = imported + i, present + p
            capture = self.service.create_capture(
                parent,
                target,
                int(meta["start_ms"]),
                int(meta["end_ms"]),
                str(meta.get("description", "")),
                imported_from=str(meta.get("name", "")),
            )
            return ImportResult(capture, imported, present)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _event_batches(root: Path, parent: str) -> Iterator[list[event_pb2.Event]]:
        """events.jsonl in batches of IMPORT_BATCH."""
        batch: list[event_pb2.Event] = []
        with (root / "events.jsonl").open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                batch.append(_event_of(line, f"events.jsonl line {line_no}", parent))
                if len(batch) >= IMPORT_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    @staticmethod
    def _launch_records(root: Path, manifest: dict[str, Any], parent: str) -> list[event_pb2.Event]:
        """The launch records runs/ carries for runs launched before the window."""
        found: list[event_pb2.Event] = []
        for where in sorted(manifest):
            if not (where.startswith("runs/") and where.endswith(".json")):
                continue
            try:
                record = json.loads((root / where).read_text(encoding="utf-8"))
            except ValueError as e:
                raise errors.InvalidArgument(f"{where} is not JSON: {e}", field="chunk") from e
            if not isinstance(record, dict) or not record.get("before_window"):
                continue
            events = [record.get("event"), *(record.get("datasets") or [])]
            found.extend(_event_of(d, where, parent) for d in events)
        return found

    def _append(self, parent: str, batch: list[event_pb2.Event]) -> tuple[int, int]:
        result = self.service.append(parent, batch, restore=True)
        if result.rejections:
            r = result.rejections[0]
            raise errors.InvalidArgument(
                f"events.jsonl holds an event the recorder refuses: {r.field}: {r.reason}",
                field="chunk",
            )
        return result.stored, result.duplicates

    @staticmethod
    def _extract(archive: Path, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    target = (root / member.name).resolve()
                    if not member.isfile() and not member.isdir():
                        raise errors.InvalidArgument(
                            f"the archive holds {member.name!r}, which is not a plain file",
                            field="chunk",
                        )
                    if root.resolve() not in target.parents and target != root.resolve():
                        raise errors.InvalidArgument(
                            f"the archive path {member.name!r} leaves the archive", field="chunk"
                        )
                    if member.isfile():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        src = tar.extractfile(member)
                        assert src is not None
                        with src, target.open("wb") as out:
                            shutil.copyfileobj(src, out, CHUNK_BYTES)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise errors.InvalidArgument(
                f"the upload is not a readable .tar.gz: {e}", field="chunk"
            ) from e

    @staticmethod
    def _verify(root: Path) -> dict[str, dict[str, Any]]:
        """Checks every file against MANIFEST.json; returns its files (name -> sha256 and
        bytes)."""
        manifest_path = root / "MANIFEST.json"
        if not manifest_path.exists():
            raise errors.InvalidArgument("the archive has no MANIFEST.json", field="chunk")
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
                raise TypeError("files is not an object of objects")
        except (ValueError, KeyError, TypeError) as e:
            raise errors.InvalidArgument(f"MANIFEST.json is malformed: {e}", field="chunk") from e
        for required in ("capture.json", "events.jsonl"):
            if required not in files:
                raise errors.InvalidArgument(f"the archive has no {required}", field="chunk")
        for name, info in files.items():
            path = root / name
            if not path.is_file():
                raise errors.InvalidArgument(
                    f"MANIFEST.json lists {name}, which the archive lacks", field="chunk"
                )
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
            if h.hexdigest() != info.get("sha256"):
                raise errors.InvalidArgument(
                    f"{name} does not match its sha256 in MANIFEST.json", field="chunk"
                )
        return dict(files)

    def _check_ion_is_ours(self, ion: str) -> None:
        """An import creates the ION when it is missing, so another project's ION is taken
        (ALREADY_EXISTS, as the registry answers a create), never written to."""
        if self.registry is None:
            return
        owner = self.registry.project_of(ion, fresh=True)
        if owner is not None and not identity.current().sees(owner):
            raise errors.AlreadyExists(
                f"the archive's ION ions/{ion} already exists in this deployment", field="ion"
            )

    def _restore_ion(self, ion: str, root: Path) -> None:
        """Recreates the exported revisions in this deployment's registry."""
        if self.registry is None:
            return
        info_path = root / "ion" / "ion.json"
        if not info_path.exists():
            return
        info = json.loads(info_path.read_text())
        yamls = [
            ((root / r["file"]).read_text(encoding="utf-8"), str(r.get("source_path", "")))
            for r in info.get("revisions", [])
            if (root / r["file"]).is_file()
        ]
        if yamls:
            self.registry.restore_revisions(ion, yamls)
        elif not self.registry.ion_exists(ion):
            raise errors.FailedPrecondition(
                f"ions/{ion} does not exist here and the archive holds no revision of it",
                field="ion",
            )
