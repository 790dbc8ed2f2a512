"""OTLP trace ingest: spans from any OpenTelemetry SDK become span events of an ION's timeline.

The ION is the resource attribute ``relive.ion``; ``relive.run``, ``relive.node`` and
``relive.component`` span attributes place a span in a run. A span's identity is its trace and
span id, so an exporter's retry never stores a span twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from relive import errors
from relive.recorder.service import RecorderService
from relive.recorder.v1 import event_pb2

log = logging.getLogger(__name__)

ION_ATTRIBUTE = "relive.ion"
HLC_ATTRIBUTE = "relive.hlc"
PLACE_ATTRIBUTES = {"relive.run": "run", "relive.node": "node", "relive.component": "component"}


def any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "int_value":
        return float(value.int_value) if abs(value.int_value) >= 2**53 else value.int_value
    return getattr(value, kind)


def attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def _timestamp(unix_nano: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(unix_nano)
    return ts


def _hlc(attrs: dict[str, Any], start_nano: int) -> event_pb2.Hlc:
    """The HLC the relive SDK stamped on the span, else the span's start time: milliseconds,
    with the nanoseconds within the millisecond as the logical part, so that spans from one
    clock keep their start order even within a millisecond."""
    raw = attrs.get(HLC_ATTRIBUTE)
    if isinstance(raw, str):
        physical, _, logical = raw.partition(".")
        if physical.isdigit() and (logical.isdigit() or not logical):
            return event_pb2.Hlc(physical_ms=int(physical), logical=int(logical or 0))
    physical_ms, within = divmod(start_nano, 1_000_000)
    return event_pb2.Hlc(physical_ms=physical_ms, logical=within)


def span_events(
    request: trace_service_pb2.ExportTraceServiceRequest,
) -> tuple[dict[str, list[event_pb2.Event]], int]:
    """Groups the request's spans by ION; returns them and the number without an ION."""
    by_ion: dict[str, list[event_pb2.Event]] = {}
    orphans = 0
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        ion = str(resource.get(ION_ATTRIBUTE) or "").removeprefix("ions/")
        service_name = str(resource.get("service.name") or "")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if not ion:
                    orphans += 1
                    continue
                attrs = attributes(span.attributes)
                details = struct_pb2.Struct()
                details.update({k: v for k, v in attrs.items() if v is not None})
                trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
                event = event_pb2.Event(
                    ion=f"ions/{ion}",
                    event_id=f"span-{trace_id}-{span_id}",
                    hlc=_hlc(attrs, span.start_time_unix_nano),
                    time=_timestamp(span.start_time_unix_nano),
                    type="span",
                    trace_id=trace_id,
                    span_id=span_id,
                    span=event_pb2.SpanAttributes(
                        name=span.name,
                        parent_span_id=span.parent_span_id.hex(),
                        start_time=_timestamp(span.start_time_unix_nano),
                        end_time=_timestamp(span.end_time_unix_nano),
                        span_kind=int(span.kind),
                        status_code=int(span.status.code),
                        status_message=span.status.message,
                        attributes=details,
                        service_name=service_name,
                    ),
                )
                for key, field in PLACE_ATTRIBUTES.items():
                    if isinstance(attrs.get(key), str):
                        setattr(event, field, attrs[key])
                by_ion.setdefault(ion, []).append(event)
    return by_ion, orphans


class TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """The standard ``opentelemetry.proto.collector.trace.v1.TraceService``."""

    def __init__(self, service: RecorderService, batch_limit: int) -> None:
        self._service = service
        self._batch_limit = batch_limit

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        by_ion, rejected = span_events(request)
        problems: list[str] = []
        if rejected:
            problems.append(f"{rejected} span(s) had no {ION_ATTRIBUTE} resource attribute")
        for ion, events in by_ion.items():
            for start in range(0, len(events), self._batch_limit):
                batch = events[start : start + self._batch_limit]
                try:
                    result = self._service.append(f"ions/{ion}", batch)
                except errors.NotFound:
                    rejected += len(batch)
                    problems.append(f"ION {ion!r} does not exist")
                    continue
                if result.rejections:
                    rejected += len(result.rejections)
                    problems.extend(r.reason for r in result.rejections[:3])
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = "; ".join(dict.fromkeys(problems))
        return response
