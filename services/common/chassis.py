"""The chassis around every RPC of our services: identity, error mapping, metrics, a
server span and an access log line; also each method's request size limit (checked on the
raw bytes, before parsing), the request metadata's size (``metadata_size.py``), the
deadline (too short to start, or about to pass: ``call_deadline.py``), the server's cap on
calls at once (``call_slots.py``), the bytes of replies a tenant has in flight
(``reply_bytes.py``), the bytes of requests the server holds (``request_bytes.py``), the
wait for each message of a client stream (``stream_idle.py``)
and, on the gateway, the admission guard of per-tenant quotas.

Servicers raise ``ServiceError`` subclasses; this turns them into rich statuses. Any other
exception becomes INTERNAL with a generic message (the traceback goes to the log, never to
the client).

Each method handler is wrapped once, when its service is registered, with its metric
series, span name and span attributes bound up front. A ``grpc.aio`` server interceptor
would do the same per call, at the price of several coroutines and a handler lookup on
every call (~13 % of a bare unary call's server CPU, docs/benchmarks.md); for the same
reason the server span is made here rather than by opentelemetry-instrumentation-grpc's
server interceptor, and named and attributed the way that one does, so client and server
spans match. Health checking and reflection are registered without it, so probes and
``grpcurl list`` work without a key and stay out of metrics, traces and the access log;
they are held to the request metadata limit alone (``server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pool
from grpc.aio import AbortError
from opentelemetry import context as otel_context
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)

from services.common.auth import Authenticator, current_identity, set_current_identity
from services.common.call_deadline import DeadlineLimit
from services.common.call_slots import CallSlot, CallSlots
from services.common.errors import Internal, ResourceExhausted, ServiceError
from services.common.logs import ACCESS_LOGGER, redact
from services.common.metadata_size import MetadataLimit
from services.common.metrics import MethodMetrics, grpc_type, split_method
from services.common.propagation import extract
from services.common.reply_bytes import Holding, ReplyBytes
from services.common.request_bytes import Held, RequestBytes, sized, unsized
from services.common.request_parse import (
    Undecodable,
    Unreceived,
    message_type,
    no_request,
    request_descriptor,
    tolerant,
)
from services.common.request_size import TooLarge, bounded
from services.common.shutdown_cut import REASON as SHUTDOWN_REASON
from services.common.shutdown_cut import CallCut, Draining
from services.common.stream_idle import STALLED, IdleLimit, PendingRead, progress_rule
from services.common.trace_headers import metadata_getter

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

# The admission guard (the gateway's quotas): called with the full method name and the
# context once the caller is authenticated, it returns the async context manager the call
# runs in; entering it may raise a ServiceError (RESOURCE_EXHAUSTED).
Admission = Callable[[str, grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager[Any]]
_ADMITTED: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
# The cutoff of a call without a deadline.
_NO_CUTOFF: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()

# What _begin hands to _end: start time, server span and the context token to detach.
Begun = tuple[float, Span | None, object]


def _forget(err: BaseException) -> None:
    """Clears the locals of the frames ``err`` went through (the running one excepted: the
    caller drops its own). The call's abort chains ``err`` into a reference cycle with
    gRPC's call state, which only the cyclic collector frees, and those frames held the
    call's request and reply: a refused request or a refused 16 MB reply stayed in memory
    after its call ended, and a burst of them kept the gateway hundreds of MiB over its
    bounds (docs/benchmarks.md, process memory). The traceback itself (file, line) stays."""
    traceback.clear_frames(err.__traceback__)


class ChassisRegistry:
    """Stands in for the ``grpc.aio.Server`` that generated ``add_*_to_server`` functions
    register with: it wraps every method handler; ``register`` then puts them on the real
    server (built once every service is known, since gRPC's receive limit is the largest
    method's)."""

    def __init__(
        self,
        auth: Authenticator,
        server_name: str,
        tracer: Tracer | None = None,
        *,
        request_limit: Callable[[str], int],
        stream_idle: IdleLimit,
        admission: Admission | None = None,
        call_slots: CallSlots | None = None,
        response_limit: int | None = None,
        metadata_limit: MetadataLimit | None = None,
        deadline_limit: DeadlineLimit | None = None,
        reply_bytes: ReplyBytes | None = None,
        request_bytes: RequestBytes | None = None,
        trust_caller_trace: bool = True,
        draining: Draining | None = None,
    ) -> None:
        self._auth = auth
        self._draining = draining
        self._trust_caller_trace = trust_caller_trace
        self._call_slots = call_slots
        self._metadata_limit = metadata_limit
        self._deadline_limit = deadline_limit
        self._reply_bytes = reply_bytes
        self._request_bytes = request_bytes
        self._response_limit = response_limit
        self._stream_idle = stream_idle
        self._server_name = server_name
        self._tracer = tracer
        self._request_limit = request_limit
        self._admission = admission
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._registered: list[tuple[str, dict[str, grpc.RpcMethodHandler]]] = []
        self._generic: list[grpc.GenericRpcHandler] = []
        self._largest = 0

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            limit = self._request_limit(split_method(method)[1])
            wrapper = _MethodWrapper(
                method,
                handler,
                self._auth,
                self._server_name,
                self._tracer,
                self._stream_idle,
                self._admission,
                self._call_slots,
                self._response_limit,
                self._metadata_limit,
                self._deadline_limit,
                self._reply_bytes,
                self._request_bytes,
                self._trust_caller_trace,
                self._draining,
            )
            # gRPC itself enforces the largest limit; only smaller ones need a check here.
            wrapped = wrapper.wrap(
                handler, limit if limit < self._largest else None, self._limit_setting(method)
            )
            self._wrapped[method] = wrapped
        return wrapped

    def _limit_setting(self, method: str) -> str:
        """The variable that holds ``method``'s request limit: its entry in
        ``_REQUEST_LIMITS``, or ``_MAX_REQUEST_BYTES`` (the limit of every other method)."""
        prefix = f"GENSEARCH_{self._server_name.upper()}"
        if self._request_limit(split_method(method)[1]) != self._request_limit(""):
            return f"{prefix}_REQUEST_LIMITS"
        return f"{prefix}_MAX_REQUEST_BYTES"

    def largest_request(self) -> int:
        """The largest request limit among the methods registered so far."""
        return max(
            (self._request_limit(name) for _, handlers in self._registered for name in handlers),
            default=self._request_limit(""),
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._registered.append((service, dict(handlers)))

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(WrappedGeneric(h, self) for h in handlers)

    def register(self, server: grpc.aio.Server) -> None:
        """Puts every wrapped handler on ``server``. Each method refuses a request over its
        own limit unparsed; gRPC refuses one over the largest limit (``largest_request``,
        the server's receive limit) without reading it."""
        self._largest = self.largest_request()
        for service, handlers in self._registered:
            wrapped = {
                name: self.wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()
            }
            server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]
        if self._generic:
            server.add_generic_rpc_handlers(tuple(self._generic))


class MethodWrapping(Protocol):
    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler: ...


class WrappedGeneric(grpc.GenericRpcHandler):
    """``inner``'s handlers, each through ``registry.wrap``: calls that core did not match
    to a registered method come this way."""

    def __init__(self, inner: grpc.GenericRpcHandler, registry: MethodWrapping) -> None:
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
        stream_idle: IdleLimit,
        admission: Admission | None = None,
        call_slots: CallSlots | None = None,
        response_limit: int | None = None,
        metadata_limit: MetadataLimit | None = None,
        deadline_limit: DeadlineLimit | None = None,
        reply_bytes: ReplyBytes | None = None,
        request_bytes: RequestBytes | None = None,
        trust_caller_trace: bool = True,
        draining: Draining | None = None,
    ) -> None:
        service, name = split_method(method)
        # The stopping server's end of calls still running (shutdown_cut.py).
        self.draining = draining
        self.trust_caller_trace = trust_caller_trace
        self.metadata_limit = metadata_limit
        self.deadline_limit = deadline_limit
        self.server = server
        # The server's send limit (grpc.max_send_message_length). A reply over it failed
        # with gRPC's bare "Sent message larger than max" (RESOURCE_EXHAUSTED, no
        # ErrorInfo): each reply is serialized here, once, and refused with one.
        self.response_limit = response_limit
        self.too_large_hint = _too_large_hint(service, name)
        self.serializer: Callable[[Any], bytes] | None = handler.response_serializer
        self.admission = admission
        self.call_slots = call_slots or CallSlots(0, "")  # 0: no limit
        self.reply_bytes = reply_bytes or ReplyBytes(0, "")  # 0: no limit
        self.request_bytes = request_bytes or RequestBytes(0, "")  # 0: no limit
        self.stream_idle = stream_idle
        # Which messages of a client stream reset its idle clock (set by ``wrap``).
        self.progress: Callable[[Any], bool] = progress_rule(None)
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
            # The caller's W3C traceparent, if any, is the parent; or, from callers not
            # trusted with it, only linked: the trace (its id, whether it is sampled, the
            # baggage passed on) is then ours.
            parent = extract(context.invocation_metadata() or (), getter=metadata_getter)
            links = None
            if not self.trust_caller_trace:
                caller = get_current_span(parent).get_span_context()
                links = [Link(caller)] if caller.is_valid else None
                parent = otel_context.Context()
            span = self.tracer.start_span(
                self.method, parent, SpanKind.SERVER, self.span_attributes, links
            )
            token = otel_context.attach(set_span_in_context(span, parent))
        return time.perf_counter(), span, token

    def _end(
        self,
        context: grpc.aio.ServicerContext,
        begun: Begun,
        code: grpc.StatusCode | None,
        reason: str = "",
    ) -> None:
        """``reason``: the ErrorInfo reason the call failed with, on its access line so an
        operator can tell refusals of one code apart (a tenant's quota from the server's
        cap, a wrong key from a missing one) without the caller's report."""
        started, span, token = begun
        seconds = time.perf_counter() - started
        if code is None:
            # The servicer may have aborted or set a code itself.
            code = context.code() or grpc.StatusCode.OK
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.UNKNOWN
        self.metrics.handled(code, seconds)
        if access_log.isEnabledFor(logging.INFO):
            fields = {
                "method": self.method,
                "code": code.name,
                "duration_ms": round(seconds * 1000, 3),
                "user": current_identity().user,
                "tenant": current_identity().tenant,
            }
            if reason:
                fields["reason"] = reason
            # While the span is still current, so the line carries its ids.
            access_log.info("%s %s", self.method, code.name, extra=fields)
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_ERRORS:
                span.set_status(StatusCode.ERROR, code.name)
            span.end()
        if token is not None:
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

    def _cut(self, streaming: bool) -> CallCut | contextlib.AbstractAsyncContextManager[Any]:
        """The call's cut by its stopping server (shutdown_cut.py): entered around its
        work, each step of a stream."""
        if self.draining is None:
            return _NO_CUTOFF
        return self.draining.call(streaming)

    def _drain_seconds(self, err: Exception) -> float:
        """How long a failed client stream reads on: within what is left of a stopping
        server's grace period when the server ended it (gRPC cancels the call then)."""
        if self.draining is not None and _reason(err) == SHUTDOWN_REASON:
            return self.draining.drain_seconds()
        return DRAIN_SECONDS

    def _held(self) -> Held | None:
        """What the call holds of the server's bytes of requests; None when the server has
        no such bound."""
        return self.request_bytes.hold() if self.request_bytes.limit else None

    def _received(self, request: Any, streaming: bool, held: Held | None) -> Any:
        if not streaming:
            if isinstance(request, Unreceived):  # no message came: none counted received
                raise request.error()
            self.metrics.received.inc()
            request, size = unsized(request)
            if isinstance(request, TooLarge | Undecodable):
                raise request.error()
            if held is not None:
                held.take(size)
            return request
        return self._counted(request, held)

    async def _counted(self, requests: PendingRead, held: Held | None) -> AsyncIterator[Any]:
        received = self.metrics.received
        idle = self.stream_idle
        clock = idle.clock()
        progress = self.progress
        while True:
            if held is not None:
                held.release()  # the servicer asks for the next message: done with this one
            try:
                # Raises STREAM_IDLE or STREAM_TOO_LONG into the servicer (which may say
                # what it did so far, as ImportObjects does); the call then ends and gives
                # back its slots.
                request = await idle.next_of_stream(requests, clock)
            except StopAsyncIteration:
                return
            received.inc()
            request, size = unsized(request)
            if isinstance(request, TooLarge | Undecodable):
                raise request.error()
            if progress(request):
                clock.progress()
            if held is not None:
                held.take(size)  # REQUEST_BYTES_IN_FLIGHT into the servicer, as STREAM_IDLE
            yield request

    def _admitted(
        self, context: grpc.aio.ServicerContext, slot: CallSlot
    ) -> tuple[Any, contextlib.AbstractAsyncContextManager[Any]]:
        """Before the servicer runs, in the order of their cost: the request metadata's
        size (METADATA_TOO_LARGE), the deadline (DEADLINE_TOO_SHORT), the caller
        (UNAUTHENTICATED), its tenant's share of the call slots and the admission guard.
        Returns the guard and the deadline's cutoff to run the work in."""
        if self.metadata_limit is not None:
            self.metadata_limit.check(self.method, context.invocation_metadata())  # type: ignore[arg-type]
        cutoff = None
        if self.deadline_limit is not None:
            cutoff = self.deadline_limit.cutoff(context)
        guard = self._authenticated(context, slot)
        return guard, _NO_CUTOFF if cutoff is None else cutoff

    def _authenticated(self, context: grpc.aio.ServicerContext, slot: CallSlot) -> Any:
        """Raises Unauthenticated before the servicer runs; then counts the call in its
        tenant's share of the call slots, and returns the admission guard (quotas) for the
        caller, if the server has one. No wait between the server's slot and the share:
        a call its tenant's share refuses never held a slot across an await."""
        set_current_identity(self.auth.authenticate(context.invocation_metadata()))  # type: ignore[arg-type]
        slot.take_for(current_identity().tenant)
        if self.admission is None:
            return _ADMITTED
        return self.admission(self.method, context)

    def _serialized(self, response: Any) -> Any:
        """``response`` as the bytes gRPC sends (the wrapped serializer passes bytes on),
        refused RESPONSE_TOO_LARGE past the server's send limit."""
        if (
            self.serializer is None
            or self.response_limit is None
            or response is None  # left to gRPC, as before
            or isinstance(response, bytes)
        ):
            return response
        data = self.serializer(response)
        if len(data) > self.response_limit:
            raise ResourceExhausted(
                f"the response is {len(data)} bytes; {split_method(self.method)[1]} sends at "
                f"most {self.response_limit} (GENSEARCH_{self.server.upper()}_MAX_MESSAGE_BYTES): "
                f"{self.too_large_hint}",
                reason="RESPONSE_TOO_LARGE",
                metadata={"limit_bytes": str(self.response_limit), "size_bytes": str(len(data))},
            )
        return data

    def _room(self) -> None:
        """Refuses the call before its work (the services behind it, its reply) when its
        tenant's, or the server's, bytes of replies in flight are already at their bound:
        no reply of it but an empty one could go (reply_bytes.py). After authentication
        (the tenant), before the admission guard: a refused call takes no quota."""
        if self.reply_bytes.bounded:
            self.reply_bytes.refuse_if_full(current_identity().tenant)

    def _holding(self) -> Holding | None:
        """What the call holds of its tenant's (and the server's) bytes of replies in
        flight; None when the server has no such bound."""
        if not self.reply_bytes.bounded:
            return None
        return self.reply_bytes.hold(current_identity().tenant)

    def unary_response(
        self, fn: Callable[..., Awaitable[Any]], request_streaming: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            begun = self._begin(context)
            code, reason = None, ""
            requests = request = PendingRead(request) if request_streaming else request
            held = self._held()
            try:
                # The slot first, before authentication: the cheapest refusal under a flood.
                with self.call_slots.call() as slot:
                    guard, cutoff = self._admitted(context, slot)
                    request = self._received(request, request_streaming, held)
                    self._room()
                    async with self._cut(False), cutoff, guard:
                        response = self._serialized(await fn(request, context))
                    holding = self._holding()
                    if holding is not None and isinstance(response, bytes):
                        # Until gRPC has sent it: the call is done then, however it ends.
                        holding.take(len(response))
                        context.add_done_callback(holding.release)
                self.metrics.sent.inc()
                return response
            except AbortError:
                raise
            except asyncio.CancelledError:
                code = self._cancelled(context)
                raise
            except Exception as err:
                status = self._fail(err)
                code, reason = status.code, _reason(err)
                request = response = None  # see _forget
                _forget(err)
                if isinstance(requests, PendingRead):
                    await _drain(requests, self._drain_seconds(err))
                requests = None
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if isinstance(requests, PendingRead):
                    requests.close()
                if held is not None:
                    held.release()
                self._end(context, begun, code, reason)

        return call

    def stream_response(
        self, fn: Callable[..., Any], request_streaming: bool
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(fn):
            return self.unary_response(fn, request_streaming)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A coroutine writing each message itself (gRPC's reader-writer form), not an
            # async generator gRPC writes for: only so can a write be bounded
            # (stream_send_timeout), and a client that stops reading be cut.
            begun = self._begin(context)
            code, reason = None, ""
            sent = self.metrics.sent
            holding = None
            held = self._held()
            ended = False
            reads = PendingRead(request) if request_streaming else None
            try:
                # Given back however the stream ends, also when the client goes away
                # mid-stream: gRPC cancels this task, and the CancelledError comes
                # through the block.
                with self.call_slots.call() as slot:
                    guard, cutoff = self._admitted(context, slot)
                    request = self._received(reads or request, request_streaming, held)
                    self._room()
                    holding = self._holding()
                    async with guard:
                        items = fn(request, context)
                        try:
                            await self._send_all(
                                items, context, cutoff, holding, sent, self._cut(True)
                            )
                        finally:
                            # The servicer's work (upstream calls) stops before the slots
                            # are given back, also when the stream is cut at a write.
                            await items.aclose()
            except AbortError:
                raise
            except asyncio.CancelledError:
                code = self._cancelled(context)
                raise
            except Exception as err:
                status = self._fail(err)
                code, reason = status.code, _reason(err)
                request = items = None  # see _forget
                _forget(err)
                stalled = reason == STALLED
                if stalled:
                    # The status waits behind what gRPC holds for the client, until it
                    # reads on or goes away: the call is over for us now (its slots were
                    # given back above), its unsent bytes still count.
                    self._end(context, begun, code, reason)
                    ended = True
                try:
                    await context.abort(status.code, status.details, status.trailing_metadata)
                except AbortError:
                    raise
                except Exception:
                    if not stalled:
                        raise
                    # The client went away before it read the status: gRPC fails the
                    # status' send; nothing is left to tell it.
            finally:
                if reads is not None:
                    reads.close()
                if holding is not None:
                    holding.release()  # a message the stream ended with or left unsent
                if held is not None:
                    held.release()
                if not ended:
                    self._end(context, begun, code, reason)

        return call

    async def _send_all(
        self,
        items: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        cutoff: contextlib.AbstractAsyncContextManager[Any],
        holding: Holding | None,
        sent: Any,
        cut: CallCut | contextlib.AbstractAsyncContextManager[Any],
    ) -> None:
        """The servicer's messages, each serialized, counted and written in turn; a write
        blocked past the send timeout ends the call STREAM_STALLED (``stream_idle.py``);
        ``cut``, the stopping server's, ends it SHUTTING_DOWN at a step, saying how many
        messages went out."""
        limit = self.stream_idle
        first = True
        watch = None
        try:
            while True:
                # The cutoff bounds each step, never a write: cancelled while gRPC sends,
                # the stream could not end with our status. The server's cut likewise.
                async with cut, cutoff:
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        return
                data = self._serialized(item)
                if holding is not None and isinstance(data, bytes):
                    holding.take(len(data))
                # A watched stream's headers go on their own first; only then: it costs a
                # step before the first message (the first token).
                headers_first = first and limit.cuts(context)
                if headers_first:
                    watch = limit.watch()
                first = False
                await limit.write(context, data, watch, headers_first=headers_first)
                # Written: gRPC has sent it (or holds it in the client's flow-control
                # window).
                if holding is not None:
                    holding.release()
                sent.inc()
                if isinstance(cut, CallCut):
                    cut.sent += 1
        finally:
            if watch is not None:
                watch.close()

    def _one_request(
        self, handle: Callable[..., Awaitable[Any]], request_type: str
    ) -> Callable[..., Awaitable[Any]]:
        """``handle`` (of one request) called with the first message of a client stream:
        none before the client half-closes is MALFORMED_REQUEST, none within
        ``stream_idle_timeout`` is STREAM_IDLE, as for a client stream's message (both
        answered by ``handle`` once the caller is authenticated). A message after the
        first is never read, as gRPC never read one past a unary request."""

        idle = self.stream_idle

        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            # The wait for the request is cut as the server stops, as the work is: a call
            # whose request had not come ended bare when gRPC cancelled it. The request is
            # no local of this frame: a refusal's traceback keeps the frame, in a cycle
            # with gRPC's call state, and its bytes with it (_forget clears the others).
            return await handle(
                await first_request(requests, idle, request_type, context, self._cut(False)),
                context,
            )

        return call

    def wrap(
        self, handler: grpc.RpcMethodHandler, limit: int | None, setting: str = ""
    ) -> grpc.RpcMethodHandler:
        """``limit``: the largest request accepted, when smaller than gRPC's own (held by
        the variable ``setting``)."""
        request_type = message_type(handler.request_deserializer)
        self.progress = progress_rule(request_descriptor(handler.request_deserializer))
        deserializer = tolerant(handler.request_deserializer)
        if limit is not None and deserializer is not None:
            deserializer = bounded(deserializer, limit, self.method, setting)
        if self.request_bytes.limit and deserializer is not None:
            deserializer = sized(deserializer)  # unwrapped by _received
        kwargs = {
            "request_deserializer": deserializer,
            "response_serializer": _passing_bytes(handler.response_serializer),
        }
        # A unary-request method is served as a client stream of one message: grpc.aio
        # leaves a unary call whose client half-closes without its request open, never
        # answered, until its deadline (without one, for ever), and waits for a request
        # that never comes the same way; no handler of ours ever ran, so no limit held it.
        if handler.unary_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._one_request(self.unary_response(handler.unary_unary, False), request_type),
                **kwargs,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self.unary_response(handler.stream_unary, True), **kwargs
            )
        if handler.unary_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._one_request(self.stream_response(handler.unary_stream, False), request_type),
                **kwargs,
            )
        return grpc.stream_stream_rpc_method_handler(
            self.stream_response(handler.stream_stream, True), **kwargs
        )


async def first_request(
    requests: AsyncIterator[Any],
    idle: IdleLimit,
    request_type: str,
    context: grpc.aio.ServicerContext,
    cut: CallCut | contextlib.AbstractAsyncContextManager[Any] = _NO_CUTOFF,
) -> Any:
    """The one request of a unary-request method served as a client stream (``wrap``):
    its first message, or an ``Unreceived`` standing for the refusal when the client
    half-closed without one (MALFORMED_REQUEST) or, on a call without a deadline, sent
    none within ``idle``'s time (STREAM_IDLE), or the server, stopping, ended the wait
    (``cut``: SHUTTING_DOWN). A call with a deadline waits for its request until then, as
    gRPC did: a large request slowly uploaded is not idle."""
    requests = aiter(requests)
    try:
        async with cut:
            if context.time_remaining() is None:
                request = await idle.next(requests)
            else:
                request = await anext(requests)
    except StopAsyncIteration:
        return Unreceived(no_request(request_type))
    except ServiceError as err:  # STREAM_IDLE, SHUTTING_DOWN
        return Unreceived(err)
    # gRPC's reader is a generator holding the message it gave until asked for the next:
    # closed, it lets go, and a refused request's bytes go with its call (see _forget),
    # not with the next cyclic collection. Nothing reads past the one message anyway.
    close = getattr(requests, "aclose", None)
    if close is not None:
        await close()
    return request


def _passing_bytes(
    serializer: Callable[[Any], bytes] | None,
) -> Callable[[Any], bytes] | None:
    """``serializer``, except that bytes (a reply the wrapper serialized) go out as they are."""
    if serializer is None:
        return None

    def serialize(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serializer(response)

    return serialize


# How long a failed client-streaming call keeps reading what its client still sends.
DRAIN_SECONDS = 2.0


async def _drain(requests: PendingRead, seconds: float = DRAIN_SECONDS) -> None:
    """Reads, and drops, the rest of a client stream before the call ends with an error.

    A grpc-python asyncio client still writing when our status arrives reports INTERNAL
    ("Internal error from Core") instead of that status (grpc/grpc#36066): the gateway,
    forwarding ImportObjects, did so when retrieval refused an early message. Reading on
    until the client half-closes (for ``seconds`` at most) lets it see the real status.
    Any failure here (the stream broken) ends the drain; the status is sent all the same.
    A read still running from the wait that ended the call (STREAM_IDLE, STREAM_TOO_LONG)
    is taken over, not started again, and one still running at the end is ended; a reader
    still waiting elsewhere (a relay's request consumer) shares it (``PendingRead``)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(seconds):
            while True:
                await requests.within(None)
    requests.close()


def _too_large_hint(service: str, name: str) -> str:
    """What a caller of ``service``/``name`` can do about a reply over the send limit: only
    what the method has (a ``debug`` flag to leave off, a streaming sibling to call; a
    server-streaming method already sends one event at a time)."""
    try:
        methods = descriptor_pool.Default().FindServiceByName(service).methods_by_name
    except KeyError:
        return "ask for fewer or shorter results"
    method = methods.get(name)
    fields = method.input_type.fields_by_name if method is not None else {}
    debug = "debug" in fields or (
        "generate" in fields
        and fields["generate"].message_type is not None
        and "debug" in fields["generate"].message_type.fields_by_name
    )
    hint = "ask for fewer or shorter results" + (", without debug" if debug else "")
    stream = f"Stream{name}"
    if method is not None and not method.server_streaming and stream in methods:
        hint += f", or use {stream}"
    return hint


def _reason(err: Exception) -> str:
    return err.reason if isinstance(err, ServiceError) else ""
