"""One server interceptor for the whole chassis: identity, error mapping, metrics.

Servicers raise ``ServiceError`` subclasses; this turns them into rich statuses. Any other
exception becomes INTERNAL with a generic message (the traceback goes to the log, never to
the client). Health checking and reflection are exempt from authentication so probes and
``grpcurl list`` work without a key.

Each method's handler is wrapped once and cached, with its metric series bound up front:
this sits on every call's hot path.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import AbortError

from services.common.auth import Authenticator, set_current_user
from services.common.errors import Internal, ServiceError
from services.common.metrics import IN_FLIGHT, LATENCY, REQUESTS, split_method

log = logging.getLogger("gensearch.rpc")

_EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ChassisInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator
        # Set by the server once its services are known (metrics label).
        self.server_name = ""
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_EXEMPT):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _MethodWrapper(method, self._auth, self.server_name).wrap(handler))
            self._wrapped[method] = cached
        return cached[1]


class _MethodWrapper:
    def __init__(self, method: str, auth: Authenticator, server: str) -> None:
        service, name = split_method(method)
        self.method = method
        self.auth = auth
        self.labels = (server, service, name)
        self.latency = LATENCY.labels(*self.labels)
        self.in_flight = IN_FLIGHT.labels(*self.labels)
        self.ok = REQUESTS.labels(*self.labels, "OK")

    def _begin(self, context: grpc.aio.ServicerContext) -> float:
        # Raises Unauthenticated before the servicer runs.
        set_current_user(self.auth.authenticate(context.invocation_metadata()))  # type: ignore[arg-type]
        self.in_flight.inc()
        return time.perf_counter()

    def _observe(self, context: grpc.aio.ServicerContext, started: float) -> None:
        code = context.code()
        if code is None or code == grpc.StatusCode.OK:
            self.ok.inc()
        else:
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            REQUESTS.labels(*self.labels, name).inc()
        self.latency.observe(time.perf_counter() - started)
        self.in_flight.dec()

    async def _fail(self, context: grpc.aio.ServicerContext, err: Exception) -> None:
        if isinstance(err, ServiceError):
            if err.code == grpc.StatusCode.INTERNAL:
                log.error("internal error in %s: %s", self.method, err.message)
            status = err.to_status()
        else:
            log.exception("unhandled error in %s", self.method, exc_info=err)
            status = Internal("internal error").to_status()
        if context.code() is None:
            REQUESTS.labels(*self.labels, status.code.name).inc()
        await context.abort(status.code, status.details, status.trailing_metadata)

    def unary_response(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = None
            try:
                started = self._begin(context)
                return await fn(request, context)
            except AbortError:
                raise
            except Exception as err:
                await self._fail(context, err)
            finally:
                if started is not None:
                    self._observe(context, started)

        return call

    def stream_response(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(fn):
            return self.unary_response(fn)

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = None
            try:
                started = self._begin(context)
                async for item in fn(request, context):
                    yield item
            except AbortError:
                raise
            except Exception as err:
                await self._fail(context, err)
            finally:
                if started is not None:
                    self._observe(context, started)

        return gen

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self.unary_response(handler.unary_unary), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self.unary_response(handler.stream_unary), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self.stream_response(handler.unary_stream), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self.stream_response(handler.stream_stream), **kwargs
        )
