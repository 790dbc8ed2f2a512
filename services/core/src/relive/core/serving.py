"""Builds and runs a gRPC server: interceptors, health, reflection, TLS, graceful stop."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from relive.core import identity
from relive.core.config import Config
from relive.core.interceptors import AuthInterceptor, ErrorInterceptor, HlcInterceptor
from relive.errors import FailedPrecondition

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


class Server:
    """A gRPC server with its health servicer, so stopping can announce NOT_SERVING first."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        on_stop: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.grpc_server = grpc_server
        self.port = port
        self.health = health_servicer
        self._on_stop = list(on_stop)
        self._stopped = threading.Event()

    def start(self) -> None:
        self.grpc_server.start()

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        self._on_stop.append(hook)

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuses new calls, lets running ones finish within ``grace``, then runs the hooks."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        for hook in reversed(self._on_stop):
            try:
                hook()
            except Exception:
                log.exception("stop hook failed")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def tracing_interceptor() -> grpc.ServerInterceptor:
    """OpenTelemetry's server interceptor on the global tracer provider; health and reflection
    calls make no spans."""
    from opentelemetry.instrumentation.grpc import filters, server_interceptor

    skip = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
    return server_interceptor(filter_=filters.negate(skip))


def build_server(
    config: Config,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> Server:
    """Wires a server; the error interceptor is outermost so it sees every other one's errors."""
    chain: list[grpc.ServerInterceptor] = [
        ErrorInterceptor(),
        tracing_interceptor(),
        HlcInterceptor(),
    ]
    if config.auth:
        if config.auth_tokens_file is None:
            raise FailedPrecondition(
                "RELIVE_AUTH is on but RELIVE_AUTH_TOKENS_FILE is not set",
                field="RELIVE_AUTH_TOKENS_FILE",
            )
        chain.append(AuthInterceptor(identity.load_tokens(config.auth_tokens_file)))
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        interceptors=[*chain, *interceptors],
        options=SERVER_OPTIONS,
    )
    register(grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    for name in (*service_names, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], grpc_server
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert and config.tls_key:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
            root_certificates=config.tls_client_ca.read_bytes() if config.tls_client_ca else None,
            require_client_auth=config.tls_client_ca is not None,
        )
        port = grpc_server.add_secure_port(address, credentials)
    else:
        port = grpc_server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot listen on {address}")
    return Server(grpc_server, port, health_servicer)


def run_service(name: str, create: Callable[[Config], Server]) -> None:
    """Entry point of ``python -m relive.<service>.server``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog=f"relive-{name}")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (0: any)")
    parser.add_argument("--port-file", type=Path, help="write {port, pid} here once serving")
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("RELIVE_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    config = Config.from_env()
    if args.port is not None:
        config = config.with_(port=args.port)
    server = create(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("%s serving on %s:%d", name, config.host, server.port)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": server.port, "pid": os.getpid()}))
        tmp.replace(args.port_file)
    stop.wait()
    log.info("%s stopping", name)
    server.stop(config.grace_s)
