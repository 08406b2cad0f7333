"""The exact generation cache's byte budget per tenant, on a real Redis (standalone, and a
real three-master cluster): a tenant writing many distinct answers stays within it by
evicting its own soonest-expiring entries, another tenant's entries are never touched, and
entries expired by their TTL give their bytes back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from redis.asyncio import Redis

from services.common import redis_client
from services.common.redis_client import RedisClient
from services.devlaunch.redis_server import RedisProcess
from services.gateway.generation_cache import GenerationCache, Scope
from services.gateway.generator import Options
from tests.gateway.conftest import Stack, StackFactory, create_books
from tests.gateway.test_generation_cache import ALICE, BOB, KEYS, search
from tests.support.redis_cluster import LocalCluster

BUDGET = 64 * 1024  # the setting's least
KEY_COPIES = 4  # entry, ledger member, size field, index member


async def usage(redis: Redis | RedisClient, keys: list[bytes]) -> int:
    """What the budget counts of ``keys``' entries: value and key copies (gone: 0)."""
    total = 0
    for key in keys:
        size = await redis.strlen(key)
        total += size + KEY_COPIES * len(key) if size else 0
    return total


async def entries(redis: Redis, prefix: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{prefix}:gencache:*")]


async def test_a_tenant_writing_many_answers_stays_within_its_budget(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    """Before, nothing but the LLM-calls quota times the TTL bounded a tenant's entries:
    Alice's 40 searches kept all 240 answers (about 3 times the budget)."""
    prefix = f"gcb-{uuid.uuid4().hex[:10]}"
    stack: Stack = await stack_factory(
        shared={"api_keys": KEYS},
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
        cache_max_bytes_per_tenant=BUDGET,
    )
    await create_books(stack, metadata=ALICE)
    await create_books(stack, metadata=BOB)
    await stack.stub.GenerativeSearch(search(), metadata=BOB)
    redis = Redis.from_url(shared_redis.url)
    try:
        bobs = await entries(redis, prefix)
        assert len(bobs) == 6
        last = None
        for n in range(40):
            request = search()
            request.generate.single_prompt = f"Prompt {n} with some padding text: {{title}}"
            request.generate.grouped_task = f"Task {n}: which is oldest?"
            last = await stack.stub.GenerativeSearch(request, metadata=ALICE)
        alices = [key for key in await entries(redis, prefix) if key not in bobs]
        assert await usage(redis, alices) <= BUDGET
        assert 0 < len(alices) < 240  # some were evicted, the newest kept
        # Bob's entries are all there, and still answer.
        assert await usage(redis, bobs) > 0 and all([await redis.exists(k) for k in bobs])
        before = len(stack.fake.chat_requests)
        again = await stack.stub.GenerativeSearch(search(), metadata=BOB)
        assert len(stack.fake.chat_requests) == before
        assert all(h.generation.cached for h in again.hits) and again.grouped.cached
        # The newest of Alice's answers are served from the cache.
        assert last is not None
        repeat = search()
        repeat.generate.single_prompt = "Prompt 39 with some padding text: {title}"
        repeat.generate.grouped_task = "Task 39: which is oldest?"
        answer = await stack.stub.GenerativeSearch(repeat, metadata=ALICE)
        assert answer.grouped.cached
    finally:
        await redis.aclose()


def result(text: str) -> gw_pb.GenerationResult:
    return gw_pb.GenerationResult(result=text)


@dataclass
class Written:
    """The keys fill_and_expire left: each tenant's live entries and budget bookkeeping."""

    alice: list[str]
    bob: list[str]


async def fill_and_expire(redis: RedisClient, prefix: str) -> Written:
    """Alice fills her budget with answers that expire, Bob stores a few; once Alice's
    have expired, the next write gives their bytes back at once (before any eviction), so
    new answers fit whole; over budget again, her soonest-expiring entries go (not her
    oldest), and Bob's are never touched."""
    cache = GenerationCache(redis, prefix, 3600, BUDGET)
    alice, bob = Scope("alice", "Books", 1), Scope("bob", "Books", 1)
    key_a, key_b = cache.keys_for(alice, OPTIONS), cache.keys_for(bob, OPTIONS)
    ledger, sizes = cache.ledger_keys("alice")
    text = "x" * 900
    bobs = [key_b(_messages(f"b{n}")) for n in range(5)]
    for key in bobs:
        await cache.put(bob, key, result(text), 3600)
    short = [key_a(_messages(f"old{n}")) for n in range(100)]
    for key in short:
        await cache.put(alice, key, result(text), 0.5)
    # ~125 KB written: without a budget every one would still be there.
    assert sum([await redis.exists(key) for key in short]) < len(short)
    assert await usage(redis, [k.encode() for k in short]) <= BUDGET
    await _until_gone(redis, short)
    # Expired: the next write gives all their bytes back, not just what it needs.
    fresh = [key_a(_messages(f"new{n}")) for n in range(40)]
    # The oldest written expires last: eviction by expiry and by age tell apart.
    ttls = [3600 - 10 * n for n in range(len(fresh))]
    await cache.put(alice, fresh[0], result(text), ttls[0])
    assert await redis.zcard(ledger) == 1
    assert await _total(redis, sizes) == await usage(redis, [fresh[0].encode()])
    for key, ttl in zip(fresh[1:], ttls[1:], strict=True):
        await cache.put(alice, key, result(text), ttl)
    assert all([await redis.exists(key) for key in fresh])  # ~50 KB: all fit
    assert await _total(redis, sizes) == await usage(redis, [k.encode() for k in fresh])
    assert all([await redis.exists(key) for key in bobs])
    # Alice over her budget again with longer-lived answers: her soonest-expiring go
    # first (the last written of ``fresh``), her own entries only.
    more = [key_a(_messages(f"more{n}")) for n in range(20)]
    for key in more:
        await cache.put(alice, key, result(text), 7200)
    assert all([await redis.exists(key) for key in more + bobs])
    kept = [bool(await redis.exists(key)) for key in fresh]
    assert not all(kept), "nothing evicted over the budget"
    assert kept == sorted(kept, reverse=True), f"not the soonest-expiring first: {kept}"
    live = [key for key in fresh + more if await redis.exists(key)]
    assert await usage(redis, [k.encode() for k in live]) <= BUDGET
    assert await _total(redis, sizes) == await usage(redis, [k.encode() for k in live])
    written = Written(
        alice=[*live, ledger, sizes, cache.index_key("alice", "Books")],
        bob=[*bobs, *cache.ledger_keys("bob"), cache.index_key("bob", "Books")],
    )
    # A drop gives the bytes back, too.
    await cache.drop_collection("alice", "Books")
    assert await _total(redis, sizes) == 0
    return written


async def _total(redis: RedisClient, sizes: str) -> int:
    total = await redis.hget(sizes, "#total")  # type: ignore[misc]
    assert total is not None, "no byte count kept"
    return int(total)


OPTIONS = Options(provider="fake", model="fake-model")


def _messages(text: str) -> list[gen_pb.Message]:
    return [gen_pb.Message(role=gen_pb.ROLE_USER, content=text)]


async def _until_gone(redis: RedisClient, keys: list[str]) -> None:
    for _ in range(300):
        if not any([await redis.exists(key) for key in keys]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("entries did not expire")


async def test_expired_entries_give_their_bytes_back(shared_redis: RedisProcess) -> None:
    redis = redis_client.connect(
        shared_redis.url, cluster=False, socket_timeout=5, connect_timeout=2
    )
    try:
        await fill_and_expire(redis, f"gcb-{uuid.uuid4().hex[:10]}")
    finally:
        await redis.aclose()


@pytest.fixture
async def cluster_client(cluster: LocalCluster) -> AsyncIterator[RedisClient]:
    redis = redis_client.connect(cluster.url, cluster=True, socket_timeout=5, connect_timeout=2)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.mark.slow
async def test_on_a_cluster_the_budget_holds_in_one_slot_per_tenant(
    cluster_client: RedisClient, cluster: LocalCluster
) -> None:
    """Every key of a tenant's (entries, ledger, sizes, index) in one slot: one script
    keeps its budget atomically on a cluster."""
    written = await fill_and_expire(cluster_client, f"gcb-{uuid.uuid4().hex[:10]}")
    node = cluster.nodes[0].client()
    try:
        for keys in (written.alice, written.bob):
            slots = {await node.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
            assert len(slots) == 1, (keys, slots)
    finally:
        await node.aclose()


async def test_an_entry_over_the_whole_budget_is_not_stored_and_nothing_is_stuck(
    shared_redis: RedisProcess,
) -> None:
    redis = redis_client.connect(
        shared_redis.url, cluster=False, socket_timeout=5, connect_timeout=2
    )
    try:
        cache = GenerationCache(redis, f"gcb-{uuid.uuid4().hex[:10]}", 3600, BUDGET)
        scope = Scope("alice", "Books", 1)
        key_of = cache.keys_for(scope, OPTIONS)
        small = key_of(_messages("small"))
        await cache.put(scope, small, result("x" * 100), 3600)
        huge = key_of(_messages("huge"))
        await cache.put(scope, huge, result("x" * (BUDGET + 1)), 3600)
        assert not await redis.exists(huge)
        assert await redis.exists(small)  # nothing evicted for what could never fit
        # Sizes left past their ledger (it expired first, or was lost) never keep
        # refusing writes: with nothing tracked, nothing is counted.
        ledger, sizes = cache.ledger_keys("alice")
        await redis.delete(ledger)
        await redis.hset(sizes, "#total", BUDGET)  # type: ignore[misc]
        again = key_of(_messages("again"))
        await cache.put(scope, again, result("x" * 100), 3600)
        assert await redis.exists(again)
        assert await _total(redis, sizes) == await usage(redis, [again.encode()])
    finally:
        await redis.aclose()
