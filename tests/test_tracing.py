"""Traces in the timeline: OTLP from any OpenTelemetry SDK, and relive's own spans."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import grpc
from test_recorder_support import create_ion

from relive.client.recorder import RecorderClient
from relive.core.serving import Server
from relive.recorder.v1 import event_pb2

FOREIGN_CLIENT = textwrap.dedent(
    """
    # A program that knows nothing of relive: the official OTLP exporter, configured only
    # by OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_RESOURCE_ATTRIBUTES.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
    tracer = provider.get_tracer("foreign")
    with tracer.start_as_current_span("request") as root:
        root.set_attribute("relive.run", "ions/ION/runs/r1")
        with tracer.start_as_current_span("fetch-features"):
            with tracer.start_as_current_span("query-store") as leaf:
                leaf.set_attribute("rows", 42)
        with tracer.start_as_current_span("score"):
            pass
    provider.shutdown()
    print(format(root.get_span_context().trace_id, "032x"))
    """
)


def test_spans_from_a_foreign_otel_client_land_with_their_parents(
    registry_channel: grpc.Channel, recorder_server: Server, recorder_channel: grpc.Channel
) -> None:
    ion = create_ion(registry_channel, "traced")
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{recorder_server.port}",
        "OTEL_RESOURCE_ATTRIBUTES": f"relive.ion={ion},service.name=foreign-scorer",
    }
    done = subprocess.run(
        [sys.executable, "-c", FOREIGN_CLIENT.replace("ION", ion)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    trace_id = done.stdout.strip().splitlines()[-1]

    client = RecorderClient(recorder_channel)
    deadline = time.monotonic() + 10
    spans: list[event_pb2.Event] = []
    while time.monotonic() < deadline and len(spans) < 4:
        spans = list(client.list_events(ion, trace_id=trace_id))
        time.sleep(0.1)
    by_name = {e.span.name: e for e in spans}
    assert set(by_name) == {"request", "fetch-features", "query-store", "score"}
    assert all(e.kind == event_pb2.EVENT_KIND_SPAN and e.trace_id == trace_id for e in spans)
    parent_of = {name: e.span.parent_span_id for name, e in by_name.items()}
    assert parent_of["request"] == ""
    assert parent_of["fetch-features"] == by_name["request"].span_id
    assert parent_of["score"] == by_name["request"].span_id
    assert parent_of["query-store"] == by_name["fetch-features"].span_id
    assert by_name["query-store"].span.attributes["rows"] == 42
    assert by_name["request"].run == f"ions/{ion}/runs/r1"
    assert by_name["request"].span.service_name == "foreign-scorer"
    # Causal order: a parent starts before its children.
    order = [e.span.name for e in spans]
    assert order.index("request") < order.index("fetch-features") < order.index("query-store")


def test_spans_without_an_ion_are_reported_not_dropped_silently(
    recorder_server: Server,
) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.trace.v1 import trace_pb2

    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        spans=[
                            trace_pb2.Span(
                                trace_id=os.urandom(16),
                                span_id=os.urandom(8),
                                name="lost",
                                start_time_unix_nano=1,
                                end_time_unix_nano=2,
                            )
                        ]
                    )
                ]
            )
        ]
    )
    with grpc.insecure_channel(f"127.0.0.1:{recorder_server.port}") as channel:
        response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    assert response.partial_success.rejected_spans == 1
    assert "relive.ion" in response.partial_success.error_message


def test_events_recorded_inside_a_span_carry_it_without_help(
    registry_channel: grpc.Channel, recorder_server: Server, recorder_channel: grpc.Channel
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from relive.client.recorder import EventSink

    ion = create_ion(registry_channel, "carried")
    tracer = TracerProvider().get_tracer("test")
    with EventSink(f"127.0.0.1:{recorder_server.port}", ion) as sink:
        sink.log_stat("outside", 1.0)
        with tracer.start_as_current_span("score") as span:
            sink.log_stat("inside", 2.0)
            ctx = span.get_span_context()
    events = {e.stat.name: e for e in RecorderClient(recorder_channel).list_events(ion)}
    assert events["inside"].trace_id == format(ctx.trace_id, "032x")
    assert events["inside"].span_id == format(ctx.span_id, "016x")
    assert events["outside"].trace_id == "" and events["outside"].span_id == ""
