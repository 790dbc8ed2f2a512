"""Turns an exported capture (.tar.gz) into pandas DataFrames for a notebook.

    from relive import notebook
    cap = notebook.load("incident.tar.gz")
    cap["stats"].pivot_table(index="time", columns="name", values="value")
    cap.batches.groupby("batch").size()        # the live batches the runs consumed

``load`` checks the archive against its MANIFEST.json first.

The live batches come as **one** frame, ``batches``: a row per row of each batch, in the
order the window's ``stream.batch`` events came, with the columns ``run``, ``node``,
``batch`` (the batch's position in its stream) and ``time`` (its event's), then the batch's
own columns. A Parquet batch keeps its columns; a numpy batch (``.npy``, or ``.npz`` holding
``x`` and, with labels, ``y``) becomes ``x0..xn``, plus ``label`` when it has labels.
``input(name)`` gives any one recorded input: a frame when it is tabular, else its bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

PARQUET = "application/vnd.apache.parquet"
NPY = "application/x-npy"
NPZ = "application/x-npz"
BATCH_COLUMNS = ["run", "node", "batch", "time"]


class CaptureData(Mapping[str, pd.DataFrame]):
    """``events``, ``stats``, ``spans`` and ``batches`` DataFrames, plus the capture's
    metadata (``capture``), launch specs by run id (``runs``), ION revisions (``ion``), and
    the recorded inputs' metadata by name (``inputs``)."""

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        capture: dict[str, Any],
        runs: dict[str, Any],
        ion: dict[str, Any],
        inputs: dict[str, dict[str, Any]] | None = None,
        input_bytes: dict[str, bytes] | None = None,
    ) -> None:
        self._frames = frames
        self.capture = capture
        self.runs = runs
        self.ion = ion
        self.inputs = inputs or {}
        self._input_bytes = input_bytes or {}

    def input(self, name: str) -> pd.DataFrame | bytes:
        """A recorded input (``ions/{ion}/inputs/{sha256}``): a DataFrame when it is a
        Parquet or numpy batch, else its bytes. KeyError when the export lacks it."""
        meta = self.inputs[name]
        return input_frame(self._input_bytes[name], meta.get("media_type", ""))

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


def _array_frame(x: Any, y: Any = None) -> pd.DataFrame:
    """A numpy batch as columns x0..xn (one row per sample), plus ``label`` for labels."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    frame = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    if y is not None:
        frame["label"] = np.asarray(y).reshape(len(frame), -1)[:, 0]
    return frame


def input_frame(data: bytes, media_type: str) -> pd.DataFrame | bytes:
    """Decodes one recorded input: Parquet through pyarrow, numpy arrays (never pickles)
    into x0..xn columns; anything else stays bytes."""
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind == PARQUET:
        frame: pd.DataFrame = pq.read_table(io.BytesIO(data)).to_pandas()
        return frame
    if kind == NPY:
        return _array_frame(np.load(io.BytesIO(data), allow_pickle=False))
    if kind == NPZ:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "x" not in npz:
                return data
            return _array_frame(npz["x"], npz.get("y"))
    return data


def _batches_frame(
    events: pd.DataFrame, inputs: dict[str, dict[str, Any]], blobs: dict[str, bytes]
) -> pd.DataFrame:
    """One frame of the live batches the window's ``stream.batch`` events name."""
    parts = []
    if "type" in events:
        for row in events[events["type"] == "stream.batch"].itertuples(index=False):
            data = (getattr(row, "attributes", None) or {}).get("custom", {}).get("data", {})
            name = data.get("input") if isinstance(data, dict) else None
            if not isinstance(name, str) or name not in blobs:
                continue
            frame = input_frame(blobs[name], inputs[name].get("media_type", ""))
            if not isinstance(frame, pd.DataFrame):
                continue
            batch = data.get("batch")
            head = pd.DataFrame(
                {
                    "run": row.run,
                    "node": row.node,
                    "batch": int(batch) if isinstance(batch, int | float) else -1,
                    "time": row.time,
                },
                index=range(len(frame)),
            )
            parts.append(pd.concat([head, frame.reset_index(drop=True)], axis=1))
    if not parts:
        return pd.DataFrame(columns=BATCH_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def _inputs(tar: tarfile.TarFile, names: set[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The recorded inputs' metadata and bytes, by name."""
    metas: dict[str, dict[str, Any]] = {}
    blobs: dict[str, bytes] = {}
    for n in sorted(names):
        if not (n.startswith("inputs/") and n.endswith(".json")):
            continue
        meta = json.loads(_read(tar, n))
        stem = n[: -len(".json")]
        data = next((f"{stem}{ext}" for ext in (".parquet", ".bin") if f"{stem}{ext}" in names), "")
        if data and isinstance(meta.get("name"), str):
            metas[meta["name"]] = meta
            blobs[meta["name"]] = _read(tar, data)
    return metas, blobs


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
        inputs, blobs = _inputs(tar, names)
    batches = _batches_frame(events, inputs, blobs)
    frames = {"events": events, "stats": stats, "spans": spans, "batches": batches}
    return CaptureData(frames, capture, runs, ion, inputs, blobs)
