"""The plumbing every service shares: error mapping, auth, TLS, health, graceful stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pymongo.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relive import errors
from relive.client.channel import connect_channel
from relive.core import identity
from relive.core.config import Config
from relive.core.serving import Server, build_server
from relive.errors import from_rpc_error

SERVICE = "relive.test.v1.Probe"


def _handlers(behaviour: dict[str, Any]) -> grpc.GenericRpcHandler:
    """A probe service whose methods take and return raw bytes, to exercise the plumbing."""

    def raise_(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise behaviour["error"]

    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        who = identity.current()
        return f"{who.user}/{who.project}/{who.role}".encode()

    def stream_then_fail(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        raise behaviour["error"]

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Raise": grpc.unary_unary_rpc_method_handler(raise_),
            "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami),
            "Stream": grpc.unary_stream_rpc_method_handler(stream_then_fail),
        },
    )


@pytest.fixture
def behaviour() -> dict[str, Any]:
    return {}


def _serve(config: Config, behaviour: dict[str, Any]) -> Server:
    server = build_server(
        config, lambda s: s.add_generic_rpc_handlers((_handlers(behaviour),)), [SERVICE]
    )
    server.start()
    return server


@pytest.fixture
def probe(behaviour: dict[str, Any]) -> Iterator[grpc.Channel]:
    server = _serve(Config(grace_s=0.1), behaviour)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    server.stop(0.1)


def _call(channel: grpc.Channel, method: str, **kw: Any) -> bytes:
    rpc = channel.unary_unary(f"/{SERVICE}/{method}", None, None)
    return bytes(rpc(b"", timeout=5, **kw))


def test_domain_error_becomes_its_code_with_error_info_and_field(
    probe: grpc.Channel, behaviour: dict[str, Any]
) -> None:
    behaviour["error"] = errors.InvalidArgument("page_size must not be negative", field="page_size")
    with pytest.raises(grpc.RpcError) as caught:
        _call(probe, "Raise")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    mapped = from_rpc_error(caught.value)
    assert mapped.field == "page_size"
    assert mapped.reason == "INVALID_ARGUMENT"
    assert mapped.metadata["field"] == "page_size"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound("ions/x not found"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("taken"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("drift"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.ResourceExhausted("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_every_domain_error_has_its_status_code(
    probe: grpc.Channel, behaviour: dict[str, Any], error: Exception, code: grpc.StatusCode
) -> None:
    behaviour["error"] = error
    with pytest.raises(grpc.RpcError) as caught:
        _call(probe, "Raise")
    assert caught.value.code() == code


def test_unexpected_error_is_internal_without_traceback(
    probe: grpc.Channel, behaviour: dict[str, Any]
) -> None:
    behaviour["error"] = ZeroDivisionError("secret detail in /srv/app.py line 3")
    with pytest.raises(grpc.RpcError) as caught:
        _call(probe, "Raise")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "secret" not in details and "Traceback" not in details and "ZeroDivision" not in details


def test_error_after_streaming_started_keeps_its_code(
    probe: grpc.Channel, behaviour: dict[str, Any]
) -> None:
    behaviour["error"] = errors.NotFound("gone while streaming")
    responses = iter(probe.unary_stream(f"/{SERVICE}/Stream", None, None)(b"", timeout=5))
    assert next(responses) == b"first"
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_store_outage_is_unavailable_so_clients_retry(
    probe: grpc.Channel, behaviour: dict[str, Any]
) -> None:
    behaviour["error"] = pymongo.errors.ServerSelectionTimeoutError("no servers")
    with pytest.raises(grpc.RpcError) as caught:
        _call(probe, "Raise")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_and_reflection_are_served(probe: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(probe)
    for service in ("", SERVICE):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(probe)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert SERVICE in names and "grpc.health.v1.Health" in names


def test_auth_needs_a_valid_bearer_token(tmp_path: Path, behaviour: dict[str, Any]) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n  tok-alice: {user: alice, project: churn, role: admin}\n"
        "  tok-bob: {user: bob, project: fraud}\n"
    )
    server = _serve(Config(auth=True, auth_tokens_file=tokens, grace_s=0.1), behaviour)
    target = f"127.0.0.1:{server.port}"
    try:
        with grpc.insecure_channel(target) as anonymous:
            with pytest.raises(grpc.RpcError) as caught:
                _call(anonymous, "WhoAmI")
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert from_rpc_error(caught.value).field == "authorization"
            # Health stays open for orchestrators.
            status = health_pb2_grpc.HealthStub(anonymous).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        with connect_channel(target, token="wrong", environ={}) as bad:
            with pytest.raises(grpc.RpcError) as caught:
                _call(bad, "WhoAmI")
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with connect_channel(target, token="tok-bob", environ={}) as bob:
            assert _call(bob, "WhoAmI") == b"bob/fraud/member"
        with connect_channel(target, token="tok-alice", environ={}) as alice:
            assert _call(alice, "WhoAmI") == b"alice/churn/admin"
    finally:
        server.stop(0.1)


def test_tls_serves_only_clients_that_trust_the_certificate(
    self_signed: tuple[Path, Path], behaviour: dict[str, Any]
) -> None:
    key, cert = self_signed
    server = _serve(Config(tls_cert=cert, tls_key=key, grace_s=0.1), behaviour)
    target = f"localhost:{server.port}"
    try:
        with connect_channel(target, tls_ca=cert, environ={}) as secure:
            assert _call(secure, "WhoAmI") == b"local/default/admin"
        with grpc.insecure_channel(target) as plain:
            with pytest.raises(grpc.RpcError) as caught:
                _call(plain, "WhoAmI")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0.1)


def test_a_callers_hlc_in_baggage_moves_the_servers_clock_past_it(probe: grpc.Channel) -> None:
    from relive import hlc

    ahead = hlc.Stamp(hlc.wall_ms() + 3_600_000, 7)  # a caller whose clock runs an hour ahead
    rpc = probe.unary_unary(f"/{SERVICE}/WhoAmI", None, None)
    rpc(b"", timeout=5, metadata=(("baggage", f"other=1,{hlc.BAGGAGE_KEY}={ahead.encode()}"),))
    assert hlc.now() > ahead


def test_sdk_channels_send_the_hlc_and_trace_context() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from relive import hlc

    seen: list[tuple[tuple[str, str], ...]] = []

    class Spy(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            seen.append(tuple(details.invocation_metadata))
            return continuation(details)

    server = build_server(
        Config(grace_s=0.1),
        lambda s: s.add_generic_rpc_handlers((_handlers({}),)),
        [SERVICE],
        interceptors=[Spy()],
    )
    server.start()
    tracer = TracerProvider().get_tracer("test")
    try:
        with connect_channel(f"127.0.0.1:{server.port}", environ={}) as channel:
            before = hlc.now()
            with tracer.start_as_current_span("caller") as span:
                _call(channel, "WhoAmI")
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        server.stop(0.1)
    metadata = dict(seen[-1])
    assert trace_id in metadata["traceparent"]
    sent = hlc.Stamp.decode(metadata["baggage"].split(f"{hlc.BAGGAGE_KEY}=")[1].split(",")[0])
    assert sent > before
