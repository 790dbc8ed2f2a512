"""The recorder's typed client: every RPC with a deadline, and errors mapped to
``relive.errors``. Programs record through ``relive.client.sink.EventSink``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import field_mask_pb2

from relive.client.channel import DEFAULT_TIMEOUT_S, Access, call, with_project
from relive.errors import from_rpc_error
from relive.events import TimeLike, to_timestamp
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc

log = logging.getLogger(__name__)

Event = event_pb2.Event
# Recorded inputs travel in chunks of this size (the recorder sends the same).
CHUNK_BYTES = 1 << 20
TRANSFER_TIMEOUT_S = 600.0

KIND_NAMES = {
    name.removeprefix("EVENT_KIND_").lower(): value
    for name, value in event_pb2.EventKind.items()
    if value
}


def ion_parent(ion: str) -> str:
    return ion if ion.startswith("ions/") else f"ions/{ion}"


def make_filter(
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    kinds: Iterable[str | int] = (),
    types: Iterable[str] = (),
    nodes: Iterable[str] = (),
    runs: Iterable[str] = (),
    trace_id: str = "",
) -> recorder_pb2.EventFilter:
    f = recorder_pb2.EventFilter(
        types=list(types), nodes=list(nodes), runs=list(runs), trace_id=trace_id
    )
    for k in kinds:
        f.kinds.append(KIND_NAMES[k.lower()] if isinstance(k, str) else k)  # type: ignore[arg-type]
    if (ts := to_timestamp(start)) is not None:
        f.start_time.CopyFrom(ts)
    if (ts := to_timestamp(end)) is not None:
        f.end_time.CopyFrom(ts)
    return f


# ---- the typed client ----------------------------------------------------------------------


class RecorderClient:
    """Every recorder RPC with a deadline, retries of UNAVAILABLE (by the channel), and errors
    mapped to ``relive.errors``. ``target`` is ``host:port`` (connected with ``access``, by
    default the RELIVE_* variables) or an open channel, which the client does not close."""

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        access: Access | None = None,
    ) -> None:
        self._own = isinstance(target, str)
        self.channel: grpc.Channel = (
            (access or Access()).connect(target) if isinstance(target, str) else target
        )
        self.stub = recorder_pb2_grpc.RecorderServiceStub(self.channel)
        self.timeout = timeout

    def for_project(self, project: str | None) -> RecorderClient:
        """This client with its calls made for ``project``, over the same connection: what a
        service token does when it works for a caller (docs/auth.md)."""
        if not project:
            return self
        return RecorderClient(with_project(self.channel, project), timeout=self.timeout)

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def __enter__(self) -> RecorderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # events

    def append(self, ion: str, events: Iterable[Event]) -> recorder_pb2.AppendEventsResponse:
        """Appends one batch. Safe to retry: every event carries its identity."""
        request = recorder_pb2.AppendEventsRequest(parent=ion_parent(ion), events=list(events))
        return call(self.stub.AppendEvents, request, timeout=self.timeout)

    def list_events_page(
        self,
        ion: str,
        *,
        filter: recorder_pb2.EventFilter | None = None,
        order: str = "timeline",
        page_size: int = 1000,
        page_token: str = "",
    ) -> recorder_pb2.ListEventsResponse:
        request = recorder_pb2.ListEventsRequest(
            parent=ion_parent(ion),
            filter=filter or recorder_pb2.EventFilter(),
            order=_order(order),  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        return call(self.stub.ListEvents, request, timeout=self.timeout)

    def list_events(
        self,
        ion: str,
        *,
        filter: recorder_pb2.EventFilter | None = None,
        order: str = "timeline",
        page_size: int = 1000,
        **filter_fields: Any,
    ) -> Iterator[Event]:
        """Every matching event, page by page. Keyword filter fields go to ``make_filter``."""
        flt = filter if filter is not None else make_filter(**filter_fields)
        token = ""
        while True:
            page = self.list_events_page(
                ion, filter=flt, order=order, page_size=page_size, page_token=token
            )
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    def watch_events(
        self,
        ion: str,
        *,
        filter: recorder_pb2.EventFilter | None = None,
        after_sequence: int = 0,
        timeout: float | None = None,
        **filter_fields: Any,
    ) -> Iterator[recorder_pb2.WatchEventsResponse]:
        """The live tail; cancel by closing the iterator (or the client)."""
        flt = filter if filter is not None else make_filter(**filter_fields)
        request = recorder_pb2.WatchEventsRequest(
            parent=ion_parent(ion), filter=flt, after_sequence=after_sequence
        )
        stream = self.stub.WatchEvents(request, timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from e
        finally:
            stream.cancel()

    # captures

    def create_capture(
        self,
        ion: str,
        capture_id: str,
        start: TimeLike,
        end: TimeLike,
        *,
        description: str = "",
        request_id: str | None = None,
    ) -> recorder_pb2.Capture:
        capture = recorder_pb2.Capture(description=description)
        if (ts := to_timestamp(start)) is not None:
            capture.start_time.CopyFrom(ts)
        if (ts := to_timestamp(end)) is not None:
            capture.end_time.CopyFrom(ts)
        request = recorder_pb2.CreateCaptureRequest(
            parent=ion_parent(ion),
            capture_id=capture_id,
            capture=capture,
            request_id=request_id or uuid.uuid4().hex,
        )
        return call(self.stub.CreateCapture, request, timeout=self.timeout)

    def get_capture(self, name: str) -> recorder_pb2.Capture:
        return call(
            self.stub.GetCapture, recorder_pb2.GetCaptureRequest(name=name), timeout=self.timeout
        )

    def list_captures(
        self, ion: str = "-", *, page_size: int = 100
    ) -> Iterator[recorder_pb2.Capture]:
        token = ""
        while True:
            page = call(
                self.stub.ListCaptures,
                recorder_pb2.ListCapturesRequest(
                    parent=ion_parent(ion), page_size=page_size, page_token=token
                ),
                timeout=self.timeout,
            )
            yield from page.captures
            token = page.next_page_token
            if not token:
                return

    def update_capture(self, name: str, description: str) -> recorder_pb2.Capture:
        request = recorder_pb2.UpdateCaptureRequest(
            capture=recorder_pb2.Capture(name=name, description=description),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
        return call(self.stub.UpdateCapture, request, timeout=self.timeout)

    def delete_capture(self, name: str) -> None:
        call(
            self.stub.DeleteCapture,
            recorder_pb2.DeleteCaptureRequest(name=name),
            timeout=self.timeout,
        )

    def replay_capture(
        self,
        name: str,
        *,
        speed: float = 1.0,
        start: TimeLike = None,
        filter: recorder_pb2.EventFilter | None = None,
    ) -> Iterator[recorder_pb2.ReplayCaptureResponse]:
        request = recorder_pb2.ReplayCaptureRequest(
            name=name, speed=speed, filter=filter or recorder_pb2.EventFilter()
        )
        if (ts := to_timestamp(start)) is not None:
            request.start_time.CopyFrom(ts)
        stream = self.stub.ReplayCapture(request)
        try:
            yield from stream
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from e
        finally:
            stream.cancel()

    def export_capture(
        self,
        name: str,
        path: str | Path,
        *,
        include_models: bool = False,
        progress: Callable[[recorder_pb2.ExportProgress], None] | None = None,
    ) -> Path:
        """Streams the export into ``path`` (written to a temp name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        request = recorder_pb2.ExportCaptureRequest(name=name, include_models=include_models)
        try:
            with tmp.open("wb") as out:
                for message in self.stub.ExportCapture(request):
                    if message.WhichOneof("payload") == "chunk":
                        out.write(message.chunk)
                    elif progress is not None:
                        progress(message.progress)
            tmp.replace(path)
        except grpc.RpcError as e:
            tmp.unlink(missing_ok=True)
            raise from_rpc_error(e) from e
        return path

    def import_capture(
        self,
        path: str | Path,
        *,
        capture_id: str = "",
        chunk_size: int = 1 << 20,
        progress: Callable[[int, int], None] | None = None,
    ) -> recorder_pb2.ImportCaptureResponse:
        path = Path(path)
        total = path.stat().st_size

        def messages() -> Iterator[recorder_pb2.ImportCaptureRequest]:
            yield recorder_pb2.ImportCaptureRequest(
                header=recorder_pb2.ImportCaptureHeader(capture_id=capture_id)
            )
            sent = 0
            with path.open("rb") as f:
                while chunk := f.read(chunk_size):
                    sent += len(chunk)
                    yield recorder_pb2.ImportCaptureRequest(chunk=chunk)
                    if progress is not None:
                        progress(sent, total)

        try:
            return self.stub.ImportCapture(messages())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    # recorded inputs

    def create_recorded_input(
        self,
        ion: str,
        data: bytes | Path,
        *,
        sha256: str | None = None,
        kind: str,
        media_type: str,
        labels: Mapping[str, str] | None = None,
        use_time: TimeLike = None,
        touch_only: bool = False,
        timeout: float = TRANSFER_TIMEOUT_S,
    ) -> recorder_pb2.RecordedInput:
        """Stores what the world gave a run (bytes, or a file's), once per sha256 in the ION,
        and records a use at ``use_time`` (the using event's time; unset: now).

        The bytes stream in chunks with no question asked first: for an input stored
        already the recorder keeps its one copy. ``touch_only`` sends the header alone, to
        record one more use of an input known to be stored (FailedPrecondition, field
        ``chunk``, when it is not). ``sha256`` is computed when not given; the recorder
        refuses bytes that do not match it."""
        digest = sha256 or _sha256_of(data)
        header = recorder_pb2.CreateRecordedInputHeader(
            parent=ion_parent(ion),
            recorded_input=recorder_pb2.RecordedInput(
                sha256=digest, kind=kind, media_type=media_type, labels=dict(labels or {})
            ),
        )
        if (ts := to_timestamp(use_time)) is not None:
            header.use_time.CopyFrom(ts)

        def messages() -> Iterator[recorder_pb2.CreateRecordedInputRequest]:
            yield recorder_pb2.CreateRecordedInputRequest(header=header)
            if touch_only:
                return
            sent = False
            for chunk in _chunks_of(data):
                sent = True
                yield recorder_pb2.CreateRecordedInputRequest(chunk=chunk)
            if not sent:  # an empty input is one empty chunk; no chunk at all is a touch
                yield recorder_pb2.CreateRecordedInputRequest(chunk=b"")

        def send(_: None, timeout: float) -> recorder_pb2.RecordedInput:
            return self.stub.CreateRecordedInput(messages(), timeout=timeout)

        return call(send, None, timeout=timeout)

    def get_recorded_input(self, name: str) -> recorder_pb2.RecordedInput:
        """``name`` is ``ions/{ion}/inputs/{sha256}``."""
        return call(
            self.stub.GetRecordedInput,
            recorder_pb2.GetRecordedInputRequest(name=name),
            timeout=self.timeout,
        )

    def _download(self, name: str, out: IO[bytes], timeout: float) -> recorder_pb2.RecordedInput:
        """Writes an input's bytes into ``out``, checked against its sha256 (OSError when
        they differ); returns its metadata."""

        def receive(
            request: recorder_pb2.DownloadRecordedInputRequest, timeout: float
        ) -> recorder_pb2.RecordedInput:
            meta: recorder_pb2.RecordedInput | None = None
            digest = hashlib.sha256()
            for message in self.stub.DownloadRecordedInput(request, timeout=timeout):
                if message.WhichOneof("payload") == "recorded_input":
                    meta = message.recorded_input
                else:
                    digest.update(message.chunk)
                    out.write(message.chunk)
            if meta is None:
                raise OSError(f"{name}: the download carried no metadata")
            if digest.hexdigest() != meta.sha256:
                raise OSError(f"{name}: the downloaded bytes do not match sha256 {meta.sha256}")
            return meta

        request = recorder_pb2.DownloadRecordedInputRequest(name=name)
        return call(receive, request, timeout=timeout)

    def download_recorded_input(self, name: str, *, timeout: float = TRANSFER_TIMEOUT_S) -> bytes:
        """A recorded input's bytes (held in memory: inputs are bounded by the recorder's
        RELIVE_MAX_INPUT_BYTES)."""
        out = io.BytesIO()
        self._download(name, out, timeout)
        return out.getvalue()

    def download_recorded_input_to(
        self, name: str, path: str | Path, *, timeout: float = TRANSFER_TIMEOUT_S
    ) -> recorder_pb2.RecordedInput:
        """Writes a recorded input to ``path`` (a temp file beside it, renamed once whole and
        checked: a broken download leaves nothing at ``path``); returns its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                meta = self._download(name, f, timeout)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return meta

    # retention

    def get_retention_policy(self, ion: str) -> recorder_pb2.RetentionPolicy:
        return call(
            self.stub.GetRetentionPolicy,
            recorder_pb2.GetRetentionPolicyRequest(name=f"{ion_parent(ion)}/retentionPolicy"),
            timeout=self.timeout,
        )

    def set_retention(self, ion: str, days: int) -> recorder_pb2.RetentionPolicy:
        policy = recorder_pb2.RetentionPolicy(
            name=f"{ion_parent(ion)}/retentionPolicy", retention_days=days
        )
        return call(
            self.stub.UpdateRetentionPolicy,
            recorder_pb2.UpdateRetentionPolicyRequest(retention_policy=policy),
            timeout=self.timeout,
        )

    def run_retention(
        self, ion: str, *, as_of: TimeLike = None
    ) -> recorder_pb2.RunRetentionResponse:
        request = recorder_pb2.RunRetentionRequest(parent=ion_parent(ion))
        if (ts := to_timestamp(as_of)) is not None:
            request.as_of_time.CopyFrom(ts)
        return call(self.stub.RunRetention, request, timeout=max(self.timeout, 300.0))


def _sha256_of(data: bytes | Path) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with Path(data).open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks_of(data: bytes | Path) -> Iterator[bytes]:
    if isinstance(data, bytes):
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]
        return
    with Path(data).open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _order(order: str) -> int:
    if order in ("", "timeline"):
        return recorder_pb2.EVENT_ORDER_TIMELINE
    if order == "arrival":
        return recorder_pb2.EVENT_ORDER_ARRIVAL
    raise ValueError(f"order must be 'timeline' or 'arrival', not {order!r}")


__all__ = ["KIND_NAMES", "RecorderClient", "ion_parent", "make_filter"]
