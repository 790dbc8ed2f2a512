"""Wires the recorder: store, registry link, service, servicer, retention sweeps, serving."""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from relive.core.config import Config
from relive.core.serving import Server, build_server, run_service
from relive.recorder.export import Exporter
from relive.recorder.importer import Importer
from relive.recorder.otlp import TraceServicer
from relive.recorder.registry_link import RegistryLink
from relive.recorder.service import RecorderService
from relive.recorder.servicer import RecorderServicer
from relive.recorder.store import Store
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = recorder_pb2.DESCRIPTOR.services_by_name["RecorderService"].full_name
OTLP_SERVICE_NAME = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


class RetentionSweeper:
    """Runs a retention sweep of every ION every ``interval_s`` seconds, on its own thread."""

    def __init__(self, service: RecorderService, interval_s: float) -> None:
        self._service = service
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention-sweeper", daemon=True)

    def start(self) -> None:
        if self._interval_s > 0:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._service.sweep_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def _serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


class _RawListEvents:
    """Registers the generated handlers, except that ListEvents may answer with the bytes of
    a serialized ListEventsResponse (concatenated stored buckets) instead of a message."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def _patch(self, handlers: dict[str, grpc.RpcMethodHandler]) -> dict[str, Any]:
        handlers = dict(handlers)
        h = handlers["ListEvents"]
        assert h.unary_unary is not None
        handlers["ListEvents"] = grpc.unary_unary_rpc_method_handler(
            h.unary_unary,
            request_deserializer=h.request_deserializer,
            response_serializer=_serialize,
        )
        return handlers

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the registered handlers below serve every method

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        patched = self._patch(handlers)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, patched),)
        )
        self._server.add_registered_method_handlers(service, patched)  # type: ignore[attr-defined]


def create_server(config: Config) -> tuple[Server, int]:
    """A recorder server bound to ``config.port`` (0: any free port); call ``start()`` on it."""
    store = Store(config)
    registry = (
        RegistryLink(config.registry_endpoint, token=config.service_token, tls_ca=config.trusted_ca)
        if config.registry_endpoint
        else None
    )
    if registry is None:
        log.warning("no registry endpoint: the recorder accepts events for any ION")
    elif config.auth and not config.service_token:
        log.warning(
            "RELIVE_AUTH is on but RELIVE_SERVICE_TOKEN is not set: the registry will refuse "
            "the recorder's lookups"
        )
    service = RecorderService(config, store, registry)
    exporter = Exporter(config, service, registry)
    importer = Importer(config, service, registry)
    servicer = RecorderServicer(service, exporter, importer)

    def register(server: grpc.Server) -> None:
        recorder_pb2_grpc.add_RecorderServiceServicer_to_server(
            servicer,
            _RawListEvents(server),  # type: ignore[arg-type]
        )
        # OTLP/gRPC: any OpenTelemetry SDK exports spans here, into the timeline.
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            TraceServicer(service, config.max_batch_events), server
        )

    server = build_server(config, register, [SERVICE_NAME, OTLP_SERVICE_NAME])
    sweeper = RetentionSweeper(service, config.retention_interval_s)
    sweeper.start()
    server.add_stop_hook(store.close)
    if registry is not None:
        server.add_stop_hook(registry.close)
    server.add_stop_hook(sweeper.stop)
    return server, server.port


if __name__ == "__main__":
    run_service("recorder", lambda c: create_server(c)[0])
