"""Issue 13's contract checked from outside, on the cases the other tests leave out: the
grouped result and generation over named objects reporting what the provider's limits
cost, a grouped call's fallback and corrective retry, an HTTP-date Retry-After, a
preset's unknown model on every generating RPC, and the cache key following each
sampling parameter. Real gRPC through the gateway, unary and streaming, against the
loopback fake provider."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2
from prometheus_client import REGISTRY

from services.common.server import GrpcServer
from services.devlaunch.redis_server import RedisProcess
from services.generation.__main__ import build_server as build_generation
from services.generation.settings import GenerationSettings
from tests.gateway.conftest import (
    ALICE,
    BOOKS,
    DIM,
    TOKEN,
    WITH_BODY,
    Stack,
    StackFactory,
    books_search,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.redis_patience import PATIENT_REDIS
from tests.support.rpc import error_info

BACKUP = [gen_pb.ModelChoice(provider="fake", model="backup")]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}},
    "required": ["title"],
}


def _schema() -> gen_pb.ResponseFormat:
    s = struct_pb2.Struct()
    s.update(SCHEMA)
    return gen_pb.ResponseFormat(name="t", json_schema=s)


def _streamed(request: Any, kind: type) -> Any:
    out = kind()
    out.ParseFromString(request.SerializeToString())
    return out


async def _grouped(stack: Stack, rpc: str, request: Any) -> gw_pb.GenerationResult:
    """The grouped result of a unary or streaming generating RPC."""
    if rpc.startswith("Stream"):
        events = [e async for e in getattr(stack.stub, rpc)(request, metadata=ALICE, timeout=60)]
        (grouped,) = [e.grouped for e in events if e.HasField("grouped")]
        return grouped
    response = await getattr(stack.stub, rpc)(request, metadata=ALICE, timeout=60)
    return response.grouped


def _requests(ids: list[str], **generate: Any) -> list[tuple[str, Any]]:
    """The same generate block on all four generating RPCs."""
    search = books_search(**generate)
    objects = gw_pb.GenerateOnObjectsRequest(
        collection="Books", ids=gw_pb.ObjectIds(ids=ids), generate=gw_pb.Generate(**generate)
    )
    return [
        ("GenerativeSearch", search),
        ("StreamGenerativeSearch", _streamed(search, gw_pb.StreamGenerativeSearchRequest)),
        ("GenerateOnObjects", objects),
        ("StreamGenerateOnObjects", _streamed(objects, gw_pb.StreamGenerateOnObjectsRequest)),
    ]


def _failing_over(ids: list[str], **generate: Any) -> list[tuple[str, Any]]:
    """``_requests`` with single and grouped prompts, for model "primary" (made to fail)
    and then the fallback "backup"."""
    return _requests(
        ids, single_prompt="T {title}", grouped_task="G", model="primary", fallback=BACKUP,
        **generate,
    )  # fmt: skip


def _answered_by_the_fallback(
    result: gw_pb.GenerationResult, provider: str, model: str, rpc: str
) -> None:
    """``result`` is an answer, from the chain's first fallback: ``provider``'s ``model``."""
    assert result.result and not result.HasField("error"), (rpc, result)
    assert (result.provider, result.model, result.fallback_index) == (provider, model, 1), rpc


def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


# -- §1: a grouped call's 429 is retried and reported ----------------------------------------
@pytest.mark.parametrize("tokens", [False, True], ids=["whole", "tokens"])
@pytest.mark.parametrize("retry_after", ["1", "date"])
async def test_a_grouped_call_refused_429_is_retried_and_says_what_it_cost(
    stack: Stack, retry_after: str, tokens: bool
) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    for rpc, request in _requests(ids, grouped_task="Which is oldest?", stream_tokens=tokens):
        stack.fake.reset_stats()
        header = _http_date(2) if retry_after == "date" else retry_after
        stack.fake.enqueue(Behaviour.rate_limited(retry_after=header))
        grouped = await _grouped(stack, rpc, request)
        assert grouped.result and not grouped.HasField("error"), (rpc, grouped)
        assert (grouped.attempts, grouped.upstream_calls) == (2, 2), rpc
        assert grouped.wait_time.ToNanoseconds() > 0, rpc
        assert [r.json["model"] for r in stack.fake.chat_requests] == ["fake-model"] * 2


@pytest.mark.parametrize("rpc", ["GenerativeSearch", "StreamGenerativeSearch"])
async def test_a_hit_refused_with_an_http_date_retry_after_waits_and_succeeds(
    stack: Stack, rpc: str
) -> None:
    await create_books(stack, books=WITH_BODY)
    stack.fake.enqueue(Behaviour.rate_limited(retry_after=_http_date(2)))
    request = books_search(limit=1, single_prompt="About {title}")
    if rpc == "StreamGenerativeSearch":
        request = _streamed(request, gw_pb.StreamGenerativeSearchRequest)
        events = [e async for e in stack.stub.StreamGenerativeSearch(request, metadata=ALICE)]
        (result,) = [e.hit_result.generation for e in events if e.HasField("hit_result")]
    else:
        (hit,) = (await stack.stub.GenerativeSearch(request, metadata=ALICE)).hits
        result = hit.generation
    assert result.result and result.attempts == 2
    assert result.wait_time.ToNanoseconds() > 0
    # The date's whole seconds were honoured: the retry came after the 429's date.
    first, second = stack.fake.chat_requests
    assert second.received_at > first.received_at


# -- §2: a grouped call falls back and names who answered ------------------------------------
async def test_a_grouped_call_falls_back_on_a_5xx_and_names_the_pair(stack: Stack) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    for rpc, request in _requests(ids, grouped_task="Compare", model="primary", fallback=BACKUP):
        grouped = await _grouped(stack, rpc, request)
        _answered_by_the_fallback(grouped, "fake", "backup", rpc)


async def test_a_grouped_output_invalid_twice_is_its_own_error_after_one_retry(
    stack: Stack,
) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    stack.fake.reply = "not json at all"
    for rpc, request in _requests(
        ids, single_prompt="T {title}", grouped_task="Compare", response_format=_schema()
    ):
        stack.fake.reset_stats()
        grouped = await _grouped(stack, rpc, request)
        assert grouped.error.reason == "INVALID_OUTPUT", rpc
        assert grouped.error.status == "FAILED_PRECONDITION"
        assert grouped.upstream_calls == 2, rpc
        # Every hit and the grouped call: its answer and exactly one corrective retry.
        assert len(stack.fake.chat_requests) == 2 * (len(ids) + 1), rpc


async def test_a_valid_grouped_output_over_named_objects_is_structured(stack: Stack) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    stack.fake.reply = json.dumps({"title": "all"})
    for rpc, request in _requests(ids, grouped_task="Compare", response_format=_schema()):
        grouped = await _grouped(stack, rpc, request)
        assert json_format.MessageToDict(grouped.structured) == {"title": "all"}, rpc


# -- §2: a preset's unknown model, on every generating RPC ----------------------------------
ANYSCALE_KEY = (("x-anyscale-api-key", "esecret_test"),)


@pytest.mark.parametrize("checked", [True, False])
async def test_an_unknown_anyscale_model_is_refused_before_any_call_on_every_rpc(
    stack_factory: StackFactory, fake: FakeOpenAI, checked: bool
) -> None:
    stack = await stack_factory(
        extra_providers=[{"name": "anyscale", "base_url": fake.base_url, "check_models": checked}],
        allowed_hosts="http://127.0.0.1",
    )
    ids = await create_books(stack, books=WITH_BODY)
    generate = {"single_prompt": "About {title}", "grouped_task": "G", "provider": "anyscale"}
    calls: list[tuple[str, Any]] = _requests(ids, model="gpt-4", **generate)
    ask = {"collection": "Books", "llm_question": "Which?", "provider": "anyscale"}
    calls.append(("Ask", gw_pb.AskRequest(llm_model="gpt-4", **ask)))  # type: ignore[arg-type]
    calls.append(("StreamAsk", gw_pb.StreamAskRequest(llm_model="gpt-4", **ask)))  # type: ignore[arg-type]
    # A known primary with an unknown model in its chain.
    chain = [gen_pb.ModelChoice(provider="anyscale", model="gpt-4")]
    calls.append(
        (
            "GenerativeSearch",
            books_search(
                provider="anyscale",
                model="meta-llama/Llama-2-13b-chat-hf",
                single_prompt="About {title}",
                fallback=chain,
            ),
        )
    )
    metadata = ALICE + ANYSCALE_KEY
    for rpc, request in calls:
        fake.reset_stats()
        call = getattr(stack.stub, rpc)(request, metadata=metadata, timeout=30)
        if not checked:
            if rpc.startswith("Stream"):
                [e async for e in call]
            else:
                await call
            assert fake.chat_requests, rpc
            continue
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if rpc.startswith("Stream"):
                [e async for e in call]
            else:
                await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
        field = error_info(caught.value).metadata["field"]
        assert field.endswith("model"), (rpc, field)
        assert "model" in (caught.value.details() or ""), rpc
        assert fake.chat_requests == [], rpc


# -- §4: the cache key follows every sampling parameter ---------------------------------------
@pytest.fixture
async def cached(stack_factory: StackFactory, shared_redis: RedisProcess) -> Stack:
    return await stack_factory(redis_url=shared_redis.url, quota_key_prefix="c13-cache")


SAMPLING: list[dict[str, Any]] = [
    {"top_p": 0.5},
    {"stop": ["END"]},
    {"frequency_penalty": 0.5},
    {"presence_penalty": 0.5},
    {"seed": 7},
    {"temperature": 0.3},
    {"max_tokens": 50},
    {"model": "other-model"},
]


@pytest.mark.parametrize("change", SAMPLING, ids=lambda c: next(iter(c)))
async def test_each_sampling_parameter_is_part_of_the_cache_key(
    cached: Stack, change: dict[str, Any]
) -> None:
    await create_books(cached, books=WITH_BODY)
    use = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)
    base: dict[str, Any] = {"single_prompt": "T {title}", "grouped_task": "G", "cache": use}
    await cached.stub.GenerativeSearch(books_search(**base), metadata=ALICE)
    again = await cached.stub.GenerativeSearch(books_search(**base), metadata=ALICE)
    assert all(h.generation.cached for h in again.hits) and again.grouped.cached
    made = len(cached.fake.chat_requests)
    changed = await cached.stub.GenerativeSearch(books_search(**base, **change), metadata=ALICE)
    assert not any(h.generation.cached for h in changed.hits) and not changed.grouped.cached
    assert len(cached.fake.chat_requests) == made + len(WITH_BODY) + 1
    # The changed parameter reached the provider.
    (name, value), *_ = change.items()
    sent = cached.fake.chat_requests[-1].json
    assert sent.get(name) == value or (name == "max_tokens" and sent.get("max_completion_tokens"))


async def test_a_grouped_result_over_named_objects_is_cached_and_marked(cached: Stack) -> None:
    ids = await create_books(cached, books=WITH_BODY)
    use = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)
    for rpc, request in _requests(ids, grouped_task="Oldest?", cache=use):
        await _grouped(cached, rpc, request)
        made = len(cached.fake.chat_requests)
        grouped = await _grouped(cached, rpc, request)
        assert grouped.cached and grouped.result, rpc
        assert len(cached.fake.chat_requests) == made, rpc


# -- §5: a missing id while streaming --------------------------------------------------------
async def test_a_missing_id_is_that_objects_own_not_found_when_streaming(stack: Stack) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    missing = "00000000-0000-4000-8000-000000000000"
    request = gw_pb.StreamGenerateOnObjectsRequest(
        collection="Books",
        ids=gw_pb.ObjectIds(ids=[ids[0], missing]),
        generate=gw_pb.Generate(single_prompt="T {title}", grouped_task="G"),
    )
    events = [e async for e in stack.stub.StreamGenerateOnObjects(request, metadata=ALICE)]
    results = {
        e.hit_result.hit_index: e.hit_result.generation for e in events if e.HasField("hit_result")
    }
    assert results[0].result == "T Dune"
    assert results[1].error.status == "NOT_FOUND"
    (grouped,) = [e.grouped for e in events if e.HasField("grouped")]
    assert grouped.result


# -- §1: two gateways in front of two generation replicas keep to one provider limit ------------
LIMIT, WINDOW = 5, 1.0
DECLARED = {"requests_per_minute": LIMIT * 60 / WINDOW, "rate_window": WINDOW, "rate_burst": 0.2}


async def _limited_replica(
    fake: FakeOpenAI, redis_url: str, prefix: str, declared: dict[str, Any]
) -> GrpcServer:
    server = await build_generation(
        GenerationSettings(
            providers=[fake_provider(fake, max_concurrency=None, **declared)],
            default_provider="fake",
            metrics_port=None,
            internal_token=TOKEN,
            grace_period=0.5,
            redis_url=redis_url,
            limits_key_prefix=prefix,
            **PATIENT_REDIS,  # shared limits fail open on a late Redis reply
        ),
        port=0,
    )
    await server.start()
    return server


async def _hit_results(
    stack: Stack, request: gw_pb.GenerativeSearchRequest, *, stream: bool
) -> list[Any]:
    if stream:
        streamed = _streamed(request, gw_pb.StreamGenerativeSearchRequest)
        events = [
            e async for e in stack.stub.StreamGenerativeSearch(streamed, metadata=ALICE, timeout=60)
        ]
        return [e.hit_result.generation for e in events if e.HasField("hit_result")]
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE, timeout=60)
    return [h.generation for h in response.hits]


IN_FLIGHT = 3
# tokens_per_minute: the fake counts tokens as OpenAI does, each hit's prompt + max_tokens
# when it arrives: 12 ("About Book 7": 3 prompt words, and max_tokens 9, which the answer
# uses, cut there from a longer reply). The replicas charge each hit 13 up front (~3.5
# characters a token) and keep it (tokens_counted "reserved", the default). A window
# allows 96 tokens: the 20 hits (240 tokens) are spread over several windows, none of which
# the replicas together take past 96 (each replica alone would).
ANSWER_TOKENS, TOKENS = 9, 96
DECLARED_TOKENS = {"tokens_per_minute": TOKENS * 60 / WINDOW, "rate_window": WINDOW}


def _limited(limit: str) -> tuple[FakeOpenAI, dict[str, Any], dict[str, Any]]:
    """The fake provider keeping to ``limit``, what the replicas declare, and what each hit
    asks for."""
    if limit == "max_in_flight":
        # Each replica alone would let 3 run: together they still let 3 run, not 6.
        return FakeOpenAI(latency=0.3), {"max_in_flight": IN_FLIGHT}, {}
    if limit == "tokens_per_minute":
        fake = FakeOpenAI(
            token_limit=TOKENS, rate_window=WINDOW, reply="word " * 50, token_counting="reserved"
        )
        # Half a window's tokens (48) at once, the rest refilled evenly over the window.
        declared = {**DECLARED_TOKENS, "rate_burst": 0.5}
        return fake, declared, {"max_tokens": ANSWER_TOKENS}
    return FakeOpenAI(rate_limit=LIMIT, rate_window=WINDOW), DECLARED, {}


@pytest.mark.parametrize("limit", ["requests_per_minute", "tokens_per_minute", "max_in_flight"])
async def test_two_gateways_and_two_generation_replicas_keep_to_the_limit_together(
    stack_factory: StackFactory, shared_redis: RedisProcess, limit: str
) -> None:
    fake, declared, asked = _limited(limit)
    async with fake as limited:
        prefix = f"c13-{uuid.uuid4().hex[:8]}"
        replicas = [
            await _limited_replica(limited, shared_redis.url, prefix, declared) for _ in range(2)
        ]
        try:
            target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
            first = await stack_factory(generation=False, generation_addr=target)
            await create_books(
                first, books=[dict(b, title=f"Book {i}") for i, b in enumerate(BOOKS * 2)]
            )
            second = await stack_factory(
                generation=False,
                generation_addr=target,
                retrieval_addr=f"127.0.0.1:{first.servers['retrieval'].port}",
            )
            request = books_search(limit=10, single_prompt="About {title}", **asked)
            both = await asyncio.gather(
                _hit_results(first, request, stream=False),
                _hit_results(second, request, stream=True),
            )
        finally:
            for replica in replicas:
                await replica.stop(0)
    results = [r for rs in both for r in rs]
    assert len(results) == 20
    assert all(r.result and not r.HasField("error") for r in results)
    assert limited.rate_limited == 0
    if limit == "max_in_flight":
        assert limited.max_concurrent == IN_FLIGHT
    elif limit == "tokens_per_minute":
        assert limited.max_tokens_per_window <= TOKENS
        # Every hit cost what the budget above assumes, and reached the fake once.
        assert all(r.usage.total_tokens == 12 for r in results)
        assert sum(limited.window_tokens.values()) == 20 * 12
    else:
        assert limited.max_per_window <= LIMIT
    # Most waited their turn and say so.
    assert sum(r.wait_time.ToNanoseconds() > 0 for r in results) >= 10


# -- §1: AIMD through the gateway: shrinks on 429s, timeouts and rising latency, grows back --
def _limit_of(provider: str) -> float:
    value = REGISTRY.get_sample_value("gensearch_llm_concurrency_limit", {"provider": provider})
    assert value is not None
    return value


async def _fan_out(stack: Stack, provider: str, hits: int = 8) -> list[gw_pb.GenerationResult]:
    request = books_search(limit=hits, single_prompt="About {title}", provider=provider)
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE, timeout=60)
    return [h.generation for h in response.hits]


async def _lowest_limit_during(name: str, fan_out: Awaitable[object]) -> float:
    task = asyncio.ensure_future(fan_out)
    lowest = _limit_of(name)
    while not task.done():
        lowest = min(lowest, _limit_of(name))
        await asyncio.sleep(0.01)
    await task
    return min(lowest, _limit_of(name))


@pytest.mark.parametrize("signal", ["429", "timeout", "latency"])
async def test_the_concurrency_limit_shrinks_on_overload_and_grows_back(
    stack_factory: StackFactory, fake: FakeOpenAI, signal: str
) -> None:
    name = f"aimd{signal}"
    provider = fake_provider(
        fake,
        name=name,
        max_concurrency=None,
        adaptive_recovery=None,  # only successes grow it back: what this test watches
        latency_factor=3.0 if signal == "latency" else None,
        first_byte_timeout=10.0 if signal == "latency" else 0.5,
    )
    stack = await stack_factory(extra_providers=[provider])
    await create_books(stack, books=[dict(BOOKS[0], title=f"Book {i}") for i in range(8)])
    # The latency signal compares answers with their recent average: a base latency far
    # above the milliseconds a loaded machine adds keeps the first fan-out from reading as
    # a rise (at 0.05 s, a busy CI host made one and shrank the limit before any overload).
    base = 0.3 if signal == "latency" else 0.05
    fake.latency = base
    await _fan_out(stack, name)
    assert _limit_of(name) == float("inf")  # no ceiling, nothing pushed back yet
    # Each overload fails its hits outright (a Retry-After past the deadline, a timeout
    # not retried): no success in the same fan-out grows the limit back before it is read.
    if signal == "429":
        fake.enqueue(*[Behaviour.rate_limited(retry_after="3600")] * 8)
    elif signal == "timeout":
        fake.enqueue(*[Behaviour.hang(3)] * 4)
    else:
        for _ in range(3):
            await _fan_out(stack, name)
        # Slow answers, a tenth of a second apart: the first shrinks the limit, and the
        # last, alone in flight by then, is no rise and adds one back (by design: a
        # burst's last answer is not an overload), so the shrink is read while it runs.
        fake.enqueue(*[Behaviour.ok(latency=12 * base + 0.1 * i) for i in range(8)])
    shrunk = await _lowest_limit_during(name, _fan_out(stack, name))
    assert shrunk < 8
    fake.latency = base
    fake.clear_queue()
    for _ in range(2):
        assert all(r.result for r in await _fan_out(stack, name))
    assert _limit_of(name) > shrunk


# -- §4: the semantic cache: StreamAsk with history, another collection ------------------------
SEM_Q1 = "Which book is set on a desert planet?"
SEM_Q2 = "Which novel takes place on a desert planet?"


def _sem_ask(question: str, **fields: Any) -> gw_pb.AskRequest:
    cache = gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE, min_similarity=0.5)
    return gw_pb.AskRequest(
        collection=fields.pop("collection", "Books"),
        llm_question=question,
        context_size=2,
        semantic_cache=cache,
        **fields,
    )


async def test_stream_ask_with_history_is_never_served_from_the_semantic_cache(
    stack: Stack,
) -> None:
    await create_books(stack)
    await stack.stub.Ask(_sem_ask(SEM_Q1), metadata=ALICE)
    await stack.ask.idle()
    cached = await stack.stub.Ask(_sem_ask(SEM_Q2), metadata=ALICE)
    assert cached.cached  # the control: without history it is served
    started = await stack.stub.Ask(_sem_ask(SEM_Q1, new_conversation=True), metadata=ALICE)
    made = len(stack.fake.chat_requests)
    request = _streamed(
        _sem_ask(SEM_Q2, conversation_id=started.conversation_id, rewrite_query=False),
        gw_pb.StreamAskRequest,
    )
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    (answer,) = [e.answer for e in events if e.HasField("answer")]
    assert not answer.cached and answer.interaction_id
    assert len(stack.fake.chat_requests) == made + 1


async def test_the_semantic_cache_never_answers_over_another_collection(stack: Stack) -> None:
    await create_books(stack)
    await create_books(stack, "Shelf")
    await stack.stub.Ask(_sem_ask(SEM_Q1), metadata=ALICE)
    await stack.ask.idle()
    made = len(stack.fake.chat_requests)
    other = await stack.stub.Ask(_sem_ask(SEM_Q1, collection="Shelf"), metadata=ALICE)
    assert not other.cached and len(stack.fake.chat_requests) == made + 1


# -- §2: sampling parameters reach every call a hit makes ----------------------------------------
SAMPLED: dict[str, Any] = {
    "top_p": 0.8,
    "stop": ["\n\n"],
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "seed": 7,
}


def _sent_sampling(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body.get(name) for name in SAMPLED}


async def _drain(stack: Stack, rpc: str, request: Any) -> None:
    call = getattr(stack.stub, rpc)(request, metadata=ALICE, timeout=60)
    if rpc.startswith("Stream"):
        [e async for e in call]
    else:
        await call


async def test_sampling_parameters_reach_fallback_pairs_and_corrective_retries(
    stack: Stack,
) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    # The backup's first answer is invalid, its corrective retry valid.
    for rpc, request in _failing_over(
        ids, response_format=_schema(), stream_tokens=True, **SAMPLED
    ):
        stack.fake.reset_stats()
        answers = iter(["not json", json.dumps({"title": "t"})] * 10)
        stack.fake.reply = lambda body, answers=answers: next(answers)  # type: ignore[misc]
        await _drain(stack, rpc, request)
        bodies = [r.json for r in stack.fake.chat_requests]
        assert {b["model"] for b in bodies} == {"primary", "backup"}, rpc
        # A corrective retry happened (the validation error went back to the model).
        assert any(len(b["messages"]) > 2 for b in bodies if b["model"] == "backup"), rpc
        for body in bodies:
            assert _sent_sampling(body) == SAMPLED, (rpc, body["model"])
            assert body["response_format"]["json_schema"]["schema"] == SCHEMA
            assert body["response_format"]["type"] == "json_schema"


# -- §2: a hit whose 429s outlast its deadline moves to the next pair -------------------------
async def test_a_rate_limit_the_hit_cannot_wait_for_moves_to_the_next_pair(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    async with FakeOpenAI() as other:
        stack = await stack_factory(extra_providers=[fake_provider(other, name="other")])
        ids = await create_books(stack, books=WITH_BODY)
        fake.by_model["fake-model"] = Behaviour.rate_limited(retry_after="3600")
        chain = [gen_pb.ModelChoice(provider="other", model="other-model")]
        for rpc, request in _requests(
            ids, single_prompt="T {title}", grouped_task="G", fallback=chain
        ):
            results = await _all_results(stack, rpc, request)
            for result in results:
                _answered_by_the_fallback(result, "other", "other-model", rpc)


async def _all_results(
    stack: Stack, rpc: str, request: Any, metadata: Any = ALICE
) -> list[gw_pb.GenerationResult]:
    """Every per-hit result and the grouped one of a unary or streaming generating RPC."""
    if rpc.startswith("Stream"):
        events = [e async for e in getattr(stack.stub, rpc)(request, metadata=metadata, timeout=60)]
        return [e.hit_result.generation for e in events if e.HasField("hit_result")] + [
            e.grouped for e in events if e.HasField("grouped")
        ]
    response = await getattr(stack.stub, rpc)(request, metadata=metadata, timeout=60)
    return [h.generation for h in response.hits] + [response.grouped]


# -- §4: a cached answer keeps what the answer said: structured, provider, model -------------
async def test_a_cached_answer_keeps_its_structured_output_and_the_pair_that_answered(
    cached: Stack,
) -> None:
    ids = await create_books(cached, books=WITH_BODY)
    cached.fake.reply = json.dumps({"title": "t"})
    cached.fake.by_model["primary"] = Behaviour.error(503)
    use = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)
    for i in range(4):  # each RPC its own prompts: a fresh miss, then its repeat
        rpc, request = _requests(
            ids,
            single_prompt=f"T{i} {{title}}",
            grouped_task=f"G{i}",
            model="primary",
            fallback=BACKUP,
            response_format=_schema(),
            cache=use,
        )[i]
        fresh = await _all_results(cached, rpc, request)
        made = len(cached.fake.chat_requests)
        again = await _all_results(cached, rpc, request)
        assert len(cached.fake.chat_requests) == made, rpc
        assert len(again) == len(fresh) == len(ids) + 1
        for before, after in zip(fresh, again, strict=True):
            assert after.cached and not before.cached, rpc
            assert after.result == before.result
            assert json_format.MessageToDict(after.structured) == {"title": "t"}, rpc
            assert (after.provider, after.model, after.fallback_index) == (
                "fake",
                "backup",
                1,
            ), (rpc, after)


# -- §2: a preset's default model is the one sent ----------------------------------------------
async def test_the_anyscale_preset_sends_its_default_model(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await stack_factory(
        extra_providers=[{"name": "anyscale", "base_url": fake.base_url}],
    )
    ids = await create_books(stack, books=WITH_BODY)
    for rpc, request in _requests(ids, single_prompt="T {title}", provider="anyscale"):
        fake.reset_stats()
        results = await _all_results(stack, rpc, request, ALICE + ANYSCALE_KEY)
        assert {r.model for r in results[:-1]} == {"meta-llama/Llama-2-70b-chat-hf"}, rpc
        assert {r.json["model"] for r in fake.chat_requests} == {"meta-llama/Llama-2-70b-chat-hf"}
        # The preset's temperature 0 too.
        assert {r.json.get("temperature") for r in fake.chat_requests} == {0.0}


# -- §2: a caller's base URL on every generating RPC ---------------------------------------------
async def test_a_callers_base_url_is_checked_on_every_generating_rpc(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    async with FakeOpenAI() as theirs:
        stack = await stack_factory(
            generation_settings={"allowed_hosts": f"http://127.0.0.1:{theirs.port}"}
        )
        ids = await create_books(stack, books=WITH_BODY)
        theirs.reply = "theirs"
        allowed = _requests(
            ids, single_prompt="T {title}", grouped_task="G", base_url=theirs.base_url
        )
        for rpc, request in allowed:
            results = await _all_results(stack, rpc, request)
            assert {r.result for r in results} == {"theirs"}, rpc
        assert fake.chat_requests == []
        refused = _requests(
            ids, single_prompt="T {title}", grouped_task="G", base_url=fake.base_url
        )
        for rpc, request in refused:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _drain(stack, rpc, request)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, rpc
            assert error_info(caught.value).metadata["field"] == "generate.base_url", rpc
        assert fake.chat_requests == []


# -- §5: inline objects, streamed ---------------------------------------------------------------
async def test_inline_objects_stream_per_object_and_grouped(stack: Stack) -> None:
    objects = [{"name": "tea", "price": 3}, {"name": "cake", "price": 4.5}]
    request = gw_pb.StreamGenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=[_struct(o) for o in objects]),
        generate=gw_pb.Generate(
            single_prompt="{name} at {price}", grouped_task="Cheapest?", stream_tokens=True
        ),
    )
    events = [e async for e in stack.stub.StreamGenerateOnObjects(request, metadata=ALICE)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "hits" and kinds[-2:] == ["grouped", "done"]
    results = {
        e.hit_result.hit_index: e.hit_result.generation.result
        for e in events
        if e.HasField("hit_result")
    }
    assert results == {0: "tea at 3", 1: "cake at 4.5"}
    assert "tea" in events[-2].grouped.result and "cake" in events[-2].grouped.result
    assert any(e.HasField("token") and e.token.grouped for e in events)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


# §2's 5xx or timeout moving on, unretried: test_issue13_letter.py (one fault per call, so
# a retry on the primary would be answered and show).


async def test_an_unknown_anyscale_model_is_refused_by_the_forwarded_generation_api(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await stack_factory(extra_providers=[{"name": "anyscale", "base_url": fake.base_url}])
    generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[no-untyped-call]
    message = gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")
    metadata = ALICE + ANYSCALE_KEY
    for stream in (False, True):
        fields: dict[str, Any] = {"provider": "anyscale", "model": "gpt-4", "messages": [message]}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if stream:
                request = gen_pb.StreamGenerateRequest(**fields)
                [c async for c in generation.StreamGenerate(request, metadata=metadata)]
            else:
                await generation.Generate(gen_pb.GenerateRequest(**fields), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).metadata["field"] == "model"
    assert fake.chat_requests == []
    # The default model, unnamed, is the one called.
    reply = await generation.Generate(
        gen_pb.GenerateRequest(provider="anyscale", messages=[message]), metadata=metadata
    )
    assert reply.model == "meta-llama/Llama-2-70b-chat-hf"
    assert [r.json["model"] for r in fake.chat_requests] == ["meta-llama/Llama-2-70b-chat-hf"]


# -- §4: the semantic cache's modes and TTL ------------------------------------------------------
def _sem_mode(question: str, mode: int, ttl: float | None = None) -> gw_pb.AskRequest:
    request = _sem_ask(question)
    request.semantic_cache.mode = mode  # type: ignore[assignment]
    if ttl is not None:
        request.semantic_cache.ttl.FromNanoseconds(int(ttl * 1e9))
    return request


async def _asked(stack: Stack, request: gw_pb.AskRequest) -> gw_pb.AskResponse:
    response = await stack.stub.Ask(request, metadata=ALICE)
    await stack.ask.idle()  # its store ran
    return response


async def test_the_semantic_caches_modes_and_ttl(stack: Stack) -> None:
    await create_books(stack)
    use, refresh, bypass = gw_pb.CACHE_MODE_USE, gw_pb.CACHE_MODE_REFRESH, gw_pb.CACHE_MODE_BYPASS
    # BYPASS stores nothing: a USE after it still generates.
    assert not (await _asked(stack, _sem_mode(SEM_Q1, bypass))).cached
    assert not (await _asked(stack, _sem_mode(SEM_Q1, use))).cached
    # BYPASS does not read what USE stored.
    made = len(stack.fake.chat_requests)
    assert not (await _asked(stack, _sem_mode(SEM_Q2, bypass))).cached
    assert len(stack.fake.chat_requests) == made + 1
    # REFRESH regenerates and stores: the next USE gets the refreshed answer.
    stack.fake.reply = "refreshed"
    refreshed = await _asked(stack, _sem_mode(SEM_Q1, refresh))
    assert not refreshed.cached and refreshed.answer.startswith("refreshed")
    again = await _asked(stack, _sem_mode(SEM_Q2, use))
    assert again.cached and again.answer == refreshed.answer
    # A stored answer lives for its TTL. 5 s: the next Ask finds it however slowly a
    # loaded machine runs the store and that Ask (with 1 s it could expire in between).
    stack.fake.reply = "short-lived"
    await _asked(stack, _sem_mode(UNRELATED_Q, refresh, ttl=5.0))
    assert (await _asked(stack, _sem_mode(UNRELATED_Q, use))).cached
    await asyncio.sleep(5.5)
    assert not (await _asked(stack, _sem_mode(UNRELATED_Q, use))).cached


# Far from SEM_Q1 in meaning, but it finds a book (an Ask that finds nothing is not stored).
UNRELATED_Q = "Who is the hacker in a cyberpunk future?"


# -- §4 x §5: a collection's cache default applies to named objects, streaming too -------------
async def test_a_collections_cache_default_applies_to_named_objects(cached: Stack) -> None:
    on = ret_pb.GenerativeConfig(
        provider="fake", model="fake-model", cache=ret_pb.CacheDefaults(generation=True)
    )
    ids = await create_books(cached, "Cached", books=WITH_BODY, generative=on)
    objects = [{"title": "Tea", "body": "Hot."}]
    for rpc, request in _requests(ids, single_prompt="T {title}", grouped_task="G"):
        request.collection = "Cached"
        if rpc == "GenerativeSearch" or rpc == "StreamGenerativeSearch":
            continue  # the collection default on a search: test_generation_cache.py
        inline = type(request)(
            collection="Cached",
            inline=gw_pb.InlineObjects(objects=[_struct(o) for o in objects]),
            generate=request.generate,
        )
        for named in (request, inline):
            fresh = await _all_results(cached, rpc, named)
            made = len(cached.fake.chat_requests)
            again = await _all_results(cached, rpc, named)
            assert len(cached.fake.chat_requests) == made, rpc
            # The stream reads what the unary call stored: the same key.
            assert any(r.cached for r in fresh) == rpc.startswith("Stream"), rpc
            assert all(r.cached for r in again), rpc
        # BYPASS in the request wins over the collection's default.
        bypass = type(request)()
        bypass.CopyFrom(request)
        bypass.generate.cache.mode = gw_pb.CACHE_MODE_BYPASS
        made = len(cached.fake.chat_requests)
        assert not any(r.cached for r in await _all_results(cached, rpc, bypass))
        assert len(cached.fake.chat_requests) == made + len(ids) + 1
    # A changed object misses, the others still hit.
    changed = _struct({**WITH_BODY[0], "title": "Dune Messiah"})
    await cached.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Cached",
            objects=[ret_pb.DataObject(id=ids[0], properties=changed, vector=[0.1] * DIM)],
        ),
        metadata=ALICE,
    )
    request = gw_pb.GenerateOnObjectsRequest(
        collection="Cached",
        ids=gw_pb.ObjectIds(ids=ids),
        generate=gw_pb.Generate(single_prompt="T {title}", grouped_task="G"),
    )
    response = await cached.stub.GenerateOnObjects(request, metadata=ALICE)
    assert [h.generation.cached for h in response.hits] == [False] + [True] * (len(ids) - 1)
    assert response.hits[0].generation.result == "T Dune Messiah"
    assert not response.grouped.cached
