# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py
"""Traces in the timeline: OTLP from any OpenTelemetry SDK, and relive's own spans."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
from test_recorder_support import create_ion

from relive.client.recorder import RecorderClient
from relive.core.serving import Server
from relive.executor.v1 import executor_pb2 as pb
from relive.recorder.v1 import event_pb2
from tests.executor_fixtures import InProcessStack, ray_session, stack  # noqa: F401

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
    registry_channel: grpc.Channel,
    recorder_server: Server,
    recorder_channel: grpc.Channel,
    tmp_path: Path,
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

    # The export's spans.otlp.json reads back with the OTLP classes, parents intact.
    import tarfile

    from google.protobuf import json_format
    from opentelemetry.proto.trace.v1 import trace_pb2

    start = min(e.span.start_time.ToDatetime(dt.UTC) for e in spans) - dt.timedelta(seconds=1)
    capture = client.create_capture(ion, "traced", start, start + dt.timedelta(minutes=5))
    path = tmp_path / "traced.tar.gz"
    client.export_capture(capture.name, path)
    with tarfile.open(path) as tar:
        member = tar.extractfile("spans.otlp.json")
        assert member is not None
        otlp = json.loads(member.read())
    # OTLP JSON writes ids as hex where protobuf's JSON mapping has base64 (OTLP spec).
    for rs in otlp["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    data = json_format.ParseDict(otlp, trace_pb2.TracesData())
    exported = {
        s.name: s
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.trace_id.hex() == trace_id
    }
    assert set(exported) == set(by_name)
    for name, e in by_name.items():
        assert exported[name].span_id.hex() == e.span_id
        assert exported[name].parent_span_id.hex() == e.span.parent_span_id


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

    from relive.client.sink import EventSink

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


def test_a_run_is_one_trace_whose_span_tree_matches_the_ion(
    stack: InProcessStack, tmp_path: Path
) -> None:
    from relive.cli.trace import build_tree

    script = tmp_path / "component.py"
    script.write_text(
        "import json, os\n"
        "trace = os.environ['TRACEPARENT'].split('-')\n"
        "print(json.dumps({'stat': 'trace_seen', 'value': 1}))\n"
        "print('traceparent', os.environ['TRACEPARENT'])\n"
    )
    path = tmp_path / "traced.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: traced-run
        nodes:
          train:
            pipeline:
              components:
                load: {{call: examples.patterns.steps:load, params: {{dataset: iris}}}}
                fit:
                  call: examples.patterns.steps:fit
                  after: [load]
                  params: {{model: forest, n_estimators: 5}}
              outputs: {{model: fit}}
          shell:
            pipeline:
              components:
                run: {{command: ["{sys.executable}", "{script}"]}}
        edges:
          - {{from: train, to: shell, carries: model}}
        """)
    )
    ion = stack.register(path)
    run = stack.run_to_end(ion, seed=5)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error_message
    events = list(stack.recorder.list_events(ion, runs=[run.name]))
    # Every span and every event of the run shares the run's one trace id.
    assert run.trace_id and {e.trace_id for e in events} == {run.trace_id}
    roots = build_tree([e for e in events if e.trace_id == run.trace_id])
    assert [r.label.split(" ")[0:2] for r in roots] == [["run", run.name]]
    nodes = {c.span.span.name: c for c in roots[0].children if c.span is not None}
    assert all(c.span is not None for n in nodes.values() for c in n.children)
    assert set(nodes) == {"node train", "node shell"}
    components = {n: {c.label.split(" ")[1] for c in nodes[n].children} for n in nodes}
    assert components == {
        "node train": {"train.load", "train.fit"},
        "node shell": {"shell.run"},
    }
    # The command component got the component span as its TRACEPARENT parent.
    shell_run = next(c for c in nodes["node shell"].children)
    printed = [e.log.message for e in shell_run.events if e.type == "log"]
    assert any(f"00-{run.trace_id}-{shell_run.span_id}-01" in line for line in printed)
    assert any(e.type == "stat" and e.stat.name == "trace_seen" for e in shell_run.events)


class _SlowExporter:
    """A real in-memory exporter behind a slow link, like a busy collector."""

    def __init__(self, delay_s: float, fail: bool = False) -> None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.inner = InMemorySpanExporter()
        self.delay_s = delay_s
        self.fail = fail

    def export(self, spans: object) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        time.sleep(self.delay_s)
        if self.fail:
            return SpanExportResult.FAILURE
        return self.inner.export(spans)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def test_a_slow_exporter_slows_the_producer_instead_of_losing_spans() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from relive.tracing import BackpressureSpanProcessor

    exporter = _SlowExporter(delay_s=0.01)
    processor = BackpressureSpanProcessor(exporter, max_queue=64, max_batch=16)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(2000):  # 30x the queue: the default BatchSpanProcessor would drop most
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert processor.force_flush(60_000)
    assert len(exporter.inner.get_finished_spans()) == 2000
    assert processor.dropped == 0
    provider.shutdown()


def test_spans_that_cannot_be_exported_are_counted_and_reported() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from relive.tracing import BackpressureSpanProcessor

    reported: list[int] = []
    processor = BackpressureSpanProcessor(
        _SlowExporter(delay_s=0, fail=True),  # type: ignore[arg-type]
        export_attempts=2,
        on_drop=reported.append,
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(50):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert processor.force_flush(30_000)
    assert processor.dropped == 50 and sum(reported) == 50
    provider.shutdown()
