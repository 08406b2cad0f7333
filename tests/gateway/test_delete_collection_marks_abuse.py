"""The gateway's DeleteCollection reads the collection's creation time first and, once the
delete succeeded, writes a generation-cache drop mark for that exact collection
(generation_cache.dropped_key). Abuse guards: a delete that fails (a reader's, a name
that does not exist, retrieval down) writes no mark and every answer names what it
refuses; a tenant deleting its own collection of the same name as another tenant's fences
only its own; flooding deletes of names that do not exist leaves Redis without marks."""

from __future__ import annotations

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from redis.asyncio import Redis

from services.devlaunch.redis_server import RedisProcess
from services.gateway.generation_cache import GenerationCache
from tests.gateway.conftest import Stack, create_books
from tests.gateway.test_generation_cache import USE, cache_keys, search
from tests.support.rpc import error_info

ALICE = (("authorization", "Bearer key-alice-acme"),)
RITA = (("authorization", "Bearer key-rita-acme"),)
BOB = (("authorization", "Bearer key-bob-globex"),)


async def _marks(redis: RedisProcess, prefix: str) -> list[bytes]:
    return [k for k in await cache_keys(redis.url, prefix) if b":gencache-dropped:" in k]


async def _refused(
    stack: Stack, name: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name=name), metadata=metadata
        )
    return caught.value


async def _served_from_cache(stack: Stack) -> bool:
    repeat = await stack.stub.GenerativeSearch(search(USE), metadata=ALICE)
    return all(h.generation.cached for h in repeat.hits) and repeat.grouped.cached


async def test_a_readers_delete_writes_no_mark_and_leaves_the_cache_serving(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """A reader may read the collection (the gateway's GetCollection runs as the caller)
    but not delete it: PERMISSION_DENIED naming the role, no mark, and the tenant's
    cached answers still served and stored."""
    await create_books(cached, metadata=ALICE)
    await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    err = await _refused(cached, "Books", RITA)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(err)
    assert info is not None and info.metadata.get("required_role") == "admin", info
    assert await _marks(shared_redis, prefix) == []
    assert await _served_from_cache(cached)


async def test_deleting_names_that_do_not_exist_writes_no_mark(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """Many deletes of names nobody has (and of another tenant's collection, which this
    tenant cannot see): each NOT_FOUND naming the field, and Redis holds no mark."""
    await create_books(cached, metadata=ALICE)
    for n in range(20):
        err = await _refused(cached, f"Nothing{n}", BOB)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(err)
        assert info is not None and info.metadata.get("field") in ("name", "collection"), info
    err = await _refused(cached, "Books", BOB)  # Alice's, not Bob's
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await _marks(shared_redis, prefix) == []


async def test_a_tenant_deleting_its_own_collection_of_a_shared_name_fences_only_its_own(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """Bob deletes his Books while Alice's Books is live: one mark (Bob's), and Alice's
    answers are still stored and served from the cache."""
    await create_books(cached, metadata=ALICE)
    await create_books(cached, metadata=BOB)
    await cached.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=BOB
    )
    assert len(await _marks(shared_redis, prefix)) == 1
    await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    assert await _served_from_cache(cached)


async def test_a_delete_with_retrieval_down_is_unavailable_and_writes_no_mark(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """Retrieval down: the gateway's GetCollection fails, the delete answers for itself
    (UNAVAILABLE with ErrorInfo, never INTERNAL/UNKNOWN), and no mark is written."""
    await create_books(cached, metadata=ALICE)
    await cached.stop_service("retrieval")
    err = await _refused(cached, "Books", ALICE)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err) is not None
    assert await _marks(shared_redis, prefix) == []


async def test_drop_marks_count_in_the_tenants_byte_budget(
    cached: Stack, shared_redis: RedisProcess, prefix: str
) -> None:
    """A mark lives CACHE_MAX_TTL (a week by default): a tenant creating and deleting a
    collection in a loop leaves one per delete. They are the tenant's entries, in its
    ledger and byte budget, so a loop cannot grow the shared Redis past that budget.
    Before, each mark was a bare key outside any budget: the ledger held none and the
    tenant's total was 0 after three deletes."""
    for _ in range(3):
        await create_books(cached, metadata=ALICE)
        await cached.retrieval.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
        )
    marks = await _marks(shared_redis, prefix)
    assert len(marks) == 3  # three collections, three creation times
    ledger, sizes = GenerationCache(None, prefix, 60.0, 64 * 1024).ledger_keys("acme")
    client = Redis.from_url(shared_redis.url)
    try:
        tracked = set(await client.zrange(ledger, 0, -1))
        total = int(await client.hget(sizes, "#total") or 0)  # type: ignore[misc]
    finally:
        await client.aclose()
    assert tracked == set(marks)
    assert total >= sum(len(m) for m in marks)
