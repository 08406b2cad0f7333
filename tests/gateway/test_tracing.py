"""One trace per request across all four services (real gRPC servers on loopback, the fake
LLM), collected in memory."""

from __future__ import annotations

import uuid
from collections import Counter

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import (
    ALICE,
    BOOKS,
    DIM,
    Stack,
    StackFactory,
    create_books,
    vector,
)
from tests.support.fake_openai import Behaviour

GENERATE = "/gensearch.generation.v1.GenerationService/Generate"
SERVICES = {"gateway", "retrieval", "generation", "memory"}


def _trace_of(spans: InMemorySpanExporter, root_name: str) -> list[ReadableSpan]:
    """Every span in the trace whose root is the gateway's server span ``root_name``."""
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == root_name and s.kind == SpanKind.SERVER]
    assert root.parent is None  # the test client sends no trace context
    trace_id = root.context.trace_id
    return [s for s in finished if s.context.trace_id == trace_id]


def _service(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"]).removeprefix("gensearch-")


def _rpc(trace: list[ReadableSpan], kind: SpanKind, name: str) -> list[ReadableSpan]:
    return [s for s in trace if s.kind == kind and s.name == name]


def _assert_connected(trace: list[ReadableSpan]) -> None:
    """One tree: every span but the root has its parent in the trace."""
    ids = {s.context.span_id for s in trace}
    roots = [s for s in trace if s.parent is None]
    assert len(roots) == 1, [s.name for s in roots]
    for span in trace:
        assert span.parent is None or span.parent.span_id in ids, span.name


def _assert_rpc_pairs(trace: list[ReadableSpan]) -> None:
    """Each downstream server span is the child of the gateway's client span for it."""
    by_id = {s.context.span_id: s for s in trace}
    for server in (s for s in trace if s.kind == SpanKind.SERVER and s.parent is not None):
        client = by_id[server.parent.span_id]  # type: ignore[union-attr]
        assert (client.kind, client.name) == (SpanKind.CLIENT, server.name)
        assert _service(client) == "gateway"


async def _generative_search(stack: Stack) -> list[ReadableSpan]:
    await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=len(BOOKS),
            generate=gw_pb.Generate(single_prompt="Summarise {title}"),
        ),
        metadata=ALICE,
    )
    assert len(response.hits) == len(BOOKS)
    assert all(h.generation.result for h in response.hits)
    return response  # type: ignore[return-value]


async def test_generative_search_is_one_trace(stack: Stack, spans: InMemorySpanExporter) -> None:
    await _generative_search(stack)
    trace = _trace_of(spans, "/gensearch.gateway.v1.GatewayService/GenerativeSearch")
    _assert_connected(trace)
    _assert_rpc_pairs(trace)
    assert {_service(s) for s in trace} == {"gateway", "retrieval", "generation"}
    servers = Counter(s.name for s in trace if s.kind == SpanKind.SERVER)
    assert servers["/gensearch.retrieval.v1.RetrievalService/Search"] == 1
    # One generation call per hit, each its own server span.
    assert servers[GENERATE] == len(BOOKS)
    assert len(_rpc(trace, SpanKind.CLIENT, GENERATE)) == len(BOOKS)
    assert all(_service(s) == "generation" for s in _rpc(trace, SpanKind.SERVER, GENERATE))


async def test_ask_is_one_trace_across_all_four_services(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    await create_books(stack)
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="Tell me about desert planets", new_conversation=True
        ),
        metadata=ALICE,
    )
    assert answer.answer and answer.interaction_id
    trace = _trace_of(spans, "/gensearch.gateway.v1.GatewayService/Ask")
    _assert_connected(trace)
    _assert_rpc_pairs(trace)
    assert {_service(s) for s in trace} == SERVICES
    servers = Counter(s.name for s in trace if s.kind == SpanKind.SERVER)
    assert servers["/gensearch.retrieval.v1.RetrievalService/Search"] == 1
    assert servers[GENERATE] == 1
    assert servers["/gensearch.memory.v1.MemoryService/CreateInteraction"] == 1
    # Every service's part is in it, on its own server spans.
    assert {_service(s) for s in trace if s.kind == SpanKind.SERVER} == SERVICES


async def test_generative_search_has_a_span_per_hit_and_per_llm_call(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    await _generative_search(stack)
    trace = _trace_of(spans, "/gensearch.gateway.v1.GatewayService/GenerativeSearch")
    by_id = {s.context.span_id: s for s in trace}
    # Per hit: a gateway span between the request and that hit's generation call.
    hits = {by_id[c.parent.span_id] for c in _rpc(trace, SpanKind.CLIENT, GENERATE) if c.parent}
    assert len(hits) == len(BOOKS)
    assert all(h.kind == SpanKind.INTERNAL and _service(h) == "gateway" for h in hits)
    # Per LLM call (OpenTelemetry GenAI conventions: "chat <model>", a CLIENT span) in the
    # generation service, under the Generate server span that made it.
    llm = [s for s in trace if s.name.startswith("chat ")]
    assert len(llm) == len(BOOKS)
    for call in llm:
        assert call.kind == SpanKind.CLIENT and _service(call) == "generation"
        parent = call
        while parent.parent is not None and parent.name != GENERATE:
            parent = by_id[parent.parent.span_id]
        assert parent.name == GENERATE and parent.kind == SpanKind.SERVER


async def test_each_hit_span_says_provider_model_attempts_and_cache(
    stack_factory: StackFactory, shared_redis: RedisProcess, spans: InMemorySpanExporter
) -> None:
    # A first call generates (one failure retried upstream), a second is answered from the
    # generation cache: each hit still has its span, saying which.
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=f"tr-{uuid.uuid4().hex[:10]}",
        generation_settings={"retry_max_attempts": 2, "retry_base_backoff": 0.01},
    )
    await create_books(stack)
    request = gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=vector(0)),  # the one nearest: Dune
        limit=1,
        generate=gw_pb.Generate(
            single_prompt="Summarise {title}",
            cache=gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE),
        ),
    )
    stack.fake.enqueue(Behaviour.error(503))
    first = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    assert first.hits[0].generation.attempts == 2
    again = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    assert again.hits[0].generation.cached
    hits = [s for s in spans.get_finished_spans() if s.name == "generate hit 0"]
    assert len(hits) == 2
    generated, cached = (dict(s.attributes or {}) for s in hits)
    for attributes in (generated, cached):
        assert attributes["gen_ai.provider.name"] == "fake"
        assert attributes["gen_ai.request.model"] == "fake-model"
        assert attributes["gensearch.hit.index"] == 0
    assert generated["gensearch.cache.hit"] is False
    assert generated["gensearch.upstream.attempts"] == 2
    assert cached["gensearch.cache.hit"] is True
    assert cached["gensearch.upstream.attempts"] == 0  # no call made


async def test_a_failed_hit_span_says_provider_and_attempts(
    stack_factory: StackFactory, spans: InMemorySpanExporter
) -> None:
    stack = await stack_factory()
    await create_books(stack)
    stack.fake.enqueue(Behaviour.error(400))
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=vector(0)),  # the one nearest: Dune
            limit=1,
            generate=gw_pb.Generate(single_prompt="Summarise {title}"),
        ),
        metadata=ALICE,
    )
    assert response.hits[0].generation.error.status == "INVALID_ARGUMENT"
    (hit,) = [s for s in spans.get_finished_spans() if s.name == "generate hit 0"]
    attributes = dict(hit.attributes or {})
    assert attributes["gensearch.outcome"] == "INVALID_ARGUMENT"
    assert attributes["gen_ai.provider.name"] == "fake"
    assert attributes["gen_ai.request.model"] == "fake-model"
    assert attributes["gensearch.upstream.attempts"] == 1
    assert attributes["gensearch.cache.hit"] is False


def _span_texts(spans: InMemorySpanExporter) -> str:
    """Everything a span exports that could hold text: names, attributes, events, status."""
    parts = []
    for span in spans.get_finished_spans():
        parts += [span.name, str(span.status.description), str(dict(span.attributes or {}))]
        parts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    return "\n".join(parts)


async def test_no_prompt_property_or_answer_goes_into_a_span(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    # No setting puts them there: they are the callers' data, and a trace backend is read
    # by operators. One GenerativeSearch (per hit and grouped) and one Ask.
    await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=len(BOOKS),
            generate=gw_pb.Generate(
                single_prompt="Summarise {title}", grouped_task="Rank by zanyness"
            ),
        ),
        metadata=ALICE,
    )
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="Which planet has sandworms?"),
        metadata=ALICE,
    )
    assert answer.answer and response.grouped.result
    exported = _span_texts(spans)
    assert "generate hit " in exported and "chat fake-model" in exported
    secrets = ["Summarise", "zanyness", "sandworms", answer.answer, response.grouped.result]
    secrets += [h.generation.result for h in response.hits if h.generation.result]
    for book in BOOKS:
        secrets += [book["title"], book["body"]] if book["body"] else [book["title"]]
    assert [s for s in secrets if s in exported] == []


CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER = (
    ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
    ("baggage", "tenant=globex,user=mallory"),
)


async def test_a_callers_trace_context_is_linked_not_followed(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    # A caller of the gateway chose the trace id (another tenant's, or one for all its
    # calls) and the sampled flag, and its baggage went on to every service behind: the
    # trace is now the gateway's own, linked to the caller's span (OpenTelemetry's
    # "public endpoint"; GENSEARCH_GATEWAY_TRUST_CALLER_TRACE=true follows it).
    await create_books(stack)
    for _ in range(2):
        await stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(
                collection="Books",
                near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
                limit=1,
                generate=gw_pb.Generate(single_prompt="Summarise {title}"),
            ),
            metadata=ALICE + CALLER,
        )
    finished = spans.get_finished_spans()
    assert all(s.context.trace_id != int(CALLER_TRACE, 16) for s in finished)
    roots = [
        s
        for s in finished
        if s.name == "/gensearch.gateway.v1.GatewayService/GenerativeSearch"
        and s.kind == SpanKind.SERVER
    ]
    assert len(roots) == 2 and roots[0].context.trace_id != roots[1].context.trace_id
    for root in roots:
        assert root.parent is None
        (link,) = root.links
        assert (link.context.trace_id, link.context.span_id) == (
            int(CALLER_TRACE, 16),
            int(CALLER_SPAN, 16),
        )
        # The services behind follow the gateway's trace: still one trace per request.
        trace = [s for s in finished if s.context.trace_id == root.context.trace_id]
        _assert_connected(trace)
        _assert_rpc_pairs(trace)
        assert {_service(s) for s in trace} == {"gateway", "retrieval", "generation"}


async def test_the_operator_may_follow_the_callers_trace(
    stack_factory: StackFactory, spans: InMemorySpanExporter
) -> None:
    stack = await stack_factory(trust_caller_trace=True)
    await create_books(stack)
    await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books", near_vector=ret_pb.NearVector(vector=[0.5] * DIM), limit=1
        ),
        metadata=ALICE + CALLER,
    )
    (root,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "/gensearch.gateway.v1.GatewayService/GenerativeSearch"
        and s.kind == SpanKind.SERVER
    ]
    assert root.parent is not None and root.parent.span_id == int(CALLER_SPAN, 16)
    assert root.context.trace_id == int(CALLER_TRACE, 16)
    assert not root.links
