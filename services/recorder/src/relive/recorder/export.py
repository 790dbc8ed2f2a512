"""Export of a capture to a .tar.gz, streamed through temp files (``importer.py`` reads one
back).

Layout (DESIGN.md): MANIFEST.json (sha256 and size of every other file), capture.json,
ion/ (ion.json and the YAML of each revision in force), runs/ (the launch spec of every run
that overlaps the window, found before the window when it started earlier), code/ (the code
snapshots those runs ran; see export_code), inputs/ (the recorded inputs the events name;
see export_inputs), events.jsonl, events.csv, stats.csv, spans.otlp.json, and models/ when
asked for (export_models). Events are written in timeline order. Nothing holds a whole
capture in memory: events stream from the store into files, the archive is built on disk,
and it leaves in chunks.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from relive import errors
from relive.core.config import Config
from relive.recorder import export_code, export_inputs, export_models
from relive.recorder.inputs import input_names
from relive.recorder.registry_link import Registry
from relive.recorder.service import Capture, RecorderService, ms_to_datetime
from relive.recorder.v1 import event_pb2

log = logging.getLogger(__name__)

FORMAT = "relive-capture/1"
CHUNK_BYTES = 1 << 20
IMPORT_BATCH = 1000
PROGRESS_EVERY = 5000
EVENT_COLUMNS = [
    "sequence",
    "time",
    "hlc_physical_ms",
    "hlc_logical",
    "producer_id",
    "producer_sequence",
    "event_id",
    "kind",
    "type",
    "run",
    "node",
    "component",
    "trace_id",
    "span_id",
    "attributes",
]
STAT_COLUMNS = ["time", "run", "node", "name", "value", "step", "sequence"]

Progress = tuple[int, int, str]


def iso(ms: int) -> str:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def event_to_dict(e: event_pb2.Event) -> dict[str, Any]:
    return json_format.MessageToDict(e, preserving_proto_field_name=True)


def _attributes(e: event_pb2.Event) -> dict[str, Any]:
    which = e.WhichOneof("attributes")
    if which is None:
        return {}
    return {which: json_format.MessageToDict(getattr(e, which), preserving_proto_field_name=True)}


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if value.is_integer():
            return {"intValue": str(int(value))}
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_otlp_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": _otlp_attributes(value)}}
    return {"stringValue": str(value)}


def _otlp_attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _otlp_value(v)} for k, v in values.items()]


def _nanos(ts: Any) -> str:
    return str(int(ts.seconds) * 1_000_000_000 + int(ts.nanos))


def span_to_otlp(e: event_pb2.Event) -> dict[str, Any]:
    """One span event as an OTLP/JSON span (ids in hex, enums as numbers)."""
    s = e.span
    attributes = json_format.MessageToDict(s.attributes) if s.HasField("attributes") else {}
    for key, value in (
        ("relive.run", e.run),
        ("relive.node", e.node),
        ("relive.component", e.component),
        ("relive.event", e.name),
    ):
        if value:
            attributes.setdefault(key, value)
    span: dict[str, Any] = {
        "traceId": e.trace_id,
        "spanId": e.span_id,
        "name": s.name or e.type,
        "kind": int(s.span_kind) or 1,
        "startTimeUnixNano": _nanos(s.start_time),
        "endTimeUnixNano": _nanos(s.end_time),
        "attributes": _otlp_attributes(attributes),
        "status": {"code": int(s.status_code)},
    }
    if s.parent_span_id:
        span["parentSpanId"] = s.parent_span_id
    if s.status_message:
        span["status"]["message"] = s.status_message
    return span


def workdir(config: Config) -> Path:
    """A temp directory for one export or import, under the data dir when it can be."""
    base = Path(config.data_dir) / "tmp"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="relive-export-", dir=base))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="relive-export-"))


class _Files:
    """The files of an export being written, with their hashes computed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []

    def open(self, name: str, mode: str = "w") -> IO[Any]:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name not in self.names:
            self.names.append(name)
        if "b" in mode:
            return path.open(mode)
        return path.open(mode, encoding="utf-8", newline="")

    def path(self, name: str) -> Path:
        """Where another writer (a download) puts the file ``name`` of the export."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name not in self.names:
            self.names.append(name)
        return path

    def discard(self, name: str) -> None:
        """Drops a file that could not be written whole."""
        (self.root / name).unlink(missing_ok=True)
        if name in self.names:
            self.names.remove(name)

    def write_json(self, name: str, value: Any) -> None:
        with self.open(name) as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")

    def manifest(self) -> dict[str, Any]:
        files = {}
        for name in sorted(self.names):
            h = hashlib.sha256()
            path = self.root / name
            with path.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
            files[name] = {"sha256": h.hexdigest(), "bytes": path.stat().st_size}
        return {"format": FORMAT, "files": files}


class Exporter:
    def __init__(self, config: Config, service: RecorderService, registry: Registry | None) -> None:
        self.config = config
        self.service = service
        self.registry = registry

    # -- export

    def export(self, name: str, include_models: bool) -> Iterator[bytes | Progress]:
        """Yields progress tuples (written, total, stage) and then the archive in chunks."""
        cap = self.service.get_capture(name)
        flt = self.service.capture_filter(cap)
        work = workdir(self.config)
        try:
            total = sum(
                s.count for s in self.service.reader.timeline_segments(cap.ion, flt, first_chunk=16)
            )
            yield (0, total, "events")
            files = _Files(work / "files")
            written = 0
            for written in self._write_events(cap, files):
                yield (written, total, "events")
            yield (written, total, "runs")
            self._write_runs_before(cap, files)
            yield (written, total, "ion")
            self._write_ion(cap, files)
            code: list[str] = []
            if self._snapshots:
                yield (written, total, "code")
                code = export_code.write_snapshots(self._snapshots, self.registry, files, name)
            inputs: list[str] = []
            if self._inputs:
                yield (written, total, "inputs")
                inputs = export_inputs.write_inputs(
                    self._inputs, cap.ion, self.service.inputs, files, name
                )
            models = sorted(self._models)
            if include_models and models:
                yield (written, total, "models")
                export_models.write_models(models, self.registry, files)
            files.write_json("capture.json", self._capture_json(cap, written, models, code, inputs))
            manifest = files.manifest()
            (work / "files" / "MANIFEST.json").write_text(
                json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            )
            yield (written, total, "archive")
            archive = work / "capture.tar.gz"
            with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
                for member in ["MANIFEST.json", *sorted(files.names)]:
                    tar.add(work / "files" / member, arcname=member, recursive=False)
            with archive.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield chunk
            yield (written, total, "done")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _capture_json(
        self, cap: Capture, count: int, models: list[str], code: list[str], inputs: list[str]
    ) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": cap.name,
            "ion": f"ions/{cap.ion}",
            "capture_id": cap.capture_id,
            "start_time": iso(cap.start_ms),
            "end_time": iso(cap.end_ms),
            "start_ms": cap.start_ms,
            "end_ms": cap.end_ms,
            "description": cap.description,
            "owner": cap.owner,
            "project": cap.project,
            "imported_from": cap.imported_from,
            "event_count": count,
            "model_versions": models,
            "code_snapshots": code,
            "recorded_inputs": inputs,
        }

    def _write_events(self, cap: Capture, files: _Files) -> Iterator[int]:
        """Writes events.jsonl, events.csv, stats.csv, spans.otlp.json and runs/."""
        self._models: set[str] = set()
        # The code snapshots the window's runs ran, each with a run that ran it.
        self._snapshots: dict[str, str] = {}
        # The recorded inputs the events name, each with an event that names it.
        self._inputs: dict[str, str] = {}
        # The runs with an event in the window, and those whose run.launched is in it.
        self._runs: set[str] = set()
        self._launched: set[str] = set()
        flt = self.service.capture_filter(cap)
        span_files: dict[str, IO[Any]] = {}
        span_dir = files.root.parent / "spans"
        span_dir.mkdir(parents=True, exist_ok=True)
        n = 0
        with (
            files.open("events.jsonl") as jsonl,
            files.open("events.csv") as events_csv,
            files.open("stats.csv") as stats_csv,
        ):
            ev_writer = csv.writer(events_csv)
            ev_writer.writerow(EVENT_COLUMNS)
            stat_writer = csv.writer(stats_csv)
            stat_writer.writerow(STAT_COLUMNS)
            for e in self.service.reader.iter_timeline(cap.ion, flt, first_chunk=16):
                d = event_to_dict(e)
                jsonl.write(json.dumps(d, sort_keys=True, separators=(",", ":")))
                jsonl.write("\n")
                ms = int(e.hlc.physical_ms)
                ev_writer.writerow(
                    [
                        e.sequence,
                        iso(ms),
                        ms,
                        e.hlc.logical,
                        e.producer_id,
                        e.producer_sequence,
                        e.event_id,
                        event_pb2.EventKind.Name(e.kind).removeprefix("EVENT_KIND_").lower(),
                        e.type,
                        e.run,
                        e.node,
                        e.component,
                        e.trace_id,
                        e.span_id,
                        json.dumps(_attributes(e), sort_keys=True, separators=(",", ":")),
                    ]
                )
                which = e.WhichOneof("attributes")
                if which == "stat":
                    stat_writer.writerow(
                        [
                            iso(ms),
                            e.run,
                            e.node,
                            e.stat.name,
                            repr(e.stat.value),
                            e.stat.step,
                            e.sequence,
                        ]
                    )
                elif which == "span" and e.trace_id and e.span_id:
                    service = e.span.service_name or e.node or "relive"
                    out = span_files.get(service)
                    if out is None:
                        path = span_dir / f"{len(span_files)}.jsonl"
                        out = span_files[service] = path.open("w", encoding="utf-8")
                    out.write(json.dumps(span_to_otlp(e), separators=(",", ":")) + "\n")
                elif which == "model" and e.model.model_version:
                    self._models.add(e.model.model_version)
                self._note(e)
                if e.type == "run.launched":
                    self._write_run(e, d, files)
                n += 1
                if n % PROGRESS_EVERY == 0:
                    yield n
        for out in span_files.values():
            out.close()
        self._write_spans(span_files, span_dir, files)
        yield n

    def _note(self, e: event_pb2.Event) -> None:
        """What an event of the export needs carried: its run, the inputs it names."""
        if e.run:
            self._runs.add(e.run)
        for name in input_names(e):
            self._inputs.setdefault(name, e.name or f"the event at sequence {e.sequence}")

    def _write_run(
        self,
        e: event_pb2.Event,
        d: dict[str, Any],
        files: _Files,
        datasets: list[dict[str, Any]] | None = None,
    ) -> None:
        """runs/<run>.json: the launch spec of a run. One launched before the window also
        carries its launch record (the run.launched event is ``event``, and ``datasets``
        its dataset.used events), which an import appends with the window's events."""
        run_id = e.run.rsplit("/", 1)[-1] if e.run else f"sequence-{e.sequence}"
        spec = (
            json_format.MessageToDict(e.lifecycle.details)
            if e.HasField("lifecycle") and e.lifecycle.HasField("details")
            else {}
        )
        record: dict[str, Any] = {"run": e.run, "spec": spec, "event": d}
        if datasets is not None:
            record.update(before_window=True, datasets=datasets)
        files.write_json(f"runs/{run_id}.json", record)
        if e.run:
            self._launched.add(e.run)
        for snapshot in export_code.snapshots_of_launch(spec):
            self._snapshots.setdefault(snapshot, e.run or f"at sequence {e.sequence}")
        self._models.update(export_models.models_of_launch(spec))

    def _write_runs_before(self, cap: Capture, files: _Files) -> None:
        """The launch records of the runs that overlap the window but started before it (a
        capture of an incident late in a long stream), found through the bucket summaries."""
        missing = self._runs - self._launched
        launches: dict[str, event_pb2.Event] = {}
        datasets: dict[str, list[event_pb2.Event]] = {}
        for e in self.service.launch_records(cap.ion, missing, end_ms=cap.start_ms):
            if e.type == "run.launched":
                launches[e.run] = e  # a run has one; the latest wins if a producer wrote more
            else:
                datasets.setdefault(e.run, []).append(e)
        for run, launched in sorted(launches.items()):
            record = datasets.get(run, [])
            for e in (launched, *record):
                self._note(e)
            self._write_run(
                launched, event_to_dict(launched), files, [event_to_dict(e) for e in record]
            )

    def _write_spans(self, span_files: dict[str, IO[Any]], span_dir: Path, files: _Files) -> None:
        with files.open("spans.otlp.json") as out:
            out.write('{"resourceSpans":[')
            for k, service in enumerate(span_files):
                if k:
                    out.write(",")
                resource = {"attributes": _otlp_attributes({"service.name": service})}
                out.write('{"resource":' + json.dumps(resource))
                out.write(',"scopeSpans":[{"scope":{"name":"relive.recorder"},"spans":[')
                with (span_dir / f"{k}.jsonl").open(encoding="utf-8") as f:
                    for i, line in enumerate(f):
                        if i:
                            out.write(",")
                        out.write(line.rstrip("\n"))
                out.write("]}]}")
            out.write("]}\n")

    def _write_ion(self, cap: Capture, files: _Files) -> None:
        """The revisions in force during the window: every one made before its end (at least
        the first), from the registry."""
        revisions = []
        if self.registry is not None:
            try:
                all_revisions = self.registry.revisions(cap.ion)
            except errors.ReliveError as e:
                log.warning("export of %s: no revisions from the registry: %s", cap.name, e)
                all_revisions = []
            end = ms_to_datetime(cap.end_ms)
            chosen = [
                r
                for r in all_revisions
                if not r.HasField("create_time") or r.create_time.ToDatetime(dt.UTC) < end
            ] or all_revisions[:1]
            for r in chosen:
                path = f"ion/revisions/{r.revision_id}.yaml"
                with files.open(path) as f:
                    f.write(r.source_yaml)
                revisions.append(
                    {
                        "revision_id": r.revision_id,
                        "name": r.name,
                        "file": path,
                        "source_path": r.source_path,
                        "definition_sha256": r.definition_sha256,
                        "create_time": (
                            r.create_time.ToJsonString() if r.HasField("create_time") else ""
                        ),
                    }
                )
        files.write_json("ion/ion.json", {"name": f"ions/{cap.ion}", "revisions": revisions})
