"""Server bootstrap shared by every service.

``GrpcServer`` wires a ``grpc.aio`` server with the chassis (identity, errors, metrics,
tracing and the access log around every method of our services), gRPC health checking,
server reflection and (optionally) a Prometheus endpoint. ``run_until_signal`` runs it
until SIGTERM/SIGINT, then shuts down gracefully: open health Watch streams get NOT_SERVING,
the listener closes and new calls are refused (a probe's Check too: it fails to connect,
which Kubernetes counts as a failed probe), in-flight calls get ``grace_period`` seconds to
finish.

The server holds its limits under abuse (docs/operations.md#limits): request sizes per
method, idle and silent connections closed, keepalive, caps on streams per connection and
on calls per process (held by the chassis, ``call_slots.py``, so its refusal carries an
ErrorInfo like every other), a wait for each message of a client stream
(``stream_idle.py``), and the soft open-file limit raised to the hard one at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from services.common import reflection_v1
from services.common.auth import Authenticator
from services.common.call_deadline import DeadlineLimit
from services.common.call_slots import REASON as CALL_SLOTS_REASON
from services.common.call_slots import CallSlots
from services.common.channel_args import metadata_options
from services.common.chassis import Admission, ChassisRegistry, WrappedGeneric, first_request
from services.common.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    quote,
)
from services.common.hostport import bind_problem, join_host_port
from services.common.logs import quiet_undelivered_replies, register_secret
from services.common.metadata_size import MetadataLimit, core_limit
from services.common.metrics import serve_metrics, server_name
from services.common.reply_bytes import ReplyBytes
from services.common.request_bytes import RequestBytes
from services.common.request_parse import Undecodable, Unreceived, message_type, tolerant
from services.common.settings import CommonSettings
from services.common.shutdown_cut import CallCut, Draining, margin
from services.common.stream_idle import STALLED, IdleLimit
from services.common.task_context import log_tasks_in_their_context
from services.common.tracing import tracer

log = logging.getLogger("gensearch.server")

Registrar = Callable[[Any, grpc.aio.Server], None]


class _BoundedHealth(HealthServicer):
    """grpc.health.v1.Health, refusing a service name over ``max_service_bytes`` with
    INVALID_ARGUMENT (FIELD_TOO_LARGE, field ``service``) before looking it up or watching
    it, and a Watch past ``max_watches`` open at once with RESOURCE_EXHAUSTED. Health needs
    no key and a Watch stream stays open holding its request: a name of megabytes kept
    some 17 MB of a process per stream, and each open stream (~24 KB) keeps its connection
    from idling out. Nothing of ours watches; a client-side health checker holds one per
    channel. List, which grpcio-health-checking leaves unimplemented (UNIMPLEMENTED
    quoting a Python exception, and an ERROR with a traceback in the log per call, for
    anyone), answers the statuses of the names ``set`` here: the server's and each of its
    services'."""

    def __init__(self, max_service_bytes: int, max_watches: int, namespace: str) -> None:
        super().__init__()
        self.max_service_bytes = max_service_bytes
        self.max_watches = max_watches
        self._namespace = namespace
        self._watching = 0
        self._names: dict[str, None] = {"": None}  # in the order set, for List

    async def _refuse_long(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        size = len(request.service.encode())
        if size > self.max_service_bytes:
            refusal = InvalidArgument(
                f"service is {size} bytes; a health check names at most "
                f"{self.max_service_bytes} (a service's full name; "
                f"{self._namespace}HEALTH_MAX_SERVICE_BYTES)",
                field="service",
                reason="FIELD_TOO_LARGE",
                metadata={
                    "limit_bytes": str(self.max_service_bytes),
                    "setting": f"{self._namespace}HEALTH_MAX_SERVICE_BYTES",
                },
            )
            await _abort(context, refusal)

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._refuse_long(request, context)
        if request.service not in self._names:
            # The protocol's NOT_FOUND, which grpcio-health-checking sends bare (no
            # message, no ErrorInfo): named and detailed like every other refusal.
            served = ", ".join(repr(name) for name in self._names)
            await _abort(
                context,
                NotFound(
                    f"service {quote(request.service)} is not served here (it serves {served})",
                    field="service",
                ),
            )
        return await super().Check(request, context)

    async def set(self, service: str, status: Any) -> None:
        self._names.setdefault(service)
        await super().set(service, status)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        reply = health_pb2.HealthListResponse()
        for name in self._names:
            status = await super().Check(health_pb2.HealthCheckRequest(service=name), context)
            reply.statuses[name].CopyFrom(status)
        return reply

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await self._refuse_long(request, context)
        if self._watching >= self.max_watches:
            setting = f"{self._namespace}HEALTH_MAX_WATCHES"
            await _abort(context, _too_many(self.max_watches, "health Watch", setting, "use Check"))
        self._watching += 1
        try:
            await super().Watch(request, context)
        finally:
            self._watching -= 1


class _BoundedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """grpc.reflection.v1alpha.ServerReflection (and v1: reflection_v1.py) with at most
    ``max_streams`` streams open at once, both names together (more are
    RESOURCE_EXHAUSTED), each waiting at most ``idle``'s time for its next request (then
    DEADLINE_EXCEEDED, STREAM_IDLE), as the chassis waits for a client stream's.
    Reflection needs no key, and a stream whose client neither sent nor half-closed stayed
    open for ever, uncounted, holding its connection. grpcurl asks, half-closes and reads:
    well within both."""

    def __init__(self, names: Sequence[str], max_streams: int, idle: IdleLimit, setting: str):
        super().__init__(names)
        self.max_streams = max_streams
        self._idle = idle
        self._setting = setting
        self._open = 0

    async def _paced(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        requests = aiter(requests)
        while True:
            try:
                yield await self._idle.next(requests)
            except StopAsyncIteration:
                return

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        if self._open >= self.max_streams:
            await _abort(context, _too_many(self.max_streams, "reflection", self._setting))
        self._open += 1
        try:
            async for reply in super().ServerReflectionInfo(self._paced(requests), context):
                yield reply
        except ServiceError as err:  # STREAM_IDLE
            await _abort(context, err)
        finally:
            self._open -= 1


async def _write_all(
    replies: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    cut: CallCut | contextlib.AbstractAsyncContextManager[Any],
    idle: IdleLimit,
) -> None:
    """Writes each of ``replies`` (a stream outside the chassis: reflection's) as the
    chassis' ``_send_all`` does: each step cut as the server stops (``cut``), never a
    write; a write its client has not taken within the send timeout ends the call
    STREAM_STALLED. No call outside the chassis is a peer's (the internal token's), so
    only a deadline sooner than the send timeout leaves a stream to it."""
    remaining = context.time_remaining()
    watched = bool(idle.send_seconds) and (remaining is None or remaining > idle.send_seconds)
    watch = None
    try:
        while True:
            async with cut:
                try:
                    reply = await anext(replies)
                except StopAsyncIteration:
                    return
            headers_first = watched and watch is None
            if headers_first:
                watch = idle.watch()
            await idle.write(context, reply, watch, headers_first=headers_first)
            if isinstance(cut, CallCut):
                cut.sent += 1
    finally:
        if watch is not None:
            watch.close()


def _too_many(limit: int, what: str, setting: str, instead: str = "") -> ResourceExhausted:
    """The refusal of a stream past ``limit`` of its kind (``what``) open at once."""
    return ResourceExhausted(
        f"the server has its limit of {limit} {what} streams open ({setting}); "
        f"{instead + ', or ' if instead else ''}retry later",
        reason=CALL_SLOTS_REASON,
        metadata={"limit": str(limit), "setting": setting, "scope": "server"},
    )


async def _abort(context: grpc.aio.ServicerContext, err: ServiceError) -> None:
    status = err.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


class _MetadataChecked:
    """Stands in for the server that the generated ``add_*_to_server`` functions of health
    checking and reflection register with: each of their methods refuses request metadata
    past ``max_metadata_bytes`` the way the chassis does (METADATA_TOO_LARGE, naming the
    largest header), and nothing else of the chassis (no key, metrics, trace or access
    log). Outside the chassis, such metadata passed up to gRPC's own limit (twice the
    setting) and past it got gRPC's bare refusal. A unary-request method (health's Check,
    Watch and List) is served as a client stream of one message, as the chassis serves
    ours (``chassis.first_request``): grpc.aio left a Check whose client half-closed without
    a request open and unanswered for ever, for anyone, no key needed. Bytes that are no
    request message are MALFORMED_REQUEST (``request_parse.tolerant``), as for our methods.
    And, as the server stops, a call still running (a Watch, a reflection stream, a call
    still waiting for its request) is ended by ``draining`` with UNAVAILABLE /
    SHUTTING_DOWN, as the chassis ends ours (shutdown_cut.py); before, gRPC cancelled them
    bare at the end of the grace period ("Cancelling all calls", no ErrorInfo)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        limit: MetadataLimit,
        idle: IdleLimit,
        draining: Draining | None = None,
    ) -> None:
        self._server = server
        self._limit = limit
        self._idle = idle
        self._draining = draining

    def _cut(self, streaming: bool) -> CallCut | contextlib.AbstractAsyncContextManager[Any]:
        if self._draining is None:
            return contextlib.nullcontext()
        return self._draining.call(streaming)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(WrappedGeneric(h, self) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        checked = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, checked)  # type: ignore[attr-defined]

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        limit = self._limit

        async def refuse_large(context: grpc.aio.ServicerContext) -> None:
            try:
                limit.check(method, context.invocation_metadata())  # type: ignore[arg-type]
            except ServiceError as err:
                await _abort(context, err)

        cut = self._cut

        def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(fn):  # reflection's stream

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> None:
                    # Written here (gRPC's reader-writer form), not yielded for gRPC to
                    # write: only so is a write bounded by the send timeout, as the
                    # chassis' streams are (stream_idle.py). Yielded, a client that asked
                    # and never read held its reflection slot for as long as it kept its
                    # connection open.
                    await refuse_large(context)
                    replies = fn(request, context)
                    stream_cut = cut(True)
                    try:
                        await _write_all(replies, context, stream_cut, idle)
                    except ServiceError as err:  # SHUTTING_DOWN, STREAM_STALLED
                        failure: ServiceError | None = err
                    else:
                        failure = None
                    finally:
                        # Closed first (reflection's slot given back): a stalled stream's
                        # status waits behind what gRPC holds for its client, until it
                        # reads on or goes away.
                        await replies.aclose()
                    if failure is None:
                        return
                    try:
                        await _abort(context, failure)
                    except grpc.aio.AbortError:
                        raise
                    except Exception:
                        if failure.reason != STALLED:
                            raise
                        # The client went away before it read the status.

                return stream

            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await refuse_large(context)
                # A Watch, waiting for the next change of status, is cut there (its
                # NOT_SERVING went out as the server began to stop). Counted as no stream:
                # its messages are statuses, nothing a client resumes from.
                try:
                    async with cut(False):
                        return await fn(request, context)
                except ServiceError as err:  # SHUTTING_DOWN
                    await _abort(context, err)

            return call

        idle, request_type = self._idle, message_type(handler.request_deserializer)

        async def refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
            # Bytes protobuf could not parse reach the servicer as an Undecodable (the
            # deserializer is ``tolerant``): MALFORMED_REQUEST, as for our own methods.
            # Parsed by gRPC itself, they were UNKNOWN quoting protobuf's DecodeError, and
            # an ERROR with a traceback in the log, for anyone (health and reflection need
            # no key).
            if isinstance(request, Undecodable):
                await refuse_large(context)
                await _abort(context, request.error())

        def one_request(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                request = await first_request(requests, idle, request_type, context, cut(False))
                if isinstance(request, Unreceived):
                    await _abort(context, request.error())
                await refuse_undecodable(request, context)
                return await fn(request, context)

            return call

        def decoded(fn: Callable[..., Any]) -> Callable[..., Any]:
            """``fn`` of a client stream, refusing its first message protobuf could not parse."""

            async def each(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async for request in requests:
                    await refuse_undecodable(request, context)
                    yield request

            if inspect.isasyncgenfunction(fn):  # reflection's stream

                async def stream(
                    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    async for reply in fn(each(requests, context), context):
                        yield reply

                return stream

            async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await fn(each(requests, context), context)

            return call

        codecs = {
            "request_deserializer": tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.stream_unary_rpc_method_handler(
                one_request(checked(handler.unary_unary)), **codecs
            )
        if handler.unary_stream:
            return grpc.stream_stream_rpc_method_handler(
                one_request(checked(handler.unary_stream)), **codecs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                decoded(checked(handler.stream_unary)), **codecs
            )
        return grpc.stream_stream_rpc_method_handler(
            decoded(checked(handler.stream_stream)), **codecs
        )


class BindError(RuntimeError):
    """A server could not listen where its settings say: ``where`` (host:port), why
    (``problem``) and the variables that chose it, in one line. ``metrics``: it was the
    metrics endpoint (the gRPC server is listening by then)."""

    def __init__(self, where: str, problem: str, variables: str, *, metrics: bool) -> None:
        super().__init__(f"cannot listen on {where}: {problem} ({variables})")
        self.where, self.problem, self.variables, self.metrics = where, problem, variables, metrics


def tenant_share(share: int, authenticator: Authenticator) -> tuple[int, str | None]:
    """The tenant's share of the call slots this server holds to, and why a share the
    settings ask for is off (None when it is not). A share only tells tenants apart: where
    every caller is one tenant (an open server: all are ``default``; keys of one tenant)
    it would refuse that tenant's calls below the server's own limit, for no one."""
    tenants = authenticator.tenants
    if not share or tenants is None or len(tenants) > 1:
        return share, None
    if authenticator.open:
        why = "no API keys configured, every caller is the tenant 'default'"
    else:
        why = f"every API key is of the one tenant {next(iter(tenants))!r}"
    return 0, f"{why}, so there are no other tenants to leave room for"


def log_share_off(setting: str, why: str, *, explicit: bool, **extra: Any) -> None:
    """Says once, at start, that a tenant share is off and why. A WARNING when the operator
    set it (they asked for a bound the server does not apply), INFO for the unset default."""
    level = logging.WARNING if explicit else logging.INFO
    log.log(level, "%s is off: %s", setting, why, extra=extra)


class GrpcServer:
    def __init__(
        self,
        settings: CommonSettings,
        *,
        port: int,
        metrics_port: int | None = None,
        host: str | None = None,
        accept_forwarded_identity: bool = True,
        admission: Admission | None = None,
    ) -> None:
        """``admission`` (the gateway's quotas) guards every call of our services once
        its caller is authenticated."""
        keys = settings.api_key_map()
        token = settings.internal_token.get_secret_value()
        for secret in (*keys, token):
            register_secret(secret)
        self.settings = settings
        self.host = host or settings.host
        self.port = port
        self.metrics_port = metrics_port
        self.authenticator = Authenticator(
            keys,
            token,
            accept_forwarded=accept_forwarded_identity,
            max_caller_key_bytes=settings.max_caller_key_bytes,
            caller_key_setting=f"{settings.namespace()}MAX_CALLER_KEY_BYTES",
        )
        self._admission = admission
        # One count for every service this server serves; health and reflection take none.
        share_setting = f"{settings.namespace()}MAX_CONCURRENT_RPCS_PER_TENANT"
        share, self._share_off = tenant_share(settings.call_share(), self.authenticator)
        self.call_slots = CallSlots(
            settings.max_concurrent_rpcs,
            f"{settings.namespace()}MAX_CONCURRENT_RPCS",
            share,
            share_setting,
        )
        # Per tenant and for all tenants together, for every service this server serves.
        self.reply_bytes = ReplyBytes(
            settings.max_reply_bytes_in_flight_per_tenant,
            f"{settings.namespace()}MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT",
            settings.max_reply_bytes_in_flight,
            f"{settings.namespace()}MAX_REPLY_BYTES_IN_FLIGHT",
        )
        # All calls of every service this server serves.
        self.request_bytes = RequestBytes(
            settings.max_request_bytes_in_flight,
            f"{settings.namespace()}MAX_REQUEST_BYTES_IN_FLIGHT",
        )
        self.stream_idle = IdleLimit(
            settings.stream_idle_timeout,
            f"{settings.namespace()}STREAM_IDLE_TIMEOUT",
            settings.stream_send_timeout,
            f"{settings.namespace()}STREAM_SEND_TIMEOUT",
            settings.client_stream_max_seconds,
            f"{settings.namespace()}CLIENT_STREAM_MAX_SECONDS",
        )
        self.metadata_limit = MetadataLimit(
            settings.max_metadata_bytes, f"{settings.namespace()}MAX_METADATA_BYTES"
        )
        self.deadline_limit = DeadlineLimit(
            settings.min_deadline, f"{settings.namespace()}MIN_DEADLINE"
        )
        # Calls still running as the grace period ends get our status, not gRPC's.
        self.draining = Draining(settings.grace_period, f"{settings.namespace()}GRACE_PERIOD")
        # Built by start(): the receive limit gRPC enforces depends on the methods served.
        self._server: grpc.aio.Server | None = None
        self._chassis: ChassisRegistry | None = None
        self.health = _BoundedHealth(
            settings.health_max_service_bytes, settings.health_max_watches, settings.namespace()
        )
        self._service_names: list[str] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    @property
    def server(self) -> grpc.aio.Server:
        if self._server is None:
            raise RuntimeError("the server is built by start()")
        return self._server

    def add_service(self, registrar: Registrar, servicer: Any, full_name: str) -> None:
        """Registers a servicer through its generated ``add_*_to_server`` function, with the
        chassis around every method. The first service names the server in metrics and
        traces (``service.name=gensearch-<name>``)."""
        if self._chassis is None:
            name = server_name(full_name)
            self.draining.service = name
            self._chassis = ChassisRegistry(
                self.authenticator,
                name,
                tracer(name),
                request_limit=self.settings.request_limit,
                admission=self._admission,
                call_slots=self.call_slots,
                stream_idle=self.stream_idle,
                response_limit=self.settings.max_message_bytes,
                metadata_limit=self.metadata_limit,
                deadline_limit=self.deadline_limit,
                reply_bytes=self.reply_bytes,
                request_bytes=self.request_bytes,
                trust_caller_trace=self.settings.trust_caller_trace,
                draining=self.draining,
            )
        registrar(servicer, self._chassis)
        self._service_names.append(full_name)

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run after the server has stopped serving (close pools, stop child processes)."""
        self._on_stop.append(callback)

    @property
    def service_names(self) -> Sequence[str]:
        return tuple(self._service_names)

    def _build(self) -> grpc.aio.Server:
        largest = self.settings.max_request_bytes
        if self._chassis is not None:
            largest = self._chassis.largest_request()
        # Not gRPC's maximum_concurrent_rpcs: the chassis holds that cap (call_slots.py).
        server = grpc.aio.server(options=server_options(self.settings, largest))
        checked = _MetadataChecked(server, self.metadata_limit, self.stream_idle, self.draining)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, checked)
        if self._chassis is not None:
            self._chassis.register(server)
        return server

    async def start(self) -> int:
        raise_file_limit()
        # A reply its client refused (over the client's receive limit) is no server error.
        quiet_undelivered_replies()
        # asyncio's lines about a task (an exception never retrieved) hide the keys of
        # the call that started it, though logged at garbage collection, outside the call.
        if not log_tasks_in_their_context():
            log.warning(
                "the event loop has another task factory: asyncio's lines about a task "
                "(an exception never retrieved) are written outside its call, its "
                "caller's keys not hidden"
            )
        self._server = self._build()
        names = (
            *self._service_names,
            reflection_v1.SERVICE_NAME,
            reflection.SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        )
        # What reflection.enable_server_reflection does, bounded, through the check.
        reflecting = _BoundedReflection(
            names,
            self.settings.reflection_max_streams,
            self.stream_idle,
            f"{self.settings.namespace()}REFLECTION_MAX_STREAMS",
        )
        checked = _MetadataChecked(
            self.server, self.metadata_limit, self.stream_idle, self.draining
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflecting, checked)
        # The same servicer (its cap counts both) under the stable name, which clients ask first.
        reflection_v1.add_to_server(reflecting, checked)
        address = join_host_port(self.host, self.port)
        # Probed first: gRPC says why only in a log line of its own, then raises.
        problem = bind_problem(self.host, self.port)
        if problem is None:
            try:
                bound = self.server.add_insecure_port(address)
            except RuntimeError:  # taken between the probe and the bind
                bound = 0
            problem = "gRPC could not bind it" if bound == 0 else None
        if problem is not None:
            raise self._bind_error(address, problem, "PORT", metrics=False)
        self.port = bound
        await self.server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        for name in self._service_names:
            await self.health.set(name, serving)
        if self.metrics_port is not None:
            where = join_host_port(self.host, self.metrics_port)
            problem = bind_problem(self.host, self.metrics_port)
            if problem is None:
                try:
                    self.metrics_port = serve_metrics(
                        self.host,
                        self.metrics_port,
                        timeout=self.settings.metrics_idle_timeout,
                        max_connections=self.settings.metrics_max_connections,
                    )
                except OSError as err:  # taken between the probe and the bind
                    problem = (err.strerror or str(err)).lower()
            if problem is not None:
                raise self._bind_error(where, problem, "METRICS_PORT", metrics=True)
        serving_at = join_host_port(self.host, bound)
        listening = {"address": serving_at, "services": list(self._service_names)}
        log.info("serving", extra=listening)
        # Once, at start: an open server is fine on a laptop, never where others can reach it.
        warning = self.authenticator.open_warning()
        if warning is not None:
            name = server_name(self._service_names[0]) if self._service_names else "server"
            log.warning("%s on %s: %s", name, serving_at, warning, extra=listening)
        if self._share_off is not None:
            log_share_off(
                f"{self.settings.namespace()}MAX_CONCURRENT_RPCS_PER_TENANT",
                self._share_off,
                explicit=self.settings.max_concurrent_rpcs_per_tenant is not None,
                **listening,
            )
        return bound

    def _bind_error(self, where: str, problem: str, port: str, *, metrics: bool) -> BindError:
        variables = f"GENSEARCH_HOST, {self.settings.namespace()}{port}"
        return BindError(where, problem, variables, metrics=metrics)

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking calls and gives those in flight ``grace`` seconds (the setting's
        by default). Calls still running a margin before it ends are ended by the chassis,
        UNAVAILABLE / SHUTTING_DOWN (shutdown_cut.py): what gRPC would cancel a moment
        later with a bare UNAVAILABLE."""
        grace = self.settings.grace_period if grace is None else grace
        self.draining.grace = grace
        await self.health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(self.server.stop(grace))
        if grace > 0:
            done, _ = await asyncio.wait({stopping}, timeout=grace - margin(grace))
            if not done:
                ended = self.draining.end_calls()
                if ended:
                    log.info(
                        "ending calls still running: the grace period is about to end",
                        extra={"calls": ended, "grace_period": grace},
                    )
        await stopping
        for callback in reversed(self._on_stop):
            try:
                await callback()
            except Exception:
                log.exception("error during shutdown")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def server_options(settings: CommonSettings, largest_request: int) -> list[tuple[str, int]]:
    """The channel arguments of a service's gRPC server: message sizes, connection
    lifetimes, keepalive (docs/operations.md#limits)."""
    options = [
        # gRPC refuses a longer message from its length prefix, before reading it: the
        # chassis then holds each method to its own, smaller limit (chassis.py).
        ("grpc.max_receive_message_length", largest_request),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # The chassis refuses metadata past max_metadata_bytes with an ErrorInfo
        # (metadata_size.py); gRPC's own limit, above it, bounds what a call buffers.
        *metadata_options(core_limit(settings.max_metadata_bytes)),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # A socket that never speaks HTTP/2 is closed after this (gRPC's default: 120 s).
        ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout)),
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout)),
        # Idle connections are closed by max_connection_idle, not kept alive by pings.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.keepalive_min_ping_interval)),
    ]
    if settings.max_connections > 0:
        # Closed at accept, before HTTP/2: the one refusal that bounds what open
        # connections hold (each a descriptor and its buffers), whoever opens them.
        options.append(("grpc.max_allowed_incoming_connections", settings.max_connections))
    if settings.max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle)))
    if settings.max_connection_age > 0:
        options.append(("grpc.max_connection_age_ms", _ms(settings.max_connection_age)))
        if settings.max_connection_age_grace > 0:
            # Then the connection is closed, its calls with it: what ends a cut stream's
            # status waiting behind bytes its client never reads (stream_idle.py).
            grace = _ms(settings.max_connection_age_grace)
            options.append(("grpc.max_connection_age_grace_ms", grace))
    return options


def raise_file_limit() -> int:
    """Raises this process's soft limit of open files to its hard limit (each connection
    holds a descriptor; the soft limit is often 1024 while the hard one is far higher) and
    returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as err:  # e.g. macOS caps it below RLIM_INFINITY
            log.warning("could not raise the open-file limit: %s", err)
            return soft
        log.info("open-file limit raised", extra={"from": soft, "to": hard})
        return hard
    return soft


async def run_until_signal(server: GrpcServer) -> None:
    """Start ``server`` and serve until SIGTERM or SIGINT, then stop gracefully. An
    address it cannot listen on stops the process with one line, not a traceback."""
    try:
        await server.start()
    except BindError as err:
        await server.stop(0)
        sys.exit(str(err))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_period": server.settings.grace_period})
    await server.stop()
