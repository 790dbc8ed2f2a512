"""Where the services are, channels to them, and the one retry policy for every call."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc

from relive.errors import ReliveError, from_rpc_error

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
# Where `relive up` keeps its data and endpoints file, unless RELIVE_DATA_DIR says otherwise.
DEFAULT_DATA_DIR = ".relive"
ENDPOINTS_FILE = "endpoints.json"
# The call metadata in which a service token names the project it works for (docs/auth.md).
PROJECT_METADATA = "relive-project"
# Calls that must not be sent twice: a second approval of a gate is refused, not merged.
NOT_RETRIED = ("relive.executor.v1.ExecutorService/SubmitApproval",)


def retry_service_config(
    *,
    max_attempts: int = 5,
    initial_backoff_s: float = 0.1,
    max_backoff_s: float = 2.0,
    not_retried: tuple[str, ...] = NOT_RETRIED,
) -> str:
    """gRPC's service config (JSON) that retries UNAVAILABLE, and only that, with jittered
    exponential backoff, for every method except ``not_retried`` ("package.Service/Method").
    gRPC retries inside the channel, also the first messages of a stream, and caps
    maxAttempts at 5; every call still has its own deadline."""
    retry = {
        "maxAttempts": max_attempts,
        "initialBackoff": f"{initial_backoff_s}s",
        "maxBackoff": f"{max_backoff_s}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = [
        {"service": service, "method": method}
        for service, _, method in (name.partition("/") for name in not_retried)
    ]
    configs: list[dict[str, Any]] = [{"name": [{}], "retryPolicy": retry}]
    if names:
        configs.append({"name": names})
    return json.dumps({"methodConfig": configs})


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", retry_service_config()),
]


def project_metadata(project: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that says which project a service token works for on a call (the
    services ignore it from anyone else); empty for no project."""
    return ((PROJECT_METADATA, project),) if project else ()


@dataclass(frozen=True)
class Endpoints:
    registry: str
    recorder: str
    executor: str
    mongodb: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data dir when none is given: RELIVE_DATA_DIR, or ``.relive`` under the current
    directory. The one place this default is read."""
    env = os.environ if environ is None else environ
    return Path(env.get("RELIVE_DATA_DIR") or DEFAULT_DATA_DIR)


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
        path = default_data_dir(env) / ENDPOINTS_FILE
        if path.exists():
            found.update(json.loads(path.read_text()))
    for service in ("registry", "recorder", "executor"):
        if value := env.get(f"RELIVE_{service.upper()}_ENDPOINT"):
            found[service] = value
    missing = [s for s in ("registry", "recorder", "executor") if not found.get(s)]
    if missing:
        raise ReliveError(
            "cannot find the relive services: run `relive up` (which writes "
            f"{default_data_dir(env) / ENDPOINTS_FILE}) or set RELIVE_ENDPOINT",
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
    project: str | None = None,
    tls_ca: Path | None = None,
    environ: Mapping[str, str] | None = None,
    traced: bool = True,
) -> grpc.Channel:
    """A channel to ``target``; RELIVE_TOKEN, RELIVE_PROJECT and RELIVE_TLS_CA are read when
    not given. ``project`` is the project a service token works for (see docs/auth.md); the
    services ignore it from anyone else. ``traced`` calls make CLIENT spans and carry the
    trace context and this process's HLC; the recorder's own lookups are not traced, or
    the spans it takes in would make spans of their own."""
    env = os.environ if environ is None else environ
    token = token if token is not None else env.get("RELIVE_TOKEN") or None
    project = project if project is not None else env.get("RELIVE_PROJECT") or None
    ca_path = tls_ca or (Path(env["RELIVE_TLS_CA"]) if env.get("RELIVE_TLS_CA") else None)
    metadata = list(project_metadata(project))
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
            metadata.append(("authorization", f"Bearer {token}"))
    interceptors: list[Any] = [_TraceContext()] if traced else []
    if metadata:
        interceptors.append(_MetadataInterceptor(tuple(metadata)))
    return grpc.intercept_channel(channel, *interceptors)


@dataclass(frozen=True)
class Access:
    """How to reach the services, and as whom: a token, the project a service token works
    for, and the CA to trust. Plain strings, so that it rides a Ray task and a subprocess's
    environment. Empty fields fall back to RELIVE_TOKEN, RELIVE_PROJECT and RELIVE_TLS_CA."""

    token: str = field(default="", repr=False)
    project: str = ""
    tls_ca: str = ""

    def connect(self, target: str, *, traced: bool = True) -> grpc.Channel:
        return connect_channel(
            target,
            token=self.token or None,
            project=self.project or None,
            tls_ca=Path(self.tls_ca) if self.tls_ca else None,
            traced=traced,
        )

    def for_project(self, project: str) -> Access:
        return replace(self, project=project)

    def environ(self) -> dict[str, str]:
        """The same access for a subprocess (any language's client reads these variables)."""
        pairs = (
            ("RELIVE_TOKEN", self.token),
            ("RELIVE_PROJECT", self.project),
            ("RELIVE_TLS_CA", self.tls_ca),
        )
        return {k: v for k, v in pairs if v}


class _TraceContext(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A CLIENT span per call, with the trace context and this process's HLC (as baggage)
    injected into the call's metadata, so the server's span and clock follow the caller.

    OpenTelemetry's own client interceptor turns streaming calls into plain generators, which
    loses ``cancel()`` that live tails need; this one keeps grpc's call objects and ends the
    span from ``add_done_callback``. Health checks make no spans.
    """

    def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        from opentelemetry import baggage, propagate, trace
        from opentelemetry import context as otel_context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from relive import hlc

        method = str(details.method)
        ctx = baggage.set_baggage(hlc.BAGGAGE_KEY, hlc.now().encode())
        span = None
        if not method.startswith("/grpc.health."):
            tracer = trace.get_tracer("relive.client")
            span = tracer.start_span(
                method.lstrip("/"),
                context=ctx,
                kind=SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.method": method},
            )
            ctx = trace.set_span_in_context(span, ctx)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        metadata = tuple(details.metadata or ()) + tuple(carrier.items())
        token = otel_context.attach(ctx)
        try:
            call = continuation(details._replace(metadata=metadata), request)
        except Exception:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR))
                span.end()
            raise
        finally:
            otel_context.detach(token)
        if span is not None:

            def done(finished: Any) -> None:
                code = finished.code()
                if code is not None and code != grpc.StatusCode.OK:
                    span.set_status(Status(StatusCode.ERROR, str(code.name)))
                span.end()

            call.add_done_callback(done)
        return call

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
    """Adds metadata to every call: the project, and the bearer token on plaintext channels
    (call credentials need TLS)."""

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


def with_project(channel: grpc.Channel, project: str | None) -> grpc.Channel:
    """``channel`` with ``project_metadata(project)`` on every call, over the same connection
    (close ``channel``, not the result)."""
    if not project:
        return channel
    return grpc.intercept_channel(channel, _MetadataInterceptor(project_metadata(project)))


def call(fn: Callable[..., T], request: Any, *, timeout: float = DEFAULT_TIMEOUT_S) -> T:
    """One call with a deadline, failing with the ``relive.errors`` tree. Retries of
    UNAVAILABLE happen inside the channel (see ``retry_service_config``)."""
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as e:
        raise from_rpc_error(e) from e
