"""The cost of tracing: per RPC, and on a run of 100 components. Prints one JSON object.

Traced and untraced runs alternate in one process. Tracing is switched by the sampler of the
one global tracer provider (OpenTelemetry allows one per process): sampled spans are made,
exported over OTLP to the recorder through the SDK's backpressure processor, and land in the
timeline; unsampled ones cost only the context propagation that every call pays anyway.

The 100-component run is a stand-in for the executor's loop: each component fits a small
scikit-learn model in its own span and records three stats through the EventSink.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recorder_stack import RecorderStack

from relive.client.channel import connect_channel
from relive.client.sink import EventSink
from relive.registry.v1 import registry_pb2, registry_pb2_grpc
from relive.tracing import make_tracer_provider


class Switch(Sampler):
    """Samples everything while on, nothing while off."""

    on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP)

    def get_description(self) -> str:
        return "relive-bench-switch"


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 60 s")
    args = parser.parse_args()
    rpcs = 300 if args.quick else 2000
    components = 100
    rounds = 3 if args.quick else 5

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    switch = Switch()
    with RecorderStack() as stack:
        ion = stack.create_ion("tracing-bench")
        provider: TracerProvider = make_tracer_provider(
            "relive-bench", recorder_endpoint=stack.recorder_target, ion=ion
        )
        provider.sampler = switch
        trace.set_tracer_provider(provider)
        tracer = trace.get_tracer("bench")
        assert stack.registry is not None
        channel = connect_channel(f"127.0.0.1:{stack.registry.port}", environ={})
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.GetIonRequest(name=f"ions/{ion}")
        sink = EventSink(stack.recorder_target, ion)

        def calls() -> None:
            for _ in range(rpcs):
                stub.GetIon(request, timeout=10)

        def run() -> None:
            with tracer.start_as_current_span("run"):
                for i in range(components):
                    with tracer.start_as_current_span(f"component-{i}"):
                        model = LogisticRegression(max_iter=200).fit(x, y)
                        sink.log_stat("accuracy", float(model.score(x, y)), step=i)
                        sink.log_stat("n_iter", float(model.n_iter_[0]), step=i)
                        sink.log_stat("rows", float(len(x)), step=i)
            sink.flush()

        calls()  # warm up channels, caches and the JIT-less interpreter alike
        results: dict[str, dict[bool, list[float]]] = {"rpc": {True: [], False: []}}
        results["run"] = {True: [], False: []}
        for r in range(rounds):
            for on in (r % 2 == 0, r % 2 != 0):
                switch.on = on
                # Each phase is timed with the previous phase's spans already exported, so
                # the run does not also pay for exporting the RPC phase's thousands of spans.
                results["rpc"][on].append(timed(calls) / rpcs)
                provider.force_flush()
                results["run"][on].append(timed(run))
                provider.force_flush()
        switch.on = False
        sink.close()
        channel.close()
        processor = provider._active_span_processor._span_processors[0]
        dropped = getattr(processor, "dropped", None)
        exported = getattr(processor, "exported", None)
        provider.shutdown()

    def med(key: str, on: bool) -> float:
        return statistics.median(results[key][on])

    rpc_traced, rpc_plain = med("rpc", True), med("rpc", False)
    run_traced, run_plain = med("run", True), med("run", False)
    print(
        json.dumps(
            {
                "overhead_ratio": round(run_traced / run_plain, 3),
                "run_components": components,
                "run_traced_s": round(run_traced, 3),
                "run_untraced_s": round(run_plain, 3),
                "rpc_overhead_ratio": round(rpc_traced / rpc_plain, 3),
                "rpc_traced_us": round(rpc_traced * 1e6, 1),
                "rpc_untraced_us": round(rpc_plain * 1e6, 1),
                "rpc_overhead_us": round((rpc_traced - rpc_plain) * 1e6, 1),
                "spans_exported": exported,
                "spans_dropped": dropped,
                "rounds": rounds,
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
