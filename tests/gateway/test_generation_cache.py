"""The exact generation cache through the whole stack, on a real Redis (standalone, and a
real three-master cluster for the key layout): modes, TTL, what makes a miss, tenants,
collection deletion, errors never stored, streaming, bad cache settings."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, struct_pb2
from redis.asyncio import Redis

from services.common import redis_client
from services.common.redis_client import RedisClient
from services.devlaunch.redis_server import RedisProcess
from services.gateway.generation_cache import GenerationCache, Scope, cache_request_message
from services.gateway.generator import Options
from tests.gateway.conftest import BOOKS, DIM, Stack, StackFactory, create_books, vector
from tests.support.fake_openai import Behaviour
from tests.support.redis_cluster import LocalCluster
from tests.support.rpc import error_info

KEYS = "alice@acme/admin:key-alice-acme,bob@globex/admin:key-bob-globex"
ALICE = (("authorization", "Bearer key-alice-acme"),)
BOB = (("authorization", "Bearer key-bob-globex"),)
USE, REFRESH, BYPASS = gw_pb.CACHE_MODE_USE, gw_pb.CACHE_MODE_REFRESH, gw_pb.CACHE_MODE_BYPASS


def ttl(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def search(
    mode: int = USE, *, limit: int = 5, ttl_s: float | None = None, grouped: bool = True
) -> gw_pb.GenerativeSearchRequest:
    cache = gw_pb.GenerationCache(mode=mode)  # type: ignore[arg-type]
    if ttl_s is not None:
        cache.ttl.CopyFrom(ttl(ttl_s))
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=limit,
        generate=gw_pb.Generate(
            single_prompt="Title: {title}",
            grouped_task="Which is oldest?" if grouped else "",
            cache=cache,
        ),
    )


@pytest.fixture
def prefix() -> str:
    # A key prefix of its own: stacks share the session's Redis.
    return f"gc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cached(stack_factory: StackFactory, shared_redis: RedisProcess, prefix: str) -> Stack:
    # The gateway keeps collections for a minute (the default is 2 s; the stack's 0): a
    # deleted and recreated collection must still start cold. (Redis gets the stack's
    # PATIENT_REDIS timeouts: the cache fails open, and a reply late on a loaded machine
    # was a miss, or an answer not stored, and the LLM calls counted one more.)
    return await stack_factory(
        shared={"api_keys": KEYS},
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
        collection_cache_ttl=60,
    )


def calls(stack: Stack) -> int:
    return len(stack.fake.chat_requests)


def results(response: gw_pb.GenerativeSearchResponse) -> dict[str, gw_pb.GenerationResult]:
    return {h.hit.id: h.generation for h in response.hits}


async def test_use_answers_a_repeat_from_the_cache_with_no_llm_call(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)
    first = await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    # 5 hits + grouped: every one generated now.
    made = calls(cached)
    assert made == 6
    assert not any(g.cached for g in results(first).values()) and not first.grouped.cached
    second = await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    assert calls(cached) == made  # no new call at all
    for hit_id, generation in results(second).items():
        assert generation.cached
        assert generation.result == results(first)[hit_id].result
        assert not generation.HasField("usage") or generation.usage.total_tokens == 0
        # No attempt, no wait: this call made none (QA: attempts 1, the first call's).
        assert generation.attempts == generation.upstream_calls == 0
        assert not generation.HasField("wait_time")
    assert second.grouped.cached and second.grouped.result == first.grouped.result
    assert second.grouped.attempts == 0 and not second.grouped.HasField("wait_time")
    assert second.usage.total_tokens == 0 < first.usage.total_tokens


async def test_the_cache_and_the_quotas_share_one_client_closed_once(
    stack_factory: StackFactory,
    shared_redis: RedisProcess,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One pool for the gateway's Redis: the clients the real ``connect`` makes for the
    gateway's URL are counted (and their closes), and both users of it work on it."""
    # A database of its own tells the gateway's clients from memory's.
    url = shared_redis.url.removesuffix("/0") + "/3"
    made: list[RedisClient] = []
    closes: list[RedisClient] = []
    real = redis_client.connect

    def counted(target: str, **options: Any) -> RedisClient:
        client = real(target, **options)
        if target == url:
            aclose = client.aclose

            async def close() -> None:
                closes.append(client)
                await aclose()

            client.aclose = close  # type: ignore[method-assign]
            made.append(client)
        return client

    monkeypatch.setattr(redis_client, "connect", counted)
    stack = await stack_factory(shared={"api_keys": KEYS}, redis_url=url, quota_key_prefix=prefix)
    await create_books(stack, metadata=ALICE)
    await stack.stub.GenerativeSearch(search(), metadata=ALICE)
    again = await stack.stub.GenerativeSearch(search(), metadata=ALICE)
    assert again.grouped.cached  # the cache read what it stored
    direct = Redis.from_url(url)
    try:
        assert await direct.keys(f"{prefix}:quota:*")  # the quotas counted there
    finally:
        await direct.aclose()
    assert len(made) == 1
    await stack.gateway.stop(0)
    assert closes == made


async def test_refresh_regenerates_and_stores_bypass_neither(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)
    await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    before = calls(cached)
    refreshed = await cached.stub.GenerativeSearch(search(REFRESH), metadata=ALICE)
    assert calls(cached) == before + 6
    assert not any(g.cached for g in results(refreshed).values())
    bypassed = await cached.stub.GenerativeSearch(search(BYPASS), metadata=ALICE)
    assert calls(cached) == before + 12
    assert not any(g.cached for g in results(bypassed).values())
    again = await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    assert calls(cached) == before + 12
    assert all(g.cached for g in results(again).values())


async def test_refresh_replaces_the_stored_answer(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)
    cached.fake.enqueue(*[Behaviour.ok("old answer")] * 6)
    await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    await cached.stub.GenerativeSearch(search(REFRESH), metadata=ALICE)  # default: echo
    made = calls(cached)
    again = await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    assert calls(cached) == made  # every answer from the cache
    assert len(results(again)) == 5
    assert all(g.cached and g.result != "old answer" for g in results(again).values())


async def test_unspecified_follows_the_collection_default(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)  # no cache defaults: off
    await cached.stub.GenerativeSearch(search(gw_pb.CACHE_MODE_UNSPECIFIED), metadata=ALICE)
    before = calls(cached)
    await cached.stub.GenerativeSearch(search(gw_pb.CACHE_MODE_UNSPECIFIED), metadata=ALICE)
    assert calls(cached) == before + 6  # nothing was stored
    on = ret_pb.GenerativeConfig(
        provider="fake", model="fake-model", cache=ret_pb.CacheDefaults(generation=True)
    )
    await create_books(cached, "Cached", metadata=ALICE, generative=on)
    request = search(gw_pb.CACHE_MODE_UNSPECIFIED)
    request.collection = "Cached"
    await cached.stub.GenerativeSearch(request, metadata=ALICE)
    before = calls(cached)
    second = await cached.stub.GenerativeSearch(request, metadata=ALICE)
    assert calls(cached) == before
    assert all(g.cached for g in results(second).values())


async def test_an_answer_lives_for_its_ttl(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    await create_books(cached, metadata=ALICE)
    # 5 s: every entry is still there when the search has returned, however slowly a
    # loaded machine ran the five generations (with 1.5 s the first one stored could
    # expire before the last one was).
    await cached.stub.GenerativeSearch(search(ttl_s=5, grouped=False), metadata=ALICE)
    redis = Redis.from_url(shared_redis.url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:gencache:*")]
        assert len(keys) == 5
        for key in keys:
            assert 0 < await redis.pttl(key) <= 5000
        # Gone when their TTL ends (waited for, not slept: Redis expires them then).
        end = asyncio.get_running_loop().time() + 60
        while [k async for k in redis.scan_iter(match=f"{prefix}:gencache:*")]:
            assert asyncio.get_running_loop().time() < end, "the entries never expired"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    before = calls(cached)
    late = await cached.stub.GenerativeSearch(search(grouped=False), metadata=ALICE)
    assert calls(cached) == before + 5
    assert not any(g.cached for g in results(late).values())


def books_with_cache_ttl(seconds: float) -> ret_pb.CreateCollectionRequest:
    return ret_pb.CreateCollectionRequest(
        collection=ret_pb.Collection(
            name="Books",
            properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
            vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
            generative=ret_pb.GenerativeConfig(
                provider="fake", cache=ret_pb.CacheDefaults(generation=True, ttl=ttl(seconds))
            ),
        )
    )


async def test_a_collection_ttl_above_the_max_is_refused_at_create(cached: Stack) -> None:
    """Before, it was stored and silently cut to CACHE_MAX_TTL at every use."""
    limit = 7 * 86400  # CACHE_MAX_TTL's default
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cached.retrieval.CreateCollection(books_with_cache_ttl(limit + 1), metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "OUT_OF_RANGE",
        "collection.generative.cache.ttl",
    )
    assert info.metadata["max_seconds"] == str(limit)
    assert "GENSEARCH_GATEWAY_CACHE_MAX_TTL" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError):
        await cached.retrieval.GetCollection(
            ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE
        )
    await cached.retrieval.CreateCollection(books_with_cache_ttl(limit), metadata=ALICE)


async def test_a_stored_ttl_above_the_max_is_cut_to_it_at_use(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """A collection may hold more than CACHE_MAX_TTL: stored before an operator lowered
    it, or straight through retrieval (which knows no gateway setting). It is used up to
    the max, not refused."""
    limit = 7 * 86400
    await cached.retrieval_direct.CreateCollection(books_with_cache_ttl(10 * 86400), metadata=ALICE)
    title = struct_pb2.Struct()
    title.update({"title": "Dune"})
    await cached.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Books", objects=[ret_pb.DataObject(properties=title, vector=[0.5] * DIM)]
        ),
        metadata=ALICE,
    )
    request = search(mode=gw_pb.CACHE_MODE_UNSPECIFIED, limit=1, grouped=False)
    await cached.stub.GenerativeSearch(request, metadata=ALICE)
    redis = Redis.from_url(shared_redis.url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:gencache:*")]
        assert len(keys) == 1
        assert (limit - 60) * 1000 < await redis.pttl(keys[0]) <= limit * 1000
    finally:
        await redis.aclose()


async def test_a_changed_object_misses_and_the_rest_hit(cached: Stack) -> None:
    ids = await create_books(cached, metadata=ALICE)
    await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    props = struct_pb2.Struct()
    props.update({**BOOKS[0], "title": "Dune Messiah"})
    await cached.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Books",
            objects=[ret_pb.DataObject(id=ids[0], properties=props, vector=vector(0))],
        ),
        metadata=ALICE,
    )
    before = calls(cached)
    second = await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    by_id = results(second)
    assert not by_id[ids[0]].cached and "Dune Messiah" in by_id[ids[0]].result
    assert all(g.cached for i, g in by_id.items() if i != ids[0])
    # The changed hit and the grouped prompt (it lists every hit) miss.
    assert calls(cached) == before + 2
    assert not second.grouped.cached


async def test_answers_never_cross_tenants(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)
    await create_books(cached, metadata=BOB)  # same name, same objects, other tenant
    await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    before = calls(cached)
    bobs = await cached.stub.GenerativeSearch(search(), metadata=BOB)
    assert calls(cached) == before + 6
    assert not any(g.cached for g in results(bobs).values())


async def test_a_recreated_collection_starts_cold(cached: Stack) -> None:
    ids = await create_books(cached, metadata=ALICE)
    await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    await cached.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    # Same name, same objects under the same ids: same prompts, yet another collection.
    await create_books(cached, metadata=ALICE, books=[])
    objects = []
    for i, book in enumerate(BOOKS):
        props = struct_pb2.Struct()
        props.update(book)
        objects.append(ret_pb.DataObject(id=ids[i], properties=props, vector=vector(i)))
    await cached.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Books", objects=objects), metadata=ALICE
    )
    before = calls(cached)
    fresh = await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    assert calls(cached) == before + 6
    assert not any(g.cached for g in results(fresh).values())


async def cache_keys(redis_url: str, prefix: str) -> list[bytes]:
    client = Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:gencache*")]
    finally:
        await client.aclose()


async def test_deleting_a_collection_drops_its_entries(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    await create_books(cached, metadata=ALICE)
    await create_books(cached, metadata=BOB)  # same name, other tenant: must stay
    await create_books(cached, "Other", metadata=ALICE)  # other collection: must stay
    await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    await cached.stub.GenerativeSearch(search(), metadata=BOB)
    others = search()
    others.collection = "Other"
    await cached.stub.GenerativeSearch(others, metadata=ALICE)
    entries = [k for k in await cache_keys(shared_redis.url, prefix) if b":gencache:" in k]
    assert len(entries) == 18  # 5 hits + grouped, three times
    await cached.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    left = await cache_keys(shared_redis.url, prefix)
    # Alice's Books entries and their index are gone as the delete returns; Bob's
    # Books and Alice's Other are still served from the cache.
    assert len([k for k in left if b":gencache:" in k]) == 12
    assert len([k for k in left if b":gencache-index:" in k]) == 2
    before = calls(cached)
    bobs = await cached.stub.GenerativeSearch(search(), metadata=BOB)
    other = await cached.stub.GenerativeSearch(others, metadata=ALICE)
    assert calls(cached) == before
    assert all(g.cached for g in results(bobs).values())
    assert all(g.cached for g in results(other).values())


async def test_the_index_of_a_collections_entries_names_only_the_live_ones(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """Before, the index set kept every key ever stored (its TTL renewed by each write): a
    tenant caching new prompts, 1200 LLM calls a minute, grew it by that many members a
    minute for as long as it kept at it (gigabytes of the Redis every tenant, the quotas
    and the memory service share), long after the entries had expired; and the DEL of
    that set at DeleteCollection blocked Redis for all of them."""
    await create_books(cached, metadata=ALICE)
    for n in range(3):
        # The first two searches' entries live 1 s and expire before the next search;
        # the last one's live a minute: each write drops the members past their expiry,
        # so with 1 s a loaded machine that took longer than that over the last search's
        # five generations dropped its own first entries (4 members, not 5).
        request = search(ttl_s=1.0 if n < 2 else 60.0, grouped=False)
        request.generate.single_prompt = f"Prompt {n}: {{title}}"  # 5 new keys each time
        await cached.stub.GenerativeSearch(request, metadata=ALICE)
        if n < 2:
            await asyncio.sleep(1.2)  # these entries expire
    redis = Redis.from_url(shared_redis.url)
    try:
        [index] = [k async for k in redis.scan_iter(match=f"{prefix}:gencache-index*")]
        kind = await redis.type(index)
        if kind == b"zset":
            members = await redis.zcard(index)
        else:
            members = await redis.scard(index)  # type: ignore[misc]
        assert members == 5  # the last search's, the live ones (before: 15)
    finally:
        await redis.aclose()


async def test_a_failed_delete_drops_nothing(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    await create_books(cached, metadata=ALICE)
    await cached.stub.GenerativeSearch(search(), metadata=ALICE)
    # Bob has no collection of that name: NOT_FOUND, and Alice's answers stay.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cached.retrieval.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name="Books"), metadata=BOB
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # 6 entries, the index, the tenant's budget ledger and sizes.
    assert len(await cache_keys(shared_redis.url, prefix)) == 9
    # Alice's own delete, failing downstream (retrieval is gone): her answers stay too.
    await cached.stop_service("retrieval")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cached.retrieval.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE, timeout=10
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(await cache_keys(shared_redis.url, prefix)) == 9


async def test_errors_are_never_cached(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)
    cached.fake.enqueue(Behaviour.error(400))  # whichever call comes first fails
    first = await cached.stub.GenerativeSearch(search(grouped=False), metadata=ALICE)
    failed = [i for i, g in results(first).items() if g.HasField("error")]
    assert len(failed) == 1
    before = calls(cached)
    second = await cached.stub.GenerativeSearch(search(grouped=False), metadata=ALICE)
    assert calls(cached) == before + 1  # only the failed one asks again
    by_id = results(second)
    assert not by_id[failed[0]].cached and by_id[failed[0]].result
    assert all(g.cached for i, g in by_id.items() if i != failed[0])


async def test_an_empty_or_filtered_answer_is_never_cached(cached: Stack) -> None:
    """An answer the provider withheld (finish_reason content_filter, empty or cut short)
    or an empty one is no answer to serve the tenant for a TTL (probe: the first search's
    empty, filtered answers came back cached, empty, on every repeat)."""
    await create_books(cached, metadata=ALICE)
    cached.fake.finish_reason_override = "content_filter"
    cached.fake.enqueue(Behaviour.ok(text=""), Behaviour.ok(text="Par"))
    first = await cached.stub.GenerativeSearch(search(limit=1), metadata=ALICE)
    outputs = [first.hits[0].generation, first.grouped]
    assert sorted(g.result for g in outputs) == ["", "Par"]
    assert {g.finish_reason for g in outputs} == {"content_filter"}
    cached.fake.finish_reason_override = None
    cached.fake.enqueue(Behaviour.ok(text=""), Behaviour.ok(text=""))  # empty, "stop"
    second = await cached.stub.GenerativeSearch(search(limit=1), metadata=ALICE)
    assert calls(cached) == 4  # each asked again
    assert not second.hits[0].generation.cached and not second.grouped.cached
    assert second.hits[0].generation.result == second.grouped.result == ""
    third = await cached.stub.GenerativeSearch(search(limit=1), metadata=ALICE)
    assert calls(cached) == 6 and third.hits[0].generation.result
    assert not third.hits[0].generation.cached and not third.grouped.cached
    fourth = await cached.stub.GenerativeSearch(search(limit=1), metadata=ALICE)
    assert calls(cached) == 6 and fourth.hits[0].generation.cached and fourth.grouped.cached


async def test_streaming_marks_cached_results(cached: Stack) -> None:
    await create_books(cached, metadata=ALICE)
    unary = search()
    request = gw_pb.StreamGenerativeSearchRequest()
    request.ParseFromString(unary.SerializeToString())
    request.generate.stream_tokens = True
    async for _ in cached.stub.StreamGenerativeSearch(request, metadata=ALICE):
        pass
    before = calls(cached)
    events = [e async for e in cached.stub.StreamGenerativeSearch(request, metadata=ALICE)]
    assert calls(cached) == before
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "hits" and kinds[-1] == "done"
    per_hit = [e.hit_result for e in events if e.HasField("hit_result")]
    assert len(per_hit) == 5
    generated = [r for r in per_hit if not r.generation.HasField("error")]
    assert len(generated) == 5 and all(r.generation.cached for r in generated)
    tokens = {e.token.hit_index: e.token.delta for e in events if e.HasField("token")}
    for r in generated:
        assert tokens[r.hit_index] == r.generation.result  # the whole text as one delta
    grouped = [e.grouped for e in events if e.HasField("grouped")]
    assert len(grouped) == 1 and grouped[0].cached


@pytest.mark.parametrize(
    ("cache", "field"),
    [
        (gw_pb.GenerationCache(mode=USE, ttl=ttl(10 * 86400)), "generate.cache.ttl"),
        (gw_pb.GenerationCache(mode=USE, ttl=ttl(-1)), "generate.cache.ttl"),
        (gw_pb.GenerationCache(mode=42), "generate.cache.mode"),  # type: ignore[arg-type]
    ],
)
async def test_bad_cache_settings_name_the_field(
    cached: Stack, cache: gw_pb.GenerationCache, field: str
) -> None:
    await create_books(cached, metadata=ALICE)
    request = search()
    request.generate.cache.CopyFrom(cache)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cached.stub.GenerativeSearch(request, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == field
    if field == "generate.cache.ttl":  # its bound and setting (the setting was missing)
        assert error_info(caught.value).metadata["max_seconds"] == str(7 * 86400)
        assert error_info(caught.value).metadata["setting"] == "GENSEARCH_GATEWAY_CACHE_MAX_TTL"
    assert calls(cached) == 0


async def test_without_redis_the_cache_is_off(stack_factory: StackFactory) -> None:
    stack = await stack_factory(shared={"api_keys": KEYS})
    await create_books(stack, metadata=ALICE)
    await stack.stub.GenerativeSearch(search(), metadata=ALICE)
    before = calls(stack)
    again = await stack.stub.GenerativeSearch(search(), metadata=ALICE)
    assert calls(stack) == before + 6
    assert not any(g.cached for g in results(again).values())


async def test_a_redis_that_does_not_answer_never_makes_a_call_late(
    stack_factory: StackFactory,
) -> None:
    """The cache read comes out of the generation budget (QA: with a Redis that accepted
    connections and never answered, a GenerateOnObjects or its stream with a 1.5 s
    deadline failed as a whole, DEADLINE_EXCEEDED with no ErrorInfo and no results: the
    read ran past the margin the budget leaves, then the fan-out got the whole budget
    again)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stack = await stack_factory(
            shared={"api_keys": KEYS},
            redis_url=f"redis://127.0.0.1:{port}",
            # The services' own 0.5 s socket timeout, as this was found with.
            production_redis_timeouts=True,
            quota_concurrent_calls=0,
            quota_llm_calls_per_minute=0,
        )
        stack.fake.latency = 5  # no answer within the deadline either
        one = struct_pb2.Struct(fields={"a": struct_pb2.Value(string_value="x")})
        request = gw_pb.GenerateOnObjectsRequest(
            inline=gw_pb.InlineObjects(objects=[one]),
            generate=gw_pb.Generate(
                single_prompt="{a}", grouped_task="t", cache=gw_pb.GenerationCache(mode=USE)
            ),
        )
        response = await stack.stub.GenerateOnObjects(request, metadata=ALICE, timeout=1.5)
        assert response.hits[0].generation.error.status == "DEADLINE_EXCEEDED"
        assert response.grouped.error.status == "DEADLINE_EXCEEDED"
        streamed = gw_pb.StreamGenerateOnObjectsRequest()
        streamed.ParseFromString(request.SerializeToString())
        events = [
            e.WhichOneof("event")
            async for e in stack.stub.StreamGenerateOnObjects(streamed, metadata=ALICE, timeout=1.5)
        ]
        assert events == ["hits", "hit_result", "grouped", "done"]
    finally:
        server.close()


async def test_a_write_redis_does_not_answer_never_loses_the_answer(
    stack_factory: StackFactory,
) -> None:
    """A hit's cache write is waited for only within the budget (QA: with a Redis that
    never answered, REFRESH hits whose model answered in 0.1 s came back
    DEADLINE_EXCEEDED, each LLM call made and charged: the write held them past it)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stack = await stack_factory(
            shared={"api_keys": KEYS},
            redis_url=f"redis://127.0.0.1:{port}",
            redis_socket_timeout=5,
            redis_connect_timeout=5,
            quota_concurrent_calls=0,
            quota_llm_calls_per_minute=0,
        )
        stack.fake.latency = 0.1
        one = struct_pb2.Struct(fields={"a": struct_pb2.Value(string_value="x")})
        request = gw_pb.GenerateOnObjectsRequest(
            inline=gw_pb.InlineObjects(objects=[one]),
            generate=gw_pb.Generate(
                single_prompt="{a}", grouped_task="t", cache=gw_pb.GenerationCache(mode=REFRESH)
            ),
        )
        # A 3 s budget, still short of Redis' 5 s socket timeout: the hit's and the grouped
        # task's LLM calls (0.1 s each) have room on a loaded machine; with 1 s, what the
        # budget left them after the call's own set-up could run out.
        response = await stack.stub.GenerateOnObjects(request, metadata=ALICE, timeout=3.0)
        assert response.hits[0].generation.result == "x"
        assert response.grouped.result and not response.grouped.HasField("error")
    finally:
        server.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    own = LocalCluster(tmp_path / "cluster")
    try:
        await own.start()
        yield own
    finally:
        own.stop()


@pytest.mark.slow
async def test_on_a_cluster_one_requests_keys_share_a_slot(
    stack_factory: StackFactory, cluster: LocalCluster
) -> None:
    stack = await stack_factory(
        shared={"api_keys": KEYS}, redis_url=cluster.url, redis_cluster=True
    )
    await create_books(stack, metadata=ALICE)
    await create_books(stack, metadata=BOB)
    await stack.stub.GenerativeSearch(search(), metadata=ALICE)
    await stack.stub.GenerativeSearch(search(), metadata=BOB)
    slots: dict[bytes, int] = {}
    for node in cluster.nodes:
        client = node.client()
        try:
            async for key in client.scan_iter(match="*:gencache:*"):
                slots[key] = await client.execute_command("CLUSTER", "KEYSLOT", key)
        finally:
            await client.aclose()
    assert len(slots) == 12  # 5 hits + grouped, twice
    # One slot per tenant: one MGET reads a request's keys, one script keeps its budget.
    assert len(set(slots.values())) == 2
    before = calls(stack)
    again = await stack.stub.GenerativeSearch(search(), metadata=ALICE)
    assert calls(stack) == before
    assert all(g.cached for g in results(again).values())
    # A delete drops the collection's entries across the cluster's nodes; Bob's stay.
    await stack.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    left = 0
    for node in cluster.nodes:
        client = node.client()
        try:
            left += len([k async for k in client.scan_iter(match="*:gencache:*")])
        finally:
            await client.aclose()
    assert left == 6


def test_a_requests_keys_are_the_digest_of_each_whole_generate_request() -> None:
    # keys_for makes the shared parts once; each key must still be the one the whole
    # GenerateRequest (cache_request_message) gives, whatever the options hold.
    options = Options(
        provider="fake",
        model="fake-model",
        temperature=0.3,
        max_tokens=64,
        top_p=0.9,
        stop=("END",),
        seed=7,
        response_format=gen_pb.ResponseFormat(name="answer"),
        fallback=(("other", "small"),),
    )
    scope = Scope("acme", "Books", 123)
    cache = GenerationCache(None, "gc", 3600, 1 << 20)
    key_of = cache.keys_for(scope, options)
    for text in ("Title: Emma", "Title: Dune", ""):
        messages = [gen_pb.Message(role=gen_pb.ROLE_USER, content=text)]
        whole = cache_request_message(options, messages).SerializeToString(deterministic=True)
        digest = hashlib.sha256(whole).hexdigest()
        tenant = hashlib.sha256(b"tenant\0acme").hexdigest()[:32]
        assert key_of(messages) == f"gc:gencache:{{{tenant}}}:{scope.tag()}:{digest}"
    other = cache.keys_for(Scope("globex", "Books", 123), options)
    assert other(messages) != key_of(messages)


@pytest.mark.slow
async def test_a_cluster_with_every_node_down_is_a_miss_not_an_error(
    cluster: LocalCluster,
) -> None:
    # With every node down the cluster client's next map refresh raises
    # RedisClusterException ("cannot be connected"), which is not a RedisError: it once
    # escaped the cache, failing the whole generative call instead of missing.
    client = redis_client.connect(cluster.url, cluster=True, socket_timeout=1, connect_timeout=1)
    cache = GenerationCache(client, "gc", 3600, 1 << 20)
    scope = Scope("acme", "Books", 123)
    key = cache.keys_for(scope, Options(provider="fake", model="m"))(
        [gen_pb.Message(role=gen_pb.ROLE_USER, content="Title: Emma")]
    )
    result = gw_pb.GenerationResult(result="an answer", finish_reason="stop")
    try:
        await cache.put(scope, key, result, 60)
        assert (await cache.get_many({0: key}))[0].result == "an answer"
        for node in cluster.nodes:
            cluster.kill(node)
        for _ in range(3):  # the first fails on its connection, the next on the map
            assert await cache.get_many({0: key}) == {}
            await cache.put(scope, key, result, 60)
            await cache.drop_collection("acme", "Books")
    finally:
        await client.aclose()
