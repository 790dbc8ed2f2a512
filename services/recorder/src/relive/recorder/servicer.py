"""RecorderService over gRPC: proto <-> domain only; no storage code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import code_pb2

from relive import errors
from relive.recorder.export import Exporter
from relive.recorder.importer import Importer
from relive.recorder.inputs import InputHeader, RecordedInput
from relive.recorder.reader import ORDER_ARRIVAL, ORDER_TIMELINE, EventFilter
from relive.recorder.service import Capture, RecorderService, RetentionPolicy, datetime_to_ms
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc
from relive.recorder.writer import AppendResult

_CODES = {
    "INVALID_ARGUMENT": code_pb2.INVALID_ARGUMENT,
    "ABORTED": code_pb2.ABORTED,
    "RESOURCE_EXHAUSTED": code_pb2.RESOURCE_EXHAUSTED,
}


def ts_to_ms(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def ms_to_ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def optional_ms(message: Any, field: str) -> int | None:
    return ts_to_ms(getattr(message, field)) if message.HasField(field) else None


def filter_from_proto(f: recorder_pb2.EventFilter) -> EventFilter:
    return EventFilter(
        start_ms=optional_ms(f, "start_time"),
        end_ms=optional_ms(f, "end_time"),
        kinds=frozenset(int(k) for k in f.kinds),
        types=frozenset(f.types),
        nodes=frozenset(f.nodes),
        runs=frozenset(f.runs),
        trace_id=f.trace_id,
    )


def append_response(result: AppendResult) -> recorder_pb2.AppendEventsResponse:
    return recorder_pb2.AppendEventsResponse(
        sequences=result.sequences,
        stored_count=result.stored,
        duplicate_count=result.duplicates,
        rejections=[
            recorder_pb2.EventRejection(
                index=r.index,
                field=r.field,
                reason=r.reason,
                code=_CODES.get(r.code, code_pb2.INVALID_ARGUMENT),
            )
            for r in result.rejections
        ],
    )


def capture_to_proto(c: Capture) -> recorder_pb2.Capture:
    out = recorder_pb2.Capture(
        name=c.name,
        start_time=ms_to_ts(c.start_ms),
        end_time=ms_to_ts(c.end_ms),
        description=c.description,
        owner=c.owner,
        project=c.project,
        imported_from=c.imported_from,
    )
    if c.create_time is not None:
        out.create_time.FromDatetime(c.create_time)
    if c.update_time is not None:
        out.update_time.FromDatetime(c.update_time)
    return out


def policy_to_proto(p: RetentionPolicy) -> recorder_pb2.RetentionPolicy:
    out = recorder_pb2.RetentionPolicy(
        name=f"ions/{p.ion}/retentionPolicy", retention_days=p.retention_days
    )
    if p.last_sweep_time is not None:
        out.last_sweep_time.FromDatetime(p.last_sweep_time)
    return out


def input_to_proto(r: RecordedInput) -> recorder_pb2.RecordedInput:
    out = recorder_pb2.RecordedInput(
        name=r.name,
        sha256=r.sha256,
        kind=r.kind,
        media_type=r.media_type,
        size_bytes=r.size_bytes,
        first_use_time=ms_to_ts(r.first_use_ms),
        last_use_time=ms_to_ts(r.last_use_ms),
        labels=dict(r.labels),
    )
    if r.create_time is not None:
        out.create_time.FromDatetime(r.create_time)
    return out


def input_header(h: recorder_pb2.CreateRecordedInputHeader) -> InputHeader:
    r = h.recorded_input
    use_ms = None
    if h.HasField("use_time"):
        if not 0 <= h.use_time.nanos < 1_000_000_000:
            raise errors.InvalidArgument("header.use_time is malformed", field="header.use_time")
        use_ms = ts_to_ms(h.use_time)
    return InputHeader(
        sha256=r.sha256,
        kind=r.kind,
        media_type=r.media_type,
        labels=dict(r.labels),
        name=r.name,
        use_ms=use_ms,
    )


def _order(value: int) -> str:
    if value == recorder_pb2.EVENT_ORDER_ARRIVAL:
        return ORDER_ARRIVAL
    if value in (recorder_pb2.EVENT_ORDER_TIMELINE, recorder_pb2.EVENT_ORDER_UNSPECIFIED):
        return ORDER_TIMELINE
    raise errors.InvalidArgument(f"order {value} is not an EventOrder", field="order")


class RecorderServicer(recorder_pb2_grpc.RecorderServiceServicer):
    def __init__(self, service: RecorderService, exporter: Exporter, importer: Importer) -> None:
        self.service = service
        self.exporter = exporter
        self.importer = importer

    def AppendEvents(
        self, request: recorder_pb2.AppendEventsRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.AppendEventsResponse:
        return append_response(
            self.service.append(request.parent, request.events, batch_bytes=request.ByteSize())
        )

    def StreamEvents(
        self,
        request_iterator: Iterator[recorder_pb2.StreamEventsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[recorder_pb2.StreamEventsResponse]:
        for request in request_iterator:
            batch = request.batch
            result = self.service.append(batch.parent, batch.events, batch_bytes=batch.ByteSize())
            yield recorder_pb2.StreamEventsResponse(
                batch_id=request.batch_id, result=append_response(result)
            )

    def ListEvents(  # type: ignore[override]
        self, request: recorder_pb2.ListEventsRequest, context: grpc.ServicerContext
    ) -> bytes:
        """Returns the serialized response: server.py registers a pass-through serializer."""
        return self.service.list_events_raw(
            request.parent,
            filter_from_proto(request.filter),
            _order(request.order),
            request.page_size,
            request.page_token,
        )

    def WatchEvents(
        self, request: recorder_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[recorder_pb2.WatchEventsResponse]:
        for events, caught_up in self.service.watch(
            request.parent,
            filter_from_proto(request.filter),
            request.after_sequence,
            context.is_active,
        ):
            response = recorder_pb2.WatchEventsResponse(caught_up=caught_up)
            response.events.extend(events)
            yield response

    def CreateCapture(
        self, request: recorder_pb2.CreateCaptureRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.Capture:
        c = request.capture
        return capture_to_proto(
            self.service.create_capture(
                request.parent,
                request.capture_id,
                optional_ms(c, "start_time"),
                optional_ms(c, "end_time"),
                c.description,
                request.request_id,
            )
        )

    def GetCapture(
        self, request: recorder_pb2.GetCaptureRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.Capture:
        return capture_to_proto(self.service.get_capture(request.name))

    def ListCaptures(
        self, request: recorder_pb2.ListCapturesRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.ListCapturesResponse:
        captures, token = self.service.list_captures(
            request.parent, request.page_size, request.page_token
        )
        return recorder_pb2.ListCapturesResponse(
            captures=[capture_to_proto(c) for c in captures], next_page_token=token
        )

    def UpdateCapture(
        self, request: recorder_pb2.UpdateCaptureRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.Capture:
        return capture_to_proto(
            self.service.update_capture(
                request.capture.name, request.capture.description, list(request.update_mask.paths)
            )
        )

    def DeleteCapture(
        self, request: recorder_pb2.DeleteCaptureRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.service.delete_capture(request.name)
        return empty_pb2.Empty()

    def ReplayCapture(
        self, request: recorder_pb2.ReplayCaptureRequest, context: grpc.ServicerContext
    ) -> Iterator[recorder_pb2.ReplayCaptureResponse]:
        for event, ms in self.service.replay(
            request.name,
            request.speed,
            optional_ms(request, "start_time"),
            filter_from_proto(request.filter),
            context.is_active,
        ):
            yield recorder_pb2.ReplayCaptureResponse(event=event, playback_time=ms_to_ts(ms))

    def ExportCapture(
        self, request: recorder_pb2.ExportCaptureRequest, context: grpc.ServicerContext
    ) -> Iterator[recorder_pb2.ExportCaptureResponse]:
        for item in self.exporter.export(request.name, request.include_models):
            if isinstance(item, bytes):
                yield recorder_pb2.ExportCaptureResponse(chunk=item)
            else:
                written, total, stage = item
                yield recorder_pb2.ExportCaptureResponse(
                    progress=recorder_pb2.ExportProgress(
                        events_written=written, events_total=total, stage=stage
                    )
                )

    def ImportCapture(
        self,
        request_iterator: Iterator[recorder_pb2.ImportCaptureRequest],
        context: grpc.ServicerContext,
    ) -> recorder_pb2.ImportCaptureResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise errors.InvalidArgument(
                "the first message of ImportCapture must be a header", field="header"
            )

        def chunks() -> Iterator[bytes]:
            for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise errors.InvalidArgument(
                        "only the first message may be a header", field="header"
                    )
                yield message.chunk

        result = self.importer.import_(first.header.capture_id, chunks())
        return recorder_pb2.ImportCaptureResponse(
            capture=capture_to_proto(result.capture),
            events_imported=result.imported,
            events_already_present=result.already_present,
        )

    def CreateRecordedInput(
        self,
        request_iterator: Iterator[recorder_pb2.CreateRecordedInputRequest],
        context: grpc.ServicerContext,
    ) -> recorder_pb2.RecordedInput:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise errors.InvalidArgument(
                "the first message of CreateRecordedInput must be a header", field="header"
            )

        def chunks() -> Iterator[bytes]:
            for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise errors.InvalidArgument(
                        "only the first message may be a header", field="header"
                    )
                yield message.chunk

        header = first.header
        found = self.service.inputs.create(header.parent, input_header(header), chunks())
        return input_to_proto(found)

    def GetRecordedInput(
        self, request: recorder_pb2.GetRecordedInputRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.RecordedInput:
        return input_to_proto(self.service.inputs.get(request.name))

    def DownloadRecordedInput(
        self, request: recorder_pb2.DownloadRecordedInputRequest, context: grpc.ServicerContext
    ) -> Iterator[recorder_pb2.DownloadRecordedInputResponse]:
        found, chunks = self.service.inputs.download(request.name)
        yield recorder_pb2.DownloadRecordedInputResponse(recorded_input=input_to_proto(found))
        for chunk in chunks:
            yield recorder_pb2.DownloadRecordedInputResponse(chunk=chunk)

    def GetRetentionPolicy(
        self, request: recorder_pb2.GetRetentionPolicyRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.RetentionPolicy:
        return policy_to_proto(self.service.get_retention(request.name))

    def UpdateRetentionPolicy(
        self, request: recorder_pb2.UpdateRetentionPolicyRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.RetentionPolicy:
        p = request.retention_policy
        return policy_to_proto(self.service.set_retention(p.name, p.retention_days))

    def RunRetention(
        self, request: recorder_pb2.RunRetentionRequest, context: grpc.ServicerContext
    ) -> recorder_pb2.RunRetentionResponse:
        result = self.service.run_retention(request.parent, optional_ms(request, "as_of_time"))
        return recorder_pb2.RunRetentionResponse(
            events_deleted=result.events_deleted,
            events_kept_by_captures=result.events_kept_by_captures,
            cutoff_time=ms_to_ts(result.cutoff_ms),
        )


__all__ = ["RecorderServicer", "datetime_to_ms", "filter_from_proto", "ms_to_ts", "ts_to_ms"]
