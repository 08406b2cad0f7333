"""The chassis around every RPC of our services: identity, error mapping, metrics, a
server span and an access log line.

Servicers raise ``ServiceError`` subclasses; this turns them into rich statuses. Any other
exception becomes INTERNAL with a generic message (the traceback goes to the log, never to
the client).

Each method handler is wrapped once, when its service is registered, with its metric
series, span name and span attributes bound up front. A ``grpc.aio`` server interceptor
would do the same per call, at the price of several coroutines and a handler lookup on
every call (~13 % of a bare unary call's server CPU, docs/benchmarks.md); for the same
reason the server span is made here rather than by opentelemetry-instrumentation-grpc's
server interceptor, and named and attributed the way that one does, so client and server
spans match. Health checking and reflection are registered unwrapped, so probes and
``grpcurl list`` work without a key and stay out of metrics, traces and the access log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from grpc.aio import AbortError
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract
from opentelemetry.trace import (
    Span,
    SpanKind,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)

from services.common.auth import Authenticator, current_user, set_current_user
from services.common.errors import Internal, ServiceError
from services.common.logs import ACCESS_LOGGER, redact
from services.common.metrics import MethodMetrics, grpc_type, split_method
from services.common.tracing import metadata_getter

log = logging.getLogger("gensearch.rpc")
# One line per RPC (method, code, duration, user, trace id) at INFO: off with
# GENSEARCH_LOG_LEVEL=WARNING, or by raising this logger's level alone.
access_log = logging.getLogger(ACCESS_LOGGER)

# Codes that make a SERVER span an error (OpenTelemetry's RPC semantic conventions); the
# others are the caller's mistake, not the server's.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# What _begin hands to _end: start time, server span and the context token to detach.
Begun = tuple[float, Span | None, object]


class ChassisRegistry:
    """Stands in for the ``grpc.aio.Server`` that generated ``add_*_to_server`` functions
    register with: it wraps every method handler, then registers it on the real server."""

    def __init__(
        self,
        server: grpc.aio.Server,
        auth: Authenticator,
        server_name: str,
        tracer: Tracer | None = None,
    ) -> None:
        self._server = server
        self._auth = auth
        self._server_name = server_name
        self._tracer = tracer
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = _MethodWrapper(
                method, handler, self._auth, self._server_name, self._tracer
            ).wrap(handler)
            self._wrapped[method] = wrapped
        return wrapped

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service, {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self) for h in handlers))


class _WrappedGeneric(grpc.GenericRpcHandler):
    # Calls that core did not match to a registered method come this way.
    def __init__(self, inner: grpc.GenericRpcHandler, registry: ChassisRegistry) -> None:
        self._inner = inner
        self._registry = registry

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._registry.wrap(handler_call_details.method, handler)  # type: ignore[attr-defined]


class _MethodWrapper:
    def __init__(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        auth: Authenticator,
        server: str,
        tracer: Tracer | None,
    ) -> None:
        service, name = split_method(method)
        self.method = method
        self.auth = auth
        kind = grpc_type(handler.request_streaming, handler.response_streaming)
        self.metrics = MethodMetrics(server, kind, service, name)
        self.tracer = tracer
        self.span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def _begin(self, context: grpc.aio.ServicerContext) -> Begun:
        self.metrics.start()
        span = token = None
        if self.tracer is not None:
            # The caller's W3C traceparent, if any, is the parent.
            parent = extract(context.invocation_metadata() or (), getter=metadata_getter)
            span = self.tracer.start_span(
                self.method, parent, SpanKind.SERVER, self.span_attributes
            )
            token = otel_context.attach(set_span_in_context(span, parent))
        return time.perf_counter(), span, token

    def _end(
        self, context: grpc.aio.ServicerContext, begun: Begun, code: grpc.StatusCode | None
    ) -> None:
        started, span, token = begun
        seconds = time.perf_counter() - started
        if code is None:
            # The servicer may have aborted or set a code itself.
            code = context.code() or grpc.StatusCode.OK
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.UNKNOWN
        self.metrics.handled(code, seconds)
        if access_log.isEnabledFor(logging.INFO):
            # While the span is still current, so the line carries its ids.
            access_log.info(
                "%s %s",
                self.method,
                code.name,
                extra={
                    "method": self.method,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "user": current_user(),
                },
            )
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_ERRORS:
                span.set_status(StatusCode.ERROR, code.name)
            span.end()
            otel_context.detach(token)  # type: ignore[arg-type]

    def _fail(self, err: Exception) -> grpc.Status:
        if isinstance(err, ServiceError):
            if err.code == grpc.StatusCode.INTERNAL:
                log.error("internal error in %s: %s", self.method, err.message)
            return err.to_status()
        log.exception("unhandled error in %s", self.method, exc_info=err)
        span = get_current_span()
        if span.is_recording():
            # Not record_exception: a message may quote a secret, and spans are not redacted
            # the way log lines are. The traceback is in the log.
            span.add_event(
                "exception",
                {"exception.type": type(err).__qualname__, "exception.message": redact(str(err))},
            )
        return Internal("internal error").to_status()

    @staticmethod
    def _cancelled(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    def _received(self, request: Any, streaming: bool) -> Any:
        if not streaming:
            self.metrics.received.inc()
            return request
        return self._counted(request)

    async def _counted(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        received = self.metrics.received
        async for request in requests:
            received.inc()
            yield request

    def unary_response(
        self, fn: Callable[..., Awaitable[Any]], request_streaming: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            begun = self._begin(context)
            code = None
            try:
                request = self._received(request, request_streaming)
                # Raises Unauthenticated before the servicer runs.
                set_current_user(self.auth.authenticate(context.invocation_metadata()))  # type: ignore[arg-type]
                response = await fn(request, context)
                self.metrics.sent.inc()
                return response
            except AbortError:
                raise
            except asyncio.CancelledError:
                code = self._cancelled(context)
                raise
            except Exception as err:
                status = self._fail(err)
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                self._end(context, begun, code)

        return call

    def stream_response(
        self, fn: Callable[..., Any], request_streaming: bool
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(fn):
            return self.unary_response(fn, request_streaming)

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            begun = self._begin(context)
            code = None
            sent = self.metrics.sent
            try:
                request = self._received(request, request_streaming)
                set_current_user(self.auth.authenticate(context.invocation_metadata()))  # type: ignore[arg-type]
                async for item in fn(request, context):
                    yield item
                    sent.inc()
            except AbortError:
                raise
            except asyncio.CancelledError:
                code = self._cancelled(context)
                raise
            except Exception as err:
                status = self._fail(err)
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                self._end(context, begun, code)

        return gen

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self.unary_response(handler.unary_unary, False), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self.unary_response(handler.stream_unary, True), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self.stream_response(handler.unary_stream, False), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self.stream_response(handler.stream_stream, True), **kwargs
        )
