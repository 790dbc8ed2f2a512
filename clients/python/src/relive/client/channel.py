"""Where the services are, channels to them, and the one retry policy for every call."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from relive.errors import ReliveError, from_rpc_error

T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
DEFAULT_TIMEOUT_S = 30.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Endpoints:
    registry: str
    recorder: str
    executor: str
    mongodb: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("RELIVE_DATA_DIR") or ".relive")


def load_endpoints(environ: Mapping[str, str] | None = None) -> Endpoints:
    """Finds the services: RELIVE_ENDPOINT (one host:port for all, or an endpoints file),
    RELIVE_<SERVICE>_ENDPOINT for each, or else ``endpoints.json`` in the data dir."""
    env = os.environ if environ is None else environ
    found: dict[str, str] = {}
    endpoint = env.get("RELIVE_ENDPOINT", "")
    if endpoint.endswith(".json"):
        found.update(json.loads(Path(endpoint).read_text()))
    elif endpoint:
        found.update(registry=endpoint, recorder=endpoint, executor=endpoint)
    else:
        path = data_dir(env) / "endpoints.json"
        if path.exists():
            found.update(json.loads(path.read_text()))
    for service in ("registry", "recorder", "executor"):
        if value := env.get(f"RELIVE_{service.upper()}_ENDPOINT"):
            found[service] = value
    missing = [s for s in ("registry", "recorder", "executor") if not found.get(s)]
    if missing:
        raise ReliveError(
            "cannot find the relive services: run `relive up` (which writes "
            f"{data_dir(env) / 'endpoints.json'}) or set RELIVE_ENDPOINT",
            field="RELIVE_ENDPOINT",
        )
    return Endpoints(
        registry=found["registry"],
        recorder=found["recorder"],
        executor=found["executor"],
        mongodb=found.get("mongodb", ""),
    )


class _BearerAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context: Any, callback: Any) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


def connect_channel(
    target: str,
    *,
    token: str | None = None,
    tls_ca: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> grpc.Channel:
    """A channel to ``target``; RELIVE_TOKEN and RELIVE_TLS_CA are read when not given."""
    env = os.environ if environ is None else environ
    token = token if token is not None else env.get("RELIVE_TOKEN") or None
    ca_path = tls_ca or (Path(env["RELIVE_TLS_CA"]) if env.get("RELIVE_TLS_CA") else None)
    interceptors: list[Any] = []
    if ca_path is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca_path.read_bytes())
        if token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_BearerAuth(token))
            )
        channel = grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        if token:
            interceptors.append(_MetadataInterceptor((("authorization", f"Bearer {token}"),)))
    return grpc.intercept_channel(_traced(channel), _HlcBaggage(), *interceptors)


def _traced(channel: grpc.Channel) -> grpc.Channel:
    """OpenTelemetry's client interceptor: calls join the caller's trace, and its context
    (with the HLC in baggage) travels to the server."""
    from opentelemetry.instrumentation.grpc import client_interceptor, filters, intercept_channel

    interceptor = client_interceptor(filter_=filters.negate(filters.health_check()))
    return intercept_channel(channel, interceptor)


class _HlcBaggage(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Puts this process's HLC in the call's baggage, so the server's clock moves past it and
    whatever the server records after the call sorts after what this process did before it."""

    def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        from opentelemetry import baggage
        from opentelemetry import context as otel_context

        from relive import hlc

        ctx = baggage.set_baggage(hlc.BAGGAGE_KEY, hlc.now().encode())
        token = otel_context.attach(ctx)
        try:
            return continuation(details, request)
        finally:
            otel_context.detach(token)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return self._call(continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return self._call(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._call(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._call(continuation, client_call_details, request_iterator)


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds a bearer token on plaintext channels (call credentials need TLS)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        merged = tuple(details.metadata or ()) + self._metadata
        return details._replace(metadata=merged)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, iterator: Any) -> Any:
        return continuation(self._details(details), iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, iterator: Any) -> Any:
        return continuation(self._details(details), iterator)


def call(
    fn: Callable[..., T],
    request: Any,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    attempts: int = 4,
    base_delay: float = 0.1,
    idempotent: bool = True,
) -> T:
    """One unary call with a deadline; retries UNAVAILABLE and ABORTED with jittered backoff.

    Non-idempotent calls retry only UNAVAILABLE before anything was sent is unknowable, so
    callers make creates idempotent with a request_id instead of turning retries off.
    """
    for attempt in range(attempts):
        try:
            return fn(request, timeout=timeout)
        except grpc.RpcError as e:
            retry = idempotent and e.code() in RETRYABLE and attempt + 1 < attempts
            if not retry:
                raise from_rpc_error(e) from e
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
