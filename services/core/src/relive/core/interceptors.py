"""Server interceptors: errors to status codes (the one place; the status itself, with
google.rpc.ErrorInfo, is built by ``relive.errors``), bearer tokens to identities, and the
caller's HLC into this process's clock."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pymongo.errors
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from relive import errors, hlc
from relive.client.channel import PROJECT_METADATA
from relive.core import identity, names

log = logging.getLogger(__name__)


def to_status(error: errors.ReliveError) -> Any:
    """The grpc status a server aborts with for ``error`` (see ``relive.errors``)."""
    return rpc_status.to_status(errors.to_status_proto(error))


def _internal() -> Any:
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")
    )


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.ReliveError):
        context.abort_with_status(to_status(exc))
    if isinstance(exc, pymongo.errors.ConnectionFailure):
        # The store is down or unreachable: a retry may succeed, so say UNAVAILABLE.
        log.warning("store unavailable in %s: %s", method, exc)
        context.abort_with_status(
            to_status(
                errors.Unavailable(
                    "the store is unavailable; retry later", reason="STORE_UNAVAILABLE"
                )
            )
        )
    log.exception("unexpected error in %s", method, exc_info=exc)
    context.abort_with_status(_internal())


def _is_abort(context: grpc.ServicerContext) -> bool:
    """True when the handler already called context.abort, which raises a bare Exception."""
    return bool(getattr(getattr(context, "_state", None), "aborted", False))


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can refuse it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpc answers a request it cannot deserialize with INTERNAL; this defers the failure to
    the handler, which answers INVALID_ARGUMENT instead (a client's bug, not the server's)."""
    if deserializer is None:
        return None

    def inner(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, invalid UTF-8 in a string field, ...
            return _Malformed(e)

    return inner


def _parsed(request: Any, streaming: bool) -> Any:
    def check(message: Any) -> Any:
        if isinstance(message, _Malformed):
            raise errors.InvalidArgument(
                f"the request is not a valid protobuf message: {message.error}",
                field="request",
                reason="MALFORMED_REQUEST",
            )
        return message

    if not streaming:
        return check(request)
    return (check(message) for message in request)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps ReliveError to its status code; anything else is logged and answered INTERNAL."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        streaming = bool(handler.request_streaming)

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def inner(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return fn(_parsed(request, streaming), context)
                except Exception as exc:
                    if _is_abort(context):
                        raise
                    _abort(context, exc, method)

            return inner

        def wrap_stream(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def inner(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(_parsed(request, streaming), context)
                except Exception as exc:
                    if _is_abort(context):
                        raise
                    _abort(context, exc, method)

            return inner

        return _wrap_behaviors(handler, wrap_unary, wrap_stream, _tolerant)


def _wrap_behaviors(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    stream: Callable[[Callable[..., Iterator[Any]]], Callable[..., Iterator[Any]]],
    deserializer: Callable[[Any], Any] = lambda d: d,
) -> grpc.RpcMethodHandler:
    """Rebuilds ``handler`` with each behaviour wrapped; responses that stream use ``stream``.
    ``deserializer`` wraps the request deserializer."""
    request_deserializer = deserializer(handler.request_deserializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream), request_deserializer, handler.response_serializer
        )
    return handler


# Called without a token even when auth is on: orchestrators probe health, tools read the schema.
PUBLIC_SERVICE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


# A service identity names in PROJECT_METADATA the project it works for (its caller's): it
# then sees and creates only there. Everyone else's project comes from their token alone.


def _acting_for(who: identity.Identity, metadata: Any) -> identity.Identity:
    if not who.is_service:
        return who
    for key, value in metadata:
        if key == PROJECT_METADATA and isinstance(value, str) and value:
            names.check_id(value, PROJECT_METADATA)
            return who.acting_for(value)
    return who


class AuthInterceptor(grpc.ServerInterceptor):
    """Maps ``authorization: Bearer TOKEN`` to an Identity for the duration of the call."""

    def __init__(self, tokens: dict[str, identity.Identity]) -> None:
        self._tokens = tokens

    def _identify(self, context: grpc.ServicerContext) -> identity.Identity:
        metadata = context.invocation_metadata() or ()
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token.strip() in self._tokens:
                    return _acting_for(self._tokens[token.strip()], metadata)
                raise errors.Unauthenticated("the bearer token is not valid", field="authorization")
        raise errors.Unauthenticated(
            "this server needs a bearer token in the authorization metadata",
            field="authorization",
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_SERVICE_PREFIXES):
            return handler

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def inner(request: Any, context: grpc.ServicerContext) -> Any:
                with identity.acting_as(self._identify(context)):
                    return fn(request, context)

            return inner

        def stream(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def inner(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with identity.acting_as(self._identify(context)):
                    yield from fn(request, context)

            return inner

        return _wrap_behaviors(handler, unary, stream)


class HlcInterceptor(grpc.ServerInterceptor):
    """Moves this process's HLC past the caller's, read from the W3C baggage header."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "baggage" and isinstance(value, str):
                remote = _baggage_hlc(value)
                if remote is not None:
                    hlc.update(remote)
        return continuation(handler_call_details)


def _baggage_hlc(header: str) -> str | None:
    """The ``relive.hlc`` member of a W3C baggage header, if it is well formed."""
    for member in header.split(","):
        name, _, rest = member.partition("=")
        if name.strip() == hlc.BAGGAGE_KEY:
            value = rest.split(";", 1)[0].strip()
            try:
                hlc.Stamp.decode(value)
            except ValueError:
                return None
            return value
    return None
