"""Traces, log lines and the access log from the chassis, on a real server and channel."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import tracing
from services.common.chassis import access_log
from services.common.logs import json_formatter, register_secret
from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from tests.common.test_chassis import SERVICE, _ident, _register

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    """The test service (API keys on), served by the chassis."""
    server = GrpcServer(CommonSettings(api_keys="bob:key-bob"), port=0)  # type: ignore[arg-type]
    server.add_service(_register, None, SERVICE)
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
def address(server: GrpcServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def traced(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to it with the client interceptors, as the gateway has."""
    channel = grpc.aio.insecure_channel(address, interceptors=tracing.client_interceptors("client"))
    yield channel
    await channel.close()


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The access log as the services write it (JSON, formatted on the calling task)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_formatter("test"))
    level = access_log.level
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    yield out
    access_log.removeHandler(handler)
    access_log.setLevel(level)


BOB = (("authorization", "Bearer key-bob"),)


def _server_span(spans: InMemorySpanExporter, method: str) -> ReadableSpan:
    (span,) = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.SERVER and s.name == f"/{SERVICE}/{method}"
    ]
    return span


async def _spans_finished(
    spans: InMemorySpanExporter, count: int, kind: SpanKind = SpanKind.SERVER
) -> None:
    """Wait for ``count`` spans of ``kind``. A failed call's status reaches the client as the
    servicer aborts, a moment before the chassis ends its span and writes its access line;
    a streaming call's client span ends from a task once its status is in. Polled for up to
    30 s (was about 5 s), returning as soon as they are there: a loaded machine is slower."""
    end = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < end:
        if sum(s.kind == kind for s in spans.get_finished_spans()) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} {kind.name} spans ended")


def _client_span(spans: InMemorySpanExporter, method: str) -> ReadableSpan:
    (span,) = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.CLIENT and s.name == f"/{SERVICE}/{method}"
    ]
    return span


async def test_server_span_continues_the_callers_trace(
    address: str, spans: InMemorySpanExporter
) -> None:
    # A caller without our interceptors, sending its own W3C traceparent.
    plain = grpc.aio.insecure_channel(address)
    call = plain.unary_unary(f"/{SERVICE}/WhoAmI", _ident, _ident)
    assert await call(b"", metadata=BOB + TRACEPARENT) == b"bob"
    await plain.close()
    server = _server_span(spans, "WhoAmI")
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert server.parent.is_remote
    assert server.context.trace_id == int(TRACE_ID, 16)
    assert server.attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "WhoAmI",
        "rpc.grpc.status_code": 0,
    }
    assert server.resource.attributes["service.name"] == "gensearch-test"
    # Credentials travel in the same metadata; they never become attributes.
    assert "key-bob" not in json.dumps(dict(server.attributes or {}))


async def test_every_call_shape_carries_the_trace(
    traced: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    async def two() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    assert await traced.unary_unary(f"/{SERVICE}/WhoAmI", _ident, _ident)(b"", metadata=BOB) == (
        b"bob"
    )
    collect = traced.stream_unary(f"/{SERVICE}/Collect", _ident, _ident)
    assert await collect(two(), metadata=BOB) == b"ab"
    chat = traced.stream_stream(f"/{SERVICE}/Chat", _ident, _ident)(two(), metadata=BOB)
    assert [r async for r in chat] == [b"A", b"B"]
    stream = traced.unary_stream(f"/{SERVICE}/Stream", _ident, _ident)(b"", metadata=BOB)
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in stream:
            pass
    await _spans_finished(spans, 4)
    await _spans_finished(spans, 4, SpanKind.CLIENT)
    for method in ("WhoAmI", "Collect", "Chat", "Stream"):
        # client span -> traceparent in the call's metadata -> server span
        server, client = _server_span(spans, method), _client_span(spans, method)
        assert server.parent is not None and server.parent.span_id == client.context.span_id
        assert server.context.trace_id == client.context.trace_id
        assert client.resource.attributes["service.name"] == "gensearch-client"
        assert "key-bob" not in json.dumps(dict(client.attributes or {}))
    # A client's mistake is not the server's error; its code is on the span.
    failed = _server_span(spans, "Stream")
    assert failed.attributes is not None and failed.attributes["rpc.grpc.status_code"] == 3
    assert failed.status.status_code == StatusCode.UNSET


async def test_cancelling_the_caller_cancels_the_call(
    server: GrpcServer, traced: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    call = traced.unary_unary(f"/{SERVICE}/Slow", _ident, _ident)
    task = asyncio.ensure_future(call(b"30", metadata=BOB))
    # The server is running the call (waited for: a fixed 0.3 s on a channel still
    # connecting left a loaded machine's server no call to cancel, and no server span).
    end = asyncio.get_running_loop().time() + 30
    while server.call_slots.in_flight < 1:
        assert not task.done() and asyncio.get_running_loop().time() < end, "never started"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The server stops too, long before its 30 s, and both sides record the cancellation.
    await _spans_finished(spans, 1)
    for span in (_server_span(spans, "Slow"), _client_span(spans, "Slow")):
        assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 1


async def test_internal_error_marks_the_span_without_secrets(
    traced: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    register_secret("passwd")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traced.unary_unary(f"/{SERVICE}/Fail", _ident, _ident)(b"boom", metadata=BOB)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    await _spans_finished(spans, 1)
    span = _server_span(spans, "Fail")
    assert span.status.status_code == StatusCode.ERROR
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "passwd" not in str(event.attributes["exception.message"])
    assert "[REDACTED]" in str(event.attributes["exception.message"])


async def test_access_line_per_call(
    address: str, spans: InMemorySpanExporter, access_lines: io.StringIO
) -> None:
    async with grpc.aio.insecure_channel(address) as plain:
        await plain.unary_unary(f"/{SERVICE}/WhoAmI", _ident, _ident)(
            b"", metadata=BOB + TRACEPARENT
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await plain.unary_unary(f"/{SERVICE}/Fail", _ident, _ident)(b"invalid", metadata=BOB)
    await _spans_finished(spans, 2)
    ok, failed = (json.loads(line) for line in access_lines.getvalue().splitlines())
    server = _server_span(spans, "WhoAmI")
    assert ok["method"] == f"/{SERVICE}/WhoAmI"
    assert ok["code"] == "OK"
    assert ok["user"] == "bob"
    assert (ok["level"], ok["name"], ok["service"]) == ("INFO", "gensearch.access", "test")
    assert 0 <= ok["duration_ms"] < 10_000
    assert ok["trace_id"] == TRACE_ID
    assert ok["span_id"] == f"{server.context.span_id:016x}"
    assert ISO_UTC.match(ok["time"])
    assert (failed["method"], failed["code"]) == (f"/{SERVICE}/Fail", "INVALID_ARGUMENT")
    # The ErrorInfo reason, so refusals of one code can be told apart in the log.
    assert failed["reason"] == "INVALID_ARGUMENT"
    assert "reason" not in ok
    assert failed["trace_id"] != TRACE_ID
    assert "key-bob" not in access_lines.getvalue()


async def test_the_documented_access_line_has_the_fields_a_real_one_has(
    address: str, spans: InMemorySpanExporter, access_lines: io.StringIO
) -> None:
    """docs/operations.md's example access line names every field an operator will see
    (QA: ``tenant``, written on every line since tenants exist, was not in it)."""
    async with grpc.aio.insecure_channel(address) as plain:
        await plain.unary_unary(f"/{SERVICE}/WhoAmI", _ident, _ident)(
            b"", metadata=BOB + TRACEPARENT
        )
    await _spans_finished(spans, 1)
    (line,) = (json.loads(text) for text in access_lines.getvalue().splitlines())
    assert line["tenant"] == "bob"  # the historical form: bob alone in the tenant bob
    documented = re.search(
        r"^## Logs\n.*?^```json\n(.*?)^```", OPERATIONS.read_text(encoding="utf-8"), re.M | re.S
    )
    assert documented is not None
    assert set(json.loads(documented.group(1))) == set(line)


async def test_unauthenticated_call_is_logged_and_traced(
    traced: grpc.aio.Channel, spans: InMemorySpanExporter, access_lines: io.StringIO
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await traced.unary_unary(f"/{SERVICE}/WhoAmI", _ident, _ident)(b"")
    await _spans_finished(spans, 1)
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    assert len(lines) == 1, lines
    (line,) = lines
    assert (line["code"], line["reason"], line["user"], line["tenant"]) == (
        "UNAUTHENTICATED",
        "MISSING_CREDENTIALS",
        "anonymous",
        "default",
    )
    span = _server_span(spans, "WhoAmI")
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 16


def _format(record_time: float | None = None) -> dict[str, object]:
    formatter = json_formatter("test")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    if record_time is not None:
        record.created = record_time
        record.msecs = (record_time % 1) * 1000
    return json.loads(formatter.format(record))  # type: ignore[no-any-return]


def test_log_lines_carry_the_current_trace() -> None:
    assert "trace_id" not in _format()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = _format()
    assert line["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    assert line["span_id"] == trace.format_span_id(span.get_span_context().span_id)


def test_log_time_is_iso_8601_utc() -> None:
    moment = datetime(2026, 12, 2, 3, 4, 5, 123500, tzinfo=UTC)
    assert _format(moment.timestamp())["time"] == "2026-12-02T03:04:05.123Z"
    assert ISO_UTC.match(str(_format()["time"]))


@pytest.mark.parametrize(
    ("env", "exported"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                "OTEL_TRACES_EXPORTER": "none",
            },
            False,
        ),
    ],
)
def test_otlp_exporter_only_with_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], exported: bool
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = tracing.exporter_from_env()
    # Made, never used: nothing is sent anywhere.
    assert isinstance(exporter, OTLPSpanExporter) == exported
    assert (exporter is None) != exported
    if exporter is not None:
        exporter.shutdown()


@pytest.mark.parametrize(
    "endpoint", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
@pytest.mark.parametrize(
    "headers", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]
)
def test_the_collectors_credentials_are_never_logged(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, headers: str
) -> None:
    # The OTLP exporter logs its endpoint's user info with every failed export ("Failed to
    # export traces to tracer:<password>@collector:4317 ..."), and the collector's error
    # details, which may quote the key sent in its headers. Secrets of this run's own: a
    # secret once registered stays so for the process.
    password, key = f"pw{uuid.uuid4().hex}", f"team{uuid.uuid4().hex}"
    monkeypatch.setenv(endpoint, f"http://tracer:{password}@127.0.0.1:4317")
    bare = f"bare{uuid.uuid4().hex}"  # no name: the SDK logs "Header format invalid: <it>"
    monkeypatch.setenv(headers, f"x-honeycomb-team={key},x-other=ok,{bare}")
    exporter = tracing.exporter_from_env()
    assert exporter is not None
    exporter.shutdown()
    logger = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        0,
        "Failed to export %s to %s, error code: %s, error details: %s",
        (
            "traces",
            f"tracer:{password}@127.0.0.1:4317",
            "UNAUTHENTICATED",
            f"unknown team key {key}; {bare}",
        ),
        None,
    )
    line = json_formatter("test").format(record)
    assert password not in line and key not in line and bare not in line
    assert "127.0.0.1:4317" in line  # the rest of the line stays


def test_sdk_disabled_means_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.tracer("anything") is None
    assert tracing.client_interceptors("gateway") == []
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
    assert tracing.tracer("anything") is not None
    assert len(tracing.client_interceptors("gateway")) == 4


def test_a_services_tracer_is_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # service_tracer() is asked per upstream call and per hit; the SDK's get_tracer builds
    # scope objects and re-registers a warnings filter on every call, so it runs once.
    monkeypatch.setattr(tracing, "_providers", {})
    made: list[str] = []
    get_tracer = TracerProvider.get_tracer

    def counted(provider: TracerProvider, name: str, *args: object, **kwargs: object) -> object:
        made.append(name)
        return get_tracer(provider, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TracerProvider, "get_tracer", counted)
    first = tracing.service_tracer("once")
    assert tracing.service_tracer("once") is first
    assert tracing.tracer("once") is first
    assert made == [tracing.TRACER_NAME]
    # A new provider (made after add_span_processor, say) gets its own tracer.
    monkeypatch.setattr(tracing, "_providers", {})
    assert tracing.service_tracer("once") is not first
    assert len(made) == 2


def test_without_export_spans_have_ids_but_record_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a process with no exporter and no other processor.
    monkeypatch.setattr(tracing, "_exporting", False)
    monkeypatch.setattr(tracing, "_providers", {})
    tracer = tracing.tracer("quiet")
    assert tracer is not None
    with tracer.start_as_current_span("root") as span:
        assert not span.is_recording()
        assert span.get_span_context().is_valid
        assert _format()["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    # A caller that samples its trace is followed.
    sampled = trace.NonRecordingSpan(
        trace.SpanContext(
            int(TRACE_ID, 16), int(PARENT_ID, 16), True, trace.TraceFlags(trace.TraceFlags.SAMPLED)
        )
    )
    with tracer.start_as_current_span("child", trace.set_span_in_context(sampled)) as child:
        assert child.is_recording()


def test_span_and_event_attributes_are_cut_to_a_bounded_length() -> None:
    # Before: the SDK's default keeps any length, so an error message quoting a large
    # input (the chassis's "exception" event) was exported whole.
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exported = InMemorySpanExporter()
    provider = TracerProvider(span_limits=tracing.span_limits({}))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with provider.get_tracer("t").start_as_current_span("call") as span:
        span.set_attribute("query", "q" * 100_000)
        span.add_event("exception", {"exception.message": "m" * 100_000})
    (finished,) = exported.get_finished_spans()
    assert finished.attributes is not None
    assert len(str(finished.attributes["query"])) == tracing.DEFAULT_ATTRIBUTE_LENGTH
    (event,) = finished.events
    assert event.attributes is not None
    assert len(str(event.attributes["exception.message"])) == tracing.DEFAULT_ATTRIBUTE_LENGTH


def test_the_operators_attribute_length_is_the_sdks_to_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100")
    import os

    assert tracing.span_limits(os.environ).max_attribute_length == 100


async def _baggage(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return json.dumps(dict(baggage.get_all())).encode()


async def _recording(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return str(trace.get_current_span().is_recording()).encode()


def _register_baggage(_servicer: object, server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_ident, response_serializer=_ident
        )
        for name, fn in {"Baggage": _baggage, "Recording": _recording}.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.mark.parametrize("trusted", [True, False])
async def test_an_untrusted_caller_cannot_make_the_service_record(
    trusted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing exports (the default: spans get ids, record nothing). A trusted caller's
    # sampled flag is followed; an untrusted one's made every span under the call record
    # (and, exporting, be exported whatever OTEL_TRACES_SAMPLER said).
    monkeypatch.setattr(tracing, "_exporting", False)
    monkeypatch.setattr(tracing, "_providers", {})
    got = await _call_as_bob("Recording", trusted, BOB + TRACEPARENT)
    assert got == str(trusted).encode()


async def _call_as_bob(method: str, trusted: bool, metadata: tuple[tuple[str, str], ...]) -> bytes:
    """One call of ``method`` of the test service, on a server trusting its caller's trace
    context or not."""
    settings = CommonSettings(api_keys="bob:key-bob", trust_caller_trace=trusted)  # type: ignore[call-arg]
    server = GrpcServer(settings, port=0)
    server.add_service(_register_baggage, None, SERVICE)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            got: bytes = await plain.unary_unary(f"/{SERVICE}/{method}", _ident, _ident)(
                b"", metadata=metadata
            )
            return got
    finally:
        await server.stop(0)


@pytest.mark.parametrize("trusted", [True, False])
async def test_an_untrusted_callers_trace_is_linked_and_its_baggage_dropped(
    trusted: bool, spans: InMemorySpanExporter, access_lines: io.StringIO
) -> None:
    # GENSEARCH_<SERVICE>_TRUST_CALLER_TRACE=false (the gateway's default): the caller's
    # traceparent is a link of a new trace, and its baggage goes no further (the gateway's
    # client interceptors would have passed it on to every service behind it).
    got = await _call_as_bob(
        "Baggage", trusted, BOB + TRACEPARENT + (("baggage", "tenant=globex"),)
    )
    await _spans_finished(spans, 1)
    span = _server_span(spans, "Baggage")
    (line,) = (json.loads(text) for text in access_lines.getvalue().splitlines())
    if trusted:
        assert json.loads(got) == {"tenant": "globex"}
        assert span.context.trace_id == int(TRACE_ID, 16) and not span.links
        assert line["trace_id"] == TRACE_ID
        return
    assert json.loads(got) == {}
    assert span.parent is None and span.context.trace_id != int(TRACE_ID, 16)
    (link,) = span.links
    assert link.context.trace_id == int(TRACE_ID, 16)
    assert link.context.span_id == int(PARENT_ID, 16)
    assert line["trace_id"] == f"{span.context.trace_id:032x}"


# Trace headers OpenTelemetry's propagators refuse with a WARNING (some quoting the header):
# written before the call is authenticated, a line per call of text the caller chose.
def _members(count: int) -> str:
    return ",".join(f"k{i}=v" for i in range(count))


SPAMMING_TRACE_HEADERS = {
    "long traceparent": (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01-" + "x" * 600),),
    "malformed tracestate": (*TRACEPARENT, ("tracestate", "a=b,Bad Key=1")),
    "too many tracestate members": (*TRACEPARENT, ("tracestate", _members(33))),
    "long tracestate": (*TRACEPARENT, ("tracestate", "a=b," * 2100 + "a=b")),
    "long baggage": (*TRACEPARENT, ("baggage", "k=" + "v" * 9000)),
    "too many baggage members": (*TRACEPARENT, ("baggage", _members(181))),
    "long baggage member": (*TRACEPARENT, ("baggage", "k=" + "v" * 5000)),
    "malformed baggage member": (*TRACEPARENT, ("baggage", "tenant=globex,no-equals-sign")),
}


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize("headers", SPAMMING_TRACE_HEADERS.values(), ids=SPAMMING_TRACE_HEADERS)
async def test_a_malformed_trace_header_writes_no_log_line(
    headers: tuple[tuple[str, str], ...], trusted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # A header not wholly well-formed (or past the propagators' bounds) is dropped unread,
    # as if not sent: the call goes on, and nothing from it reaches the log.
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        got = await _call_as_bob("Baggage", trusted, BOB + headers)
    assert json.loads(got) == {}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


async def test_well_formed_trace_headers_are_still_followed(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    # The check drops only what the propagators would refuse: a full tracestate, and
    # baggage with properties, optional spaces and URL-encoding, are read as the
    # propagators read them.
    tracestate = ",".join(f"k{i}=v" for i in range(31)) + ", tenant@vendor=x y"
    bag = " tenant = globex ; p=1 ;q , user=b%20ob,empty="
    headers = (("tracestate", tracestate), ("baggage", bag))
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        got = await _call_as_bob("Baggage", True, BOB + TRACEPARENT + headers)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    read = dict(baggage.get_all(W3CBaggagePropagator().extract({"baggage": bag})))
    assert len(read) == 3 and json.loads(got) == read
    await _spans_finished(spans, 1)
    state = _server_span(spans, "Baggage").context.trace_state
    assert len(state) == 32 and state["tenant@vendor"] == "x y"
