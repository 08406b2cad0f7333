"""Issue 13 to the letter, on what the other tests leave out: a 429 the time allows is
retried on its own pair even with a fallback chain (never failed over early), on every
generating RPC, per hit and grouped, streamed too, and one asking past the pair's share
moves on; a 5xx or a timeout moves to the next pair at once, unretried (and without a
chain a 5xx is still retried); a collection deleted through one gateway is gone from
both caches for another; the semantic threshold's precedence (request, collection,
operator); inline objects' cached answers per tenant and per object; the request's cache
mode and TTL over the collection's. Real gRPC through the gateway, loopback fake
provider, real Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2
from redis.asyncio import Redis

from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import (
    ALICE,
    BOB,
    WITH_BODY,
    Stack,
    StackFactory,
    books_search,
    create_books,
    vector,
)
from tests.gateway.test_issue13_contract import (
    BACKUP,
    _all_results,
    _answered_by_the_fallback,
    _failing_over,
    _requests,
    _struct,
)
from tests.support.fake_openai import Behaviour


async def test_a_429_the_deadline_can_wait_for_is_retried_not_failed_over(stack: Stack) -> None:
    ids = await create_books(stack, books=WITH_BODY)
    for rpc, request in _failing_over(ids, stream_tokens=True):
        stack.fake.reset_stats()
        # As many 429s (Retry-After: a second) as there are calls; which call gets
        # them is the race's, and a call may get two.
        refusals = len(ids) + 1
        stack.fake.enqueue_for_model(
            "primary", *[Behaviour.rate_limited(retry_after="1")] * refusals
        )
        results = await _all_results(stack, rpc, request)
        assert len(results) == len(ids) + 1, rpc
        for result in results:
            assert result.result and not result.HasField("error"), (rpc, result)
            # The primary answered, after waiting when it was refused.
            assert (result.provider, result.model, result.fallback_index) == (
                "fake",
                "primary",
                0,
            ), (rpc, result)
            assert result.attempts == result.upstream_calls >= 1, (rpc, result)
            assert result.attempts == 1 or result.wait_time.ToNanoseconds() > 0, rpc
            assert not result.cached
        # Every 429 was retried on the primary; the backup was never called.
        assert sum(r.attempts - 1 for r in results) == refusals, rpc
        models = [r.json["model"] for r in stack.fake.chat_requests]
        assert models == ["primary"] * (len(results) + refusals), (rpc, models)


# -- §2: "a hit ... that gets a 5xx or a timeout moves to the next", at once -----------------
@pytest.mark.parametrize("fault", ["500", "timeout"])
async def test_a_5xx_or_a_timeout_moves_to_the_next_pair_without_a_retry(
    retrying: Stack, fault: str
) -> None:
    # Retries allowed (the stacks' default is one attempt): the primary is not retried
    # because a next pair exists, not because retries are off.
    stack, fake = retrying, retrying.fake
    ids = await create_books(stack, books=WITH_BODY)
    for rpc, request in _failing_over(
        ids, stream_tokens=True, timeout=duration_pb2.Duration(seconds=20)
    ):
        fake.reset_stats()
        calls = len(ids) + 1
        # One fault per call: a retry on the primary would be answered by it.
        once = Behaviour.hang(30) if fault == "timeout" else Behaviour.error(500)
        fake.enqueue_for_model("primary", *[once] * calls)
        results = await _all_results(stack, rpc, request)
        assert len(results) == calls, rpc
        for result in results:
            _answered_by_the_fallback(result, "fake", "backup", rpc)
            # The backup's own attempt; the primary's one is among upstream_calls.
            assert (result.attempts, result.upstream_calls) == (1, 2), (rpc, result)
        models = [r.json["model"] for r in fake.chat_requests]
        assert sorted(models) == ["backup"] * calls + ["primary"] * calls, (rpc, models)


async def test_without_a_chain_a_5xx_is_retried_on_the_same_pair(retrying: Stack) -> None:
    stack, fake = retrying, retrying.fake
    ids = await create_books(stack, books=WITH_BODY)
    for rpc, request in _requests(
        ids, single_prompt="T {title}", grouped_task="G", model="primary", stream_tokens=True
    ):
        fake.reset_stats()
        calls = len(ids) + 1
        fake.enqueue_for_model("primary", *[Behaviour.error(500)] * calls)
        results = await _all_results(stack, rpc, request)
        assert len(results) == calls, rpc
        for result in results:
            assert result.result and not result.HasField("error"), (rpc, result)
            assert (result.model, result.fallback_index) == ("primary", 0), (rpc, result)
            assert result.attempts == result.upstream_calls >= 1, (rpc, result)
        # Every 500 was retried on the primary: one more call per 500.
        assert sum(r.attempts - 1 for r in results) == calls, rpc
        models = [r.json["model"] for r in fake.chat_requests]
        assert models == ["primary"] * (2 * calls), (rpc, models)


# -- §4: a collection deleted through one gateway is gone from both caches for another ------
async def test_a_deleted_collections_answers_are_gone_for_every_gateway_replica(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    # Two gateways over one retrieval and one Redis, each keeping collections a minute.
    prefix = f"i13-{uuid.uuid4().hex[:8]}"
    shared: dict[str, Any] = {
        "redis_url": shared_redis.url,
        "quota_key_prefix": prefix,
        "collection_cache_ttl": 60,
    }
    first = await stack_factory(**shared)
    second = await stack_factory(
        retrieval_addr=f"127.0.0.1:{first.servers['retrieval'].port}", **shared
    )
    ids = await create_books(first, books=WITH_BODY)
    use = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)
    search = books_search(single_prompt="T {title}", grouped_task="G", cache=use)
    ask = gw_pb.AskRequest(
        collection="Books",
        llm_question="Which book is set on a desert planet?",
        context_size=2,
        semantic_cache=gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE),
    )

    async def answers(stack: Stack) -> tuple[list[bool], bool]:
        response = await stack.stub.GenerativeSearch(search, metadata=ALICE, timeout=60)
        asked = await stack.stub.Ask(ask, metadata=ALICE, timeout=60)
        await stack.ask.idle()  # its semantic store ran
        return [h.generation.cached for h in response.hits] + [response.grouped.cached], (
            asked.cached
        )

    # The second gateway stores; the first is served what it stored: one cache.
    assert await answers(second) == ([False] * (len(ids) + 1), False)
    assert await answers(first) == ([True] * (len(ids) + 1), True)
    assert await answers(second) == ([True] * (len(ids) + 1), True)
    # Deleted through the first and made again, the same objects under the same ids.
    await first.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    await create_books(first, books=[])
    objects = [
        ret_pb.DataObject(id=ids[i], properties=_struct(book), vector=vector(i))
        for i, book in enumerate(WITH_BODY)
    ]
    await first.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Books", objects=objects), metadata=ALICE
    )
    made = len(first.fake.chat_requests)
    # The second gateway, which still keeps the collection as it was, answers afresh.
    assert await answers(second) == ([False] * (len(ids) + 1), False)
    assert len(first.fake.chat_requests) == made + len(ids) + 2


# -- §4: the semantic cache's threshold: the operator's, the collection's, the request's ----
SEM_Q1 = "Which book is set on a desert planet?"
SEM_Q2 = "Which novel takes place on a desert planet?"


async def test_the_semantic_threshold_is_the_requests_else_the_collections_else_the_operators(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(semantic_cache_min_similarity=0.95)

    async def asked(collection: str, question: str, threshold: float | None = None) -> Any:
        cache = gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE)
        if threshold is not None:
            cache.min_similarity = threshold
        request = gw_pb.AskRequest(
            collection=collection, llm_question=question, context_size=2, semantic_cache=cache
        )
        response = await stack.stub.Ask(request, metadata=ALICE, timeout=60)
        await stack.ask.idle()  # its store ran
        return response

    # Neither the request nor the collection says: the operator's 0.95 keeps Q2 from
    # Q1's answer.
    await create_books(stack)
    await asked("Books", SEM_Q1)
    made = len(stack.fake.chat_requests)
    assert not (await asked("Books", SEM_Q2)).cached
    assert len(stack.fake.chat_requests) == made + 1
    # A collection content with 0.5: its threshold decides, Q2 has Q1's answer.
    loose = ret_pb.GenerativeConfig(
        provider="fake", model="fake-model", cache=ret_pb.CacheDefaults(min_similarity=0.5)
    )
    await create_books(stack, "Loose", generative=loose)
    await asked("Loose", SEM_Q1)
    made = len(stack.fake.chat_requests)
    near = await asked("Loose", SEM_Q2)
    assert near.cached and len(stack.fake.chat_requests) == made
    # The service's default (0.92) would have served it in Books too: the operator's
    # setting decided there.
    assert 0.92 <= near.cached_similarity < 0.95
    # The request's own threshold wins over the collection's.
    assert not (await asked("Loose", SEM_Q2, 0.95)).cached
    assert len(stack.fake.chat_requests) == made + 1


# -- §4 x §5: inline objects' cached answers stay in their tenant; a changed one misses ----
async def test_inline_objects_answers_are_cached_per_tenant_and_per_object(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    stack = await stack_factory(
        redis_url=shared_redis.url, quota_key_prefix=f"i13-{uuid.uuid4().hex[:8]}"
    )
    use = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)

    def inline(*objects: dict[str, Any], stream: bool = False) -> Any:
        kind = gw_pb.StreamGenerateOnObjectsRequest if stream else gw_pb.GenerateOnObjectsRequest
        return kind(
            inline=gw_pb.InlineObjects(objects=[_struct(o) for o in objects]),
            generate=gw_pb.Generate(single_prompt="{name}?", grouped_task="G", cache=use),
        )

    tea, cake = {"name": "tea"}, {"name": "cake"}
    fresh = await _all_results(stack, "GenerateOnObjects", inline(tea, cake))
    assert not any(r.cached for r in fresh)
    made = len(stack.fake.chat_requests)
    # A repeat, unary or streamed, is answered from the cache: no call.
    for rpc, stream in (("GenerateOnObjects", False), ("StreamGenerateOnObjects", True)):
        again = await _all_results(stack, rpc, inline(tea, cake, stream=stream))
        assert [r.cached for r in again] == [True] * 3, rpc
        assert [r.result for r in again] == [r.result for r in fresh], rpc
    assert len(stack.fake.chat_requests) == made
    # Another tenant's same objects are never answered from Alice's entries.
    bobs = await _all_results(stack, "GenerateOnObjects", inline(tea, cake), BOB)
    assert not any(r.cached for r in bobs)
    assert len(stack.fake.chat_requests) == made + 3
    # A changed object misses alone (and the grouped prompt, which holds it).
    changed = await _all_results(stack, "GenerateOnObjects", inline({"name": "coffee"}, cake))
    assert [r.cached for r in changed] == [False, True, False]
    assert changed[0].result == "coffee?"


# -- §4: a collection's cache default against the request's mode and TTL ----------------------
def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


async def test_the_requests_mode_and_ttl_win_over_the_collections_defaults(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    prefix = f"i13-{uuid.uuid4().hex[:8]}"
    stack = await stack_factory(redis_url=shared_redis.url, quota_key_prefix=prefix)
    on = ret_pb.GenerativeConfig(
        provider="fake",
        model="fake-model",
        cache=ret_pb.CacheDefaults(generation=True, ttl=_seconds(500)),
    )
    await create_books(stack, books=WITH_BODY, generative=on)
    redis = Redis.from_url(shared_redis.url)

    async def lifetimes() -> list[float]:
        """The stored entries' lifetimes left, in seconds; the entries are then dropped."""
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:gencache:*")]
        left = [await redis.pttl(k) / 1000 for k in keys]
        if keys:
            await redis.delete(*keys)
        return left

    try:
        # Mode unset: the collection's (on), with its TTL.
        await stack.stub.GenerativeSearch(books_search(single_prompt="A {title}"), metadata=ALICE)
        assert [400 < t <= 500 for t in await lifetimes()] == [True] * len(WITH_BODY)
        # The request's TTL wins over the collection's.
        cache = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE, ttl=_seconds(50))
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="B {title}", cache=cache), metadata=ALICE
        )
        assert [0 < t <= 50 for t in await lifetimes()] == [True] * len(WITH_BODY)
    finally:
        await redis.aclose()
    # REFRESH in the request, over the collection's default: regenerates and replaces.
    search = books_search(single_prompt="C {title}")
    await stack.stub.GenerativeSearch(search, metadata=ALICE)
    made = len(stack.fake.chat_requests)
    stack.fake.reply = "refreshed"
    refresh = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_REFRESH)
    refreshed = await stack.stub.GenerativeSearch(
        books_search(single_prompt="C {title}", cache=refresh), metadata=ALICE
    )
    assert not any(h.generation.cached for h in refreshed.hits)
    assert len(stack.fake.chat_requests) == made + len(WITH_BODY)
    again = await stack.stub.GenerativeSearch(search, metadata=ALICE)
    assert [(h.generation.cached, h.generation.result) for h in again.hits] == [
        (True, "refreshed")
    ] * len(WITH_BODY)
    assert len(stack.fake.chat_requests) == made + len(WITH_BODY)


async def test_a_429_asking_past_the_primarys_share_of_the_time_moves_on_at_once(
    stack: Stack,
) -> None:
    """The other side of the first test (docs/generation.md#fallback-chains): with 10 s and a
    backup, the primary may spend half; a Retry-After of 6 s would leave the backup 4 s
    were it waited for, so the backup answers now."""
    await create_books(stack, books=WITH_BODY)
    stack.fake.enqueue_for_model("primary", Behaviour.rate_limited(retry_after="6"))
    request = books_search(
        limit=1,
        single_prompt="T {title}",
        model="primary",
        fallback=BACKUP,
        timeout=duration_pb2.Duration(seconds=10),
    )
    (hit,) = (await stack.stub.GenerativeSearch(request, metadata=ALICE, timeout=30)).hits
    result = hit.generation
    assert (result.model, result.fallback_index, result.attempts) == ("backup", 1, 1)
    assert result.upstream_calls == 2  # the primary once (its 429), the backup once
    assert [r.json["model"] for r in stack.fake.chat_requests] == ["primary", "backup"]
