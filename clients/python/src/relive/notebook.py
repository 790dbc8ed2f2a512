"""Turns an exported capture (.tar.gz) into pandas DataFrames for a notebook.

    from relive import notebook
    cap = notebook.load("incident.tar.gz")
    cap["stats"].pivot_table(index="time", columns="name", values="value")

``load`` checks the archive against its MANIFEST.json first.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd


class CaptureData(Mapping[str, pd.DataFrame]):
    """``events``, ``stats`` and ``spans`` DataFrames, plus the capture's metadata
    (``capture``), launch specs by run id (``runs``), and ION revisions (``ion``)."""

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        capture: dict[str, Any],
        runs: dict[str, Any],
        ion: dict[str, Any],
    ) -> None:
        self._frames = frames
        self.capture = capture
        self.runs = runs
        self.ion = ion

    def __getitem__(self, key: str) -> pd.DataFrame:
        return self._frames[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name.startswith("_") or name not in self._frames:
            raise AttributeError(name)
        return self._frames[name]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}: {len(v)} rows" for k, v in self._frames.items())
        return f"<CaptureData {self.capture.get('name', '?')} ({sizes})>"


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in the archive")
    with member:
        return member.read()


def _spans_frame(otlp: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for resource_spans in otlp.get("resourceSpans", []):
        service = ""
        for attr in resource_spans.get("resource", {}).get("attributes", []):
            if attr.get("key") == "service.name":
                service = attr.get("value", {}).get("stringValue", "")
        for scope in resource_spans.get("scopeSpans", []):
            for span in scope.get("spans", []):
                start = int(span.get("startTimeUnixNano", 0))
                end = int(span.get("endTimeUnixNano", 0))
                attributes = {
                    a["key"]: next(iter(a.get("value", {}).values()), None)
                    for a in span.get("attributes", [])
                }
                rows.append(
                    {
                        "trace_id": span.get("traceId", ""),
                        "span_id": span.get("spanId", ""),
                        "parent_span_id": span.get("parentSpanId", ""),
                        "name": span.get("name", ""),
                        "service": service,
                        "kind": span.get("kind", 0),
                        "start": pd.to_datetime(start, unit="ns", utc=True),
                        "end": pd.to_datetime(end, unit="ns", utc=True),
                        "duration_ms": (end - start) / 1e6,
                        "status_code": span.get("status", {}).get("code", 0),
                        "status_message": span.get("status", {}).get("message", ""),
                        "run": attributes.get("relive.run", ""),
                        "node": attributes.get("relive.node", ""),
                        "attributes": attributes,
                    }
                )
    columns = [
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "service",
        "kind",
        "start",
        "end",
        "duration_ms",
        "status_code",
        "status_message",
        "run",
        "node",
        "attributes",
    ]
    return pd.DataFrame(rows, columns=columns)


def load(path: str | Path, *, verify: bool = True) -> CaptureData:
    """Reads an export. With ``verify``, a file whose sha256 differs from MANIFEST.json
    raises ValueError."""
    with tarfile.open(path, "r:gz") as tar:
        names = set(tar.getnames())
        manifest = json.loads(_read(tar, "MANIFEST.json"))
        if verify:
            for name, info in manifest.get("files", {}).items():
                if name not in names:
                    raise ValueError(f"MANIFEST.json lists {name}, which the archive lacks")
                digest = hashlib.sha256(_read(tar, name)).hexdigest()
                if digest != info.get("sha256"):
                    raise ValueError(f"{name} does not match its sha256 in MANIFEST.json")
        capture = json.loads(_read(tar, "capture.json"))
        dtypes = {
            "run": str,
            "node": str,
            "component": str,
            "producer_id": str,
            "event_id": str,
            "trace_id": str,
            "span_id": str,
            "type": str,
            "kind": str,
        }
        with tar.extractfile("events.csv") as f:  # type: ignore[union-attr]
            events = pd.read_csv(f, dtype=dtypes, keep_default_na=False)
        with tar.extractfile("stats.csv") as f:  # type: ignore[union-attr]
            stats = pd.read_csv(
                f, dtype={"run": str, "node": str, "name": str}, keep_default_na=False
            )
        for frame in (events, stats):
            if "time" in frame:
                frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
        if "value" in stats:
            stats["value"] = pd.to_numeric(stats["value"], errors="coerce")
        if "attributes" in events:
            events["attributes"] = [json.loads(a) if a else {} for a in events["attributes"]]
        spans = _spans_frame(json.loads(_read(tar, "spans.otlp.json")))
        runs = {
            Path(n).stem: json.loads(_read(tar, n))
            for n in sorted(names)
            if n.startswith("runs/") and n.endswith(".json")
        }
        ion = json.loads(_read(tar, "ion/ion.json")) if "ion/ion.json" in names else {}
    return CaptureData({"events": events, "stats": stats, "spans": spans}, capture, runs, ion)
