"""A span per LLM call: GenAI semantic-convention attributes, usage, attempts, errors; never
a key, never prompt text (an in-memory exporter, real calls to the loopback fake)."""

from __future__ import annotations

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.generation.conftest import FAKE_KEY_ENV, Service, user
from tests.support.fake_openai import Behaviour, FakeOpenAI

PROMPT = "what is the secret recipe of the sauce"
REQUEST_KEY = "sk-requestkey-span-0123456789"


def chat_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "chat fake-model"]


def assert_no_secret_or_prompt(span: ReadableSpan, *secrets: str) -> None:
    values = " ".join(str(v) for v in (span.attributes or {}).values())
    values += str(span.status.description or "")
    for secret in (*secrets, PROMPT):
        assert secret not in values


async def test_a_unary_call_has_one_client_span(
    service: Service, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    fake.reply = "a short answer"
    fake.enqueue(Behaviour.error(503))
    await service.stub.Generate(
        pb.GenerateRequest(messages=[user(PROMPT)]),
        metadata=(("x-fake-api-key", REQUEST_KEY),),
        timeout=10,
    )
    [span] = chat_spans(spans)
    assert span.kind == SpanKind.CLIENT
    assert span.status.status_code == StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "fake"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "fake-model"
    assert attrs["gen_ai.usage.input_tokens"] == len(PROMPT.split())  # the fake counts words
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gensearch.upstream.attempts"] == 2
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == fake.port
    assert_no_secret_or_prompt(span, REQUEST_KEY)


async def test_a_stream_has_one_span_with_usage(
    service: Service, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    fake.reply = "one two three four"
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user(PROMPT)]), timeout=10
        )
    ]
    assert chunks[-1].finish_reason == "stop"
    [span] = chat_spans(spans)
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.usage.output_tokens"] == 4
    assert attrs["gensearch.upstream.attempts"] == 1
    assert span.status.status_code == StatusCode.UNSET


async def test_a_failed_call_sets_error_status_and_reason(
    service: Service,
    fake: FakeOpenAI,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_key = "sk-envkey-span-abcdef0123456"
    monkeypatch.setenv(FAKE_KEY_ENV, env_key)
    fake.fail_next(10, Behaviour.error(503))
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.Generate(pb.GenerateRequest(messages=[user(PROMPT)]), timeout=10)
    fake.clear_queue()
    fake.enqueue(Behaviour.unauthorized())
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user(PROMPT)]), timeout=10
        ):
            pass
    limited, refused = chat_spans(spans)
    assert limited.status.status_code == StatusCode.ERROR
    assert (limited.attributes or {})["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert (limited.attributes or {})["gensearch.upstream.attempts"] == 4
    assert refused.status.status_code == StatusCode.ERROR
    assert (refused.attributes or {})["error.type"] == "UPSTREAM_UNAUTHENTICATED"
    for span in (limited, refused):
        assert "gen_ai.usage.output_tokens" not in (span.attributes or {})
        assert_no_secret_or_prompt(span, env_key)


def retry_events(span: ReadableSpan) -> list[dict[str, object]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "gensearch.upstream.retry"]


async def test_each_retry_and_its_wait_is_an_event_of_the_call_span(
    service: Service, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    # A 429 (its Retry-After honoured) then a 503, both retried: the trace shows each
    # failed attempt, why, and the wait it caused, not only that 3 attempts were made (the
    # operator asking "why was this call slow" had only the attempt count and log lines).
    fake.enqueue(Behaviour.rate_limited(retry_after=None, retry_after_ms="50"))
    fake.enqueue(Behaviour.error(503))
    await service.stub.Generate(pb.GenerateRequest(messages=[user(PROMPT)]), timeout=10)
    fake.enqueue(Behaviour.error(503))
    async for _ in service.stub.StreamGenerate(
        pb.StreamGenerateRequest(messages=[user(PROMPT)]), timeout=10
    ):
        pass
    unary, stream = chat_spans(spans)
    first, second = retry_events(unary)
    assert first["gensearch.upstream.attempt"] == 1
    assert first["gensearch.upstream.cause"] == "429"
    assert first["gensearch.upstream.rate_limited"] is True
    assert first["gensearch.upstream.wait_seconds"] == 0.05
    assert (second["gensearch.upstream.attempt"], second["gensearch.upstream.cause"]) == (2, "503")
    assert second["gensearch.upstream.rate_limited"] is False
    assert (unary.attributes or {})["gensearch.upstream.attempts"] == 3
    waited = (unary.attributes or {})["gensearch.upstream.waited_seconds"]
    assert isinstance(waited, float) and waited >= 0.05
    # A stream's span is not the current one while it runs (upstream_span): its retries
    # are on it all the same, not on the server span.
    (retried,) = retry_events(stream)
    assert retried["gensearch.upstream.cause"] == "503"
    assert (stream.attributes or {})["gensearch.upstream.attempts"] == 2
    server = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert all(not retry_events(s) for s in server)
