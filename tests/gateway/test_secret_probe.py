"""Secrets never reach a log line, an error, a span or a metric, across the whole stack.

Each test plants distinctive secrets where an operator or a caller puts them (the gateway's
API keys, a provider's key variable, a caller's ``x-<provider>-api-key``, a Redis URL's
password, the page-token secret, a base URL's user info), drives the stack through the
paths that quote things (upstream errors whose body quotes the key or echoes the whole
request, 401s, refusals, retries, streams), then reads every place a secret could surface:
the log records as the services' JSON formatter writes them, every finished span (names,
attributes, events, status), each error a caller got (message, trailers, rich details),
and the Prometheus exposition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, generate_latest

from services.common.logs import json_formatter, redact
from tests.gateway.conftest import (
    ALICE,
    TOKEN,
    Stack,
    StackFactory,
    books_search,
    create_books,
    create_embedded,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI

OPERATOR_KEY = "sk-operator-provider-key-0a1b2c3d4e5f"
CALLER_KEY = "sk-caller-provider-key-9f8e7d6c5b4a"
GATEWAY_KEY = "gw-operator-api-key-5e6f7a8b9c0d"
GATEWAY_KEYS = f"carol:{GATEWAY_KEY}"
CAROL = (("authorization", f"Bearer {GATEWAY_KEY}"),)
URL_PASSWORD = "url-userinfo-password-3c4d5e6f"
KEY_ENV = "GENSEARCH_TEST_PROBE_KEY"


class Sinks:
    """What a caller, an operator's log collector, trace backend and Prometheus saw."""

    def __init__(self, caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter) -> None:
        self._caplog = caplog
        self._spans = spans
        self.shown: list[tuple[str, str]] = []

    def error(self, err: grpc.aio.AioRpcError) -> None:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        self.shown.append(("error", f"{err!s} {err.trailing_metadata()!r} {status!s}"))

    def reply(self, message: object) -> None:
        self.shown.append(("reply", str(message)))

    def everything(self) -> list[tuple[str, str]]:
        formatter = json_formatter("probe")
        logs = [("log", formatter.format(record)) for record in self._caplog.records]
        traces = [("span", span.to_json()) for span in self._spans.get_finished_spans()]
        metrics = [("metrics", generate_latest(REGISTRY).decode())]
        return [*self.shown, *logs, *traces, *metrics]

    def assert_none_of(self, secrets: Iterable[str]) -> None:
        everything = self.everything()
        # Each sink was read (a probe that saw nothing would pass whatever leaked).
        assert {"error", "log", "span", "metrics"} <= {where for where, _ in everything}
        found = [
            (where, secret, text[max(0, text.find(secret) - 200) : text.find(secret) + 60])
            for where, text in everything
            for secret in secrets
            if secret in text
        ]
        assert found == []


@pytest.fixture
def sinks(caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter) -> Sinks:
    caplog.set_level(logging.DEBUG)
    return Sinks(caplog, spans)


async def _answer(call: Any, sinks: Sinks) -> grpc.aio.AioRpcError | None:
    """The error ``call`` ended with (None: it succeeded); what it showed goes in ``sinks``."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for event in call:
                sinks.reply(event)
        else:
            sinks.reply(await call)
    except grpc.aio.AioRpcError as err:
        sinks.error(err)
        return err
    return None


async def _fails(call: Any, sinks: Sinks) -> grpc.aio.AioRpcError:
    err = await _answer(call, sinks)
    assert err is not None, "the call succeeded"
    return err


def _quoting(key: str, *, chat: bool = False) -> list[Behaviour]:
    """Upstream answers that quote ``key``: a 401 as OpenAI words it, a 400 and a 422
    echoing the whole request (its Authorization header too), a 500 with the key in its
    body; for chat also an error event inside a stream, a 400 in plain text, the key as an
    error's code, in a Retry-After and in a redirect's Location."""
    quoting = [
        Behaviour.error(
            401,
            {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}},
        ),
        Behaviour.echo_request(400),
        Behaviour.echo_request(422),
        Behaviour.error(500, f"internal error handling key={key} ({key})"),
    ]
    if chat:
        event = {"error": {"message": f"key {key} was revoked", "type": "auth"}}
        quoting += [
            Behaviour.error(
                200,
                f"data: {json.dumps(event)}\n\n".encode(),
                {"Content-Type": "text/event-stream"},
            ),
            Behaviour.error(400, f"plain text naming {key}"),
            Behaviour.error(400, {"error": {"message": "refused", "code": key}}),
            Behaviour.error(429, "slow down", {"Retry-After": key}),
            Behaviour.error(307, "moved", {"Location": f"https://u:{key}@elsewhere.example/v1"}),
        ]
    return quoting


async def test_provider_keys_in_upstream_errors_reach_no_sink(
    stack_factory: StackFactory,
    fake: FakeOpenAI,
    sinks: Sinks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, OPERATOR_KEY)
    stack = await stack_factory(
        api_keys=GATEWAY_KEYS, provider=fake_provider(fake, api_key_env=[KEY_ENV])
    )
    await create_books(stack, metadata=CAROL)
    generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[no-untyped-call]
    caller = (*CAROL, ("x-fake-api-key", CALLER_KEY))
    for key, metadata in ((OPERATOR_KEY, CAROL), (CALLER_KEY, caller)):
        for behaviour in _quoting(key, chat=True):
            stack.fake.enqueue(behaviour)
            await _answer(  # a 429 is retried
                generation.Generate(
                    gen_pb.GenerateRequest(messages=[gen_pb.Message(role=1, content="hi")]),
                    metadata=metadata,
                ),
                sinks,
            )
            stack.fake.enqueue(behaviour)
            await _answer(
                generation.StreamGenerate(
                    gen_pb.StreamGenerateRequest(
                        messages=[gen_pb.Message(role=1, content="hi")], debug=True
                    ),
                    metadata=metadata,
                ),
                sinks,
            )
            stack.fake.enqueue(behaviour)
            sinks.reply(
                await stack.stub.GenerativeSearch(
                    books_search(limit=1, grouped_task="Summarise", debug=True),
                    metadata=metadata,
                )
            )
            stack.fake.enqueue(behaviour)
            await _answer(
                stack.stub.Ask(
                    gw_pb.AskRequest(collection="Books", llm_question="what?"),
                    metadata=metadata,
                ),
                sinks,
            )
        # A provider naming its answer by the key (tests/generation/test_keys.py).
        stack.fake.model_override = stack.fake.finish_reason_override = key
        sinks.reply(
            await stack.stub.GenerativeSearch(
                books_search(limit=1, single_prompt="Summarise {title}"),
                metadata=metadata,
            )
        )
        stack.fake.model_override = stack.fake.finish_reason_override = None
    assert len(stack.fake.chat_requests) >= 40
    sinks.assert_none_of([OPERATOR_KEY, CALLER_KEY, GATEWAY_KEY, TOKEN])
    # The gateway's own credentials never travel upstream either.
    assert [r for r in stack.fake.requests if GATEWAY_KEY in str(r) or TOKEN in str(r)] == []


async def test_base_urls_with_user_info_reach_no_sink(
    stack_factory: StackFactory, sinks: Sinks
) -> None:
    stack = await stack_factory(api_keys=GATEWAY_KEYS)
    port = stack.fake.port
    generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[no-untyped-call]
    urls = [
        f"http://user:{URL_PASSWORD}@127.0.0.1:{port}/v1",
        f"http://{URL_PASSWORD}@127.0.0.1:{port}/v1",
        f"http://user:{URL_PASSWORD}@127.0.0.1:{port}/v1?x=1",
        f"ftp://user:{URL_PASSWORD}@127.0.0.1:{port}/v1",
        f"http://user:{URL_PASSWORD}@[127.0.0.1/v1",
        f"http://user:{URL_PASSWORD}@127.0.0.1:99999/v1",
        f"http://user:{URL_PASSWORD}@127.0.0.1:{port}/v 1",
        f"http://user:{URL_PASSWORD}@bad_host!/v1",
        f"http://127.0.0.1:{port}/v1?api-key={URL_PASSWORD}",
        f"http://127.0.0.1:{port}/v1#{URL_PASSWORD}",
    ]
    for url in urls:
        err = await _fails(
            generation.Generate(
                gen_pb.GenerateRequest(
                    base_url=url, messages=[gen_pb.Message(role=1, content="hi")]
                ),
                metadata=CAROL,
            ),
            sinks,
        )
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
        collection = ret_pb.Collection(
            name="Probe",
            properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
            vectorizer=ret_pb.Vectorizer(
                kind=ret_pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
                base_url=url,
                model="fake-embedding",
                dimensions=stack.fake.embedding_dim,
            ),
        )
        await _fails(
            stack.retrieval.CreateCollection(
                ret_pb.CreateCollectionRequest(collection=collection), metadata=CAROL
            ),
            sinks,
        )
        await _fails(
            stack.stub.GenerativeSearch(
                gw_pb.GenerativeSearchRequest(
                    collection="Probe",
                    near_vector=ret_pb.NearVector(vector=[0.5] * 4),
                    generate=gw_pb.Generate(grouped_task="x", base_url=url),
                ),
                metadata=CAROL,
            ),
            sinks,
        )
    sinks.assert_none_of([URL_PASSWORD, GATEWAY_KEY])


async def test_redis_password_and_page_token_secret_reach_no_sink(
    stack_factory: StackFactory, sinks: Sinks
) -> None:
    page_secret = "page-token-secret-7a8b9c0d1e2f3a4b"
    stack = await stack_factory(api_keys=GATEWAY_KEYS, memory={"page_token_secret": page_secret})
    await _fails(
        stack.memory.ListConversations(
            mem_pb.ListConversationsRequest(page_token="A" * 40), metadata=CAROL
        ),
        sinks,
    )
    await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=CAROL)
    sinks.reply(
        await stack.memory.ListConversations(
            mem_pb.ListConversationsRequest(page_size=1), metadata=CAROL
        )
    )
    assert stack.memory_settings is not None
    redis_url = stack.memory_settings.redis_url.get_secret_value()
    wrong = redis_url.replace("redis://", f"redis://:{URL_PASSWORD}@", 1)
    broken = await stack_factory(api_keys=GATEWAY_KEYS, memory={"redis_url": wrong})
    for _ in range(2):
        await _fails(
            broken.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=CAROL),
            sinks,
        )
        await _fails(
            broken.stub.Ask(
                gw_pb.AskRequest(collection="Books", llm_question="q", new_conversation=True),
                metadata=CAROL,
            ),
            sinks,
        )
    sinks.assert_none_of([page_secret, URL_PASSWORD, GATEWAY_KEY])
    # Registered with the redactor at start: a line that ever quotes it is masked.
    assert page_secret not in redact(f"signing with {page_secret}")


async def test_embedding_and_rerank_keys_in_upstream_errors_reach_no_sink(
    stack: Stack, sinks: Sinks
) -> None:
    """The caller's keys for a collection's embeddings endpoint and for a reranker, quoted
    back by the endpoint (a 401, a 400 echoing the request, a 500)."""
    await create_embedded(stack)
    await create_books(stack, metadata=ALICE)
    url = stack.fake.base_url
    embedding = (
        *ALICE,
        ("x-embedding-api-key", CALLER_KEY),
        ("x-embedding-base-url", url),
    )
    rerank = (*ALICE, ("x-rerank-api-key", CALLER_KEY), ("x-rerank-base-url", url))
    for behaviour in _quoting(CALLER_KEY):
        stack.fake.enqueue(behaviour)
        await _answer(  # a 500 is retried
            stack.retrieval.Search(
                ret_pb.SearchRequest(collection="Embedded", near_text=ret_pb.NearText(text="x")),
                metadata=embedding,
            ),
            sinks,
        )
        stack.fake.enqueue(behaviour)
        await _answer(  # a failed rerank may leave the hits in their order
            stack.retrieval.Search(
                ret_pb.SearchRequest(
                    collection="Books",
                    near_vector=ret_pb.NearVector(vector=[0.5] * 4),
                    limit=3,
                    rerank=ret_pb.Rerank(base_url=url, query="people", candidates=5),
                ),
                metadata=rerank,
            ),
            sinks,
        )
    print([s[1][:400] for s in sinks.shown])
    assert len(stack.fake.requests) >= 8
    sinks.assert_none_of([CALLER_KEY])
