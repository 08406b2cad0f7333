"""One server interceptor for the whole chassis: identity, error mapping, metrics.

Servicers raise ``ServiceError`` subclasses; this turns them into rich statuses. Any other
exception becomes INTERNAL with a generic message (the traceback goes to the log, never to
the client). Health checking and reflection are exempt from authentication so probes and
``grpcurl list`` work without a key.
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

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_EXEMPT):
            return handler
        user: str | None = None
        denied: ServiceError | None = None
        try:
            user = self._auth.authenticate(handler_call_details.invocation_metadata)  # type: ignore[arg-type]
        except ServiceError as err:
            denied = err
        return _wrap(handler, method, user, denied)


def _wrap(
    handler: grpc.RpcMethodHandler, method: str, user: str | None, denied: ServiceError | None
) -> grpc.RpcMethodHandler:
    service, name = split_method(method)
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    async def _finish(context: grpc.aio.ServicerContext, err: BaseException | None) -> None:
        if err is None:
            return
        if isinstance(err, ServiceError):
            if err.code == grpc.StatusCode.INTERNAL:
                log.error("internal error in %s: %s", method, err.message)
            status = err.to_status()
        else:
            log.exception("unhandled error in %s", method, exc_info=err)
            status = Internal("internal error").to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _observe(context: grpc.aio.ServicerContext, started: float) -> None:
        code = context.code() if hasattr(context, "code") else None
        code_name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        REQUESTS.labels(service, name, code_name).inc()
        LATENCY.labels(service, name).observe(time.perf_counter() - started)
        IN_FLIGHT.labels(service, name).dec()

    def _begin() -> float:
        if denied is not None:
            raise denied
        set_current_user(user or "")
        IN_FLIGHT.labels(service, name).inc()
        return time.perf_counter()

    def unary_response(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = None
            try:
                started = _begin()
                return await fn(request, context)
            except AbortError:
                raise
            except Exception as err:
                await _finish(context, err)
            finally:
                if started is not None:
                    _observe(context, started)

        return call

    def stream_response(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):

            async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = None
                try:
                    started = _begin()
                    async for item in fn(request, context):
                        yield item
                except AbortError:
                    raise
                except Exception as err:
                    await _finish(context, err)
                finally:
                    if started is not None:
                        _observe(context, started)

            return gen
        return unary_response(fn)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **kwargs)
