"""OpenTelemetry tracing for every service, configured by the standard ``OTEL_*`` variables.

Export is off by default; the OTLP/gRPC exporter (batched) is used when
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (and
``OTEL_TRACES_EXPORTER`` is not ``none``). ``OTEL_SDK_DISABLED=true`` turns tracing off
altogether: no spans, no trace ids in logs, no client interceptors.

Each service gets its own ``TracerProvider`` (resource ``service.name=gensearch-<service>``,
or ``OTEL_SERVICE_NAME``) so that under ``gensearch up``, where all four share a process,
each span still names the service that made it. The providers share one set of span
processors; the first provider made is also the global one that library code uses. Our own
code takes its tracer from ``service_tracer(<service>)``, never from the global provider.

Server spans come from the chassis (``services/common/chassis.py``); client spans from
``client_interceptors()`` on the caller's channels; both carry the W3C ``traceparent`` in
gRPC metadata, so one trace crosses all four services.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import grpc
from grpc.aio import ClientCallDetails
from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import (
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from services.common import propagation
from services.common.logs import register_secret, url_secrets
from services.common.otel_environment import BATCH_TIMEOUT
from services.common.propagation import inject

TRACER_NAME = "gensearch"
# Span attribute of an upstream call (LLM, embeddings, rerank) and of a generative hit:
# attempts made, first included (not a semantic-convention name).
UPSTREAM_ATTEMPTS = "gensearch.upstream.attempts"
# Span attribute of an LLM call: seconds it spent waiting (for the provider's limits, a
# 429's Retry-After, retry backoffs) rather than in exchanges; each retry is also an event
# (upstream_retry.RETRY_EVENT).
UPSTREAM_WAITED = "gensearch.upstream.waited_seconds"
# Span attribute of a generative hit and of an Ask: whether a cache (the generation cache,
# the semantic answer cache) answered instead of an LLM call.
CACHE_HIT = "gensearch.cache.hit"

# Shared by every provider of the process: adding one processor reaches them all.
_processors = SynchronousMultiSpanProcessor()
_providers: dict[str, TracerProvider] = {}
# Each provider's tracer for our own spans, asked for per upstream call and per hit: the
# SDK's get_tracer hands back the tracer it keeps, but first builds two scope objects
# (one of them deprecated, so warned about) and re-registers a warnings filter, every time.
_tracers: dict[TracerProvider, trace.Tracer] = {}
_exporter_checked = False
_exporting = False
log = logging.getLogger("gensearch.tracing")


def disabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def exporter_from_env(environ: Mapping[str, str] = os.environ) -> SpanExporter | None:
    """The OTLP exporter when an OTLP endpoint is configured, else None (export off)."""
    if environ.get(OTEL_TRACES_EXPORTER, "otlp").strip().lower() == "none":
        return None
    if not (
        environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or environ.get(OTEL_EXPORTER_OTLP_ENDPOINT)
    ):
        return None
    register_collector_secrets(environ)
    # Imported here: it pulls in a gRPC channel stack nobody needs while export is off.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # Reads the endpoint, headers, certificates, compression and timeout from the
    # environment itself.
    return OTLPSpanExporter()


_HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")


def register_collector_secrets(environ: Mapping[str, str] = os.environ) -> None:
    """Never log the collector's credentials: the OTLP exporter logs its endpoint, user
    info included, with every failed export ("Failed to export traces to
    user:<password>@collector:4317"), and the collector's error details, which may quote
    the key its headers carried. The endpoints' secrets (as for the Redis and Qdrant URLs)
    and every header value (``k=v`` pairs, comma-separated, percent-encoded) are
    registered with the log redactor (a malformed pair whole: the SDK logs it)."""
    for name in (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT):
        for secret in url_secrets(environ.get(name, "")):
            register_secret(secret)
    for name in _HEADER_VARIABLES:
        for pair in environ.get(name, "").split(","):
            # A pair without "=" is logged whole by the SDK ("Header format invalid").
            value = (pair.partition("=")[2] if "=" in pair else pair).strip()
            # As written, decoded, and the token of an "authorization=Bearer%20<token>".
            for secret in {value, unquote(value).strip(), *unquote(value).split()[-1:]}:
                register_secret(secret)


def add_span_processor(processor: SpanProcessor) -> None:
    """Every span of every service of this process goes to ``processor`` too (tests use an
    in-memory exporter this way). Providers made from now on record spans."""
    global _exporting
    _processors.add_span_processor(processor)
    _exporting = True
    _providers.clear()
    _tracers.clear()


def _configure_export() -> None:
    global _exporter_checked
    if _exporter_checked:
        return
    _exporter_checked = True
    exporter = exporter_from_env()
    if exporter is not None:
        add_span_processor(BatchSpanProcessor(exporter))
    # Flushes the batch at exit (the providers themselves do not register, so that the
    # shared processors are shut down once).
    atexit.register(flush_at_exit)


# The flush at exit is bounded by the OTel standard variable for the batch span processor,
# OTEL_BSP_EXPORT_TIMEOUT, "the maximum allowed time to export data" (milliseconds), read
# as the SDK reads it (an integer; checked at start by ``otel_environment``). The SDK itself
# does not use it (its shutdown waits a fixed 30 s), so it is ours to apply. Unset, 10 s,
# not the SDK's 30 s: the pods' termination budgets (deploy/, tests/deploy) count 10 s for
# it, and a flush of 30 s ran past them wherever the variable was not set. Not one OTLP
# export timeout: that bounds one batch, and the queue holds up to four (2,048 spans of
# 512), so a collector that answers, slowly, lost the rest.
DEFAULT_FLUSH_TIMEOUT_MS = 10_000
# The least the flush waits, whatever the variable says (0 is a valid value of it): a
# bound of 0 dropped every span queued at exit, even those a collector takes at once.
MIN_FLUSH_SECONDS = 1.0


def flush_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds the flush at exit waits at most (``flush_at_exit``): OTEL_BSP_EXPORT_TIMEOUT,
    at least MIN_FLUSH_SECONDS."""
    value = environ.get(BATCH_TIMEOUT, "").strip()
    try:
        millis = int(value) if value else DEFAULT_FLUSH_TIMEOUT_MS
    except ValueError:  # refused at start (otel_environment); as the SDK, the default
        millis = DEFAULT_FLUSH_TIMEOUT_MS
    return max(millis / 1000, MIN_FLUSH_SECONDS)


def flush_at_exit(environ: Mapping[str, str] = os.environ) -> None:
    """Sends the spans still queued, waiting at most ``flush_timeout`` in all.

    The SDK's shutdown exports every queued batch, each with a whole export timeout, for
    up to 30 s: with a collector that does not answer (down, or its packets dropped by a
    network policy) a busy service's exit after its drain took 30 s, past the pod's
    termination budget, for spans that could not be delivered anyway. A collector that
    answers takes the queue in milliseconds; one that answers slowly gets the whole bound
    for the whole queue."""
    bound = flush_timeout(environ)
    flushing = threading.Thread(target=_processors.shutdown, name="span-flush", daemon=True)
    flushing.start()
    flushing.join(bound)
    if flushing.is_alive():
        given = environ.get(BATCH_TIMEOUT, "").strip()
        log.warning(
            "spans still queued at exit were not exported: the collector did not take "
            "them within %g s (%s)",
            bound,
            BATCH_TIMEOUT if given else f"{BATCH_TIMEOUT}, default {DEFAULT_FLUSH_TIMEOUT_MS} ms",
        )


# Characters an attribute value (of a span or of its events) keeps, unless the operator
# sets OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT or OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: the SDK
# keeps any length by default, so an error message quoting a large input (the chassis's
# ``exception`` event) would be exported whole.
DEFAULT_ATTRIBUTE_LENGTH = 4096
_LENGTH_VARIABLES = ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")


def span_limits(environ: Mapping[str, str] = os.environ) -> SpanLimits:
    if any(environ.get(name) for name in _LENGTH_VARIABLES):
        return SpanLimits()  # the SDK reads them
    return SpanLimits(max_attribute_length=DEFAULT_ATTRIBUTE_LENGTH)


def tracer_provider(service: str) -> TracerProvider | None:
    """The provider of ``service`` ('memory', 'gateway' …); None when the SDK is disabled."""
    if disabled():
        return None
    provider = _providers.get(service)
    if provider is None:
        _configure_export()
        propagation.load()
        name = os.environ.get(OTEL_SERVICE_NAME) or f"gensearch-{service}"
        provider = TracerProvider(
            # Exporting: the SDK's sampler (OTEL_TRACES_SAMPLER, default parent-based always
            # on). Not: a trace started here gets ids (for the logs and the services it
            # calls) but records nothing nobody would receive, a third of a span's cost.
            sampler=None if _exporting else ParentBased(ALWAYS_OFF),
            resource=Resource.create({SERVICE_NAME: name}),
            active_span_processor=_processors,
            span_limits=span_limits(),
            shutdown_on_exit=False,
        )
        _providers[service] = provider
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
    return provider


def tracer(service: str) -> trace.Tracer | None:
    """The tracer for ``service``'s own spans; None when tracing is disabled."""
    provider = tracer_provider(service)
    if provider is None:
        return None
    found = _tracers.get(provider)
    if found is None:
        found = _tracers[provider] = provider.get_tracer(TRACER_NAME)
    return found


def service_tracer(service: str) -> trace.Tracer:
    """The tracer for spans a service's own code makes (LLM calls, fan-out hits): under its
    own provider, so the span names that service even when several share a process; a
    no-op tracer when tracing is disabled. Ask for it at call time (a dict lookup), not at
    import, when no provider exists yet."""
    return tracer(service) or trace.NoOpTracer()


def client_interceptors(service: str | None = None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a ``grpc.aio`` channel: a CLIENT span per call, and the trace
    context injected into the call's metadata, for all four call shapes. ``service`` names
    the calling service (its provider makes the spans); by default the global provider."""
    if disabled():
        return []
    provider = tracer_provider(service) if service else trace.get_tracer_provider()
    spans = _ClientSpans(provider.get_tracer(TRACER_NAME))  # type: ignore[union-attr]
    return [_UnaryUnary(spans), _UnaryStream(spans), _StreamUnary(spans), _StreamStream(spans)]


# Not opentelemetry-instrumentation-grpc's aio_client_interceptors(): they wait for the
# status inside the interceptor, so cancelling the caller (the gateway does, at a deadline
# or when its own client goes away) no longer cancels the RPC and the callee keeps
# generating (open-telemetry/opentelemetry-python-contrib#3271, still open; our
# tests/gateway/test_stream.py fails with them). These hand grpc the call itself.


class _ClientSpans:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        # Streaming calls end their span from a task waiting for the status; kept here
        # so it is not garbage-collected before it runs.
        self._pending: set[asyncio.Task[None]] = set()

    def start(self, details: ClientCallDetails) -> tuple[trace.Span, ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        service, _, name = method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            method,
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        inject(metadata, context=trace.set_span_in_context(span))
        return span, details._replace(metadata=metadata)

    @staticmethod
    def end(span: trace.Span, code: grpc.StatusCode) -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(trace.StatusCode.ERROR, code.name)
        span.end()

    def end_when_done(self, span: trace.Span, call: grpc.aio.Call) -> None:
        async def finish() -> None:
            self.end(span, await call.code())

        task = asyncio.get_running_loop().create_task(finish())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, spans: _ClientSpans) -> None:
        self._spans = spans

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: ClientCallDetails, request: Any
    ) -> Any:
        span, details = self._spans.start(details)
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(details, request)
            try:
                # Awaiting the call (not its status) cancels the RPC if we are cancelled.
                await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            return call  # done: the caller gets its response or the same error
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._spans.end(span, code)


class _Streaming:
    """The call shapes with a request or response stream: the span ends when the call's
    status is in, from a task, since the caller reads or writes the call itself. One
    subclass per shape: grpc.aio files each interceptor under the first shape it is an
    instance of, so one object cannot serve all three."""

    def __init__(self, spans: _ClientSpans) -> None:
        self._spans = spans

    async def _intercept(
        self, continuation: Callable[..., Any], details: ClientCallDetails, request: Any
    ) -> Any:
        span, details = self._spans.start(details)
        # Not awaited here: a caller writing with call.write() needs the call first.
        call = await continuation(details, request)
        self._spans.end_when_done(span, call)
        return call


class _UnaryStream(_Streaming, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Streaming._intercept


class _StreamUnary(_Streaming, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Streaming._intercept


class _StreamStream(_Streaming, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Streaming._intercept
