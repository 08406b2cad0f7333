"""A collection deleted through the gateway while a call on it is half done: a generative
search whose LLM calls are held (unary and streaming), an ImportObjects stream held between
two messages. Every answer a clear status naming the collection, never INTERNAL; nothing
the delete removed comes back; no generation-cache answer of the old collection is served
to its successor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2
from redis.asyncio import Redis

from services.devlaunch.redis_server import RedisProcess
from services.gateway import generation_cache
from services.gateway.generation_cache import LONGEST_SEARCH_SECONDS, Scope
from tests.gateway.conftest import (
    CACHE_KEYS,
    Stack,
    StackFactory,
    create_books,
    retrieval_calls,
    vector,
)
from tests.gateway.test_generation_cache import ALICE, USE, cache_keys, search
from tests.support.relay import Relay, serving
from tests.support.rpc import error_info
from tests.support.waiting import until


async def _delete(stack: Stack) -> None:
    await stack.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )


async def _gone(stack: Stack) -> None:
    """The collection is not there, nor listed: nothing made it again."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.GetCollection(
            ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.metadata.get("field") in ("name", "collection"), info
    listed = await stack.retrieval.ListCollections(ret_pb.ListCollectionsRequest(), metadata=ALICE)
    assert [c.name for c in listed.collections] == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_generative_search_whose_collection_is_deleted_while_it_generates(
    cached: Stack, shared_redis: RedisProcess, prefix: str, streaming: bool
) -> None:
    """The search's LLM calls held on the fake's gate while DeleteCollection runs through
    the gateway: the search answers with the hits it read before (a snapshot), the
    collection stays gone, and its answers are not stored after the drop: nothing of
    them is left in Redis (unreachable, yet counted in the tenant's byte budget until
    their TTL). Before, all six entries (five hits and the grouped task) were stored after
    the drop. A search after the delete is NOT_FOUND naming ``collection``; a collection
    made again under the name starts cold."""
    await create_books(cached, metadata=ALICE)
    cached.fake.gate = asyncio.Event()
    request = search(USE)

    async def run() -> object:
        if streaming:
            return [m async for m in cached.stub.StreamGenerativeSearch(request, metadata=ALICE)]
        return await cached.stub.GenerativeSearch(request, metadata=ALICE)

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(cached.fake.gate_reached.wait(), 30)  # a bound, not a timing
        await _delete(cached)
    finally:
        cached.fake.gate.set()
    outcome = await task  # answered (a stream's events too), none an error
    if isinstance(outcome, gw_pb.GenerativeSearchResponse):
        generated = [h.generation for h in outcome.hits]
        assert len(generated) == 5 and all(g.result and not g.cached for g in generated)
    entries = [k for k in await cache_keys(shared_redis.url, prefix) if b":gencache:" in k]
    assert entries == []  # 6 before: stored after the drop
    await _gone(cached)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cached.stub.GenerativeSearch(request, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.metadata["field"] == "collection"
    # Made again under the name: its first search generates, none served from the cache.
    await create_books(cached, metadata=ALICE)
    again = await cached.stub.GenerativeSearch(request, metadata=ALICE)
    assert not any(h.generation.cached for h in again.hits) and not again.grouped.cached
    # The old collection's drop mark leaves the new one's answers cached.
    repeat = await cached.stub.GenerativeSearch(request, metadata=ALICE)
    assert all(h.generation.cached for h in repeat.hits) and repeat.grouped.cached


async def test_an_import_whose_collection_is_deleted_between_two_messages(
    cached: Stack,
) -> None:
    """An ImportObjects stream held after its first message (written: counted) while the
    collection is deleted: the next message is NOT_FOUND naming ``collection``, with what
    the stream imported before; the collection is not made again (guard: held before)."""
    await create_books(cached, metadata=ALICE)
    second = asyncio.Event()

    def batch(start: int) -> list[ret_pb.DataObject]:
        objects = []
        for i in range(start, start + 3):
            props = struct_pb2.Struct()
            props.update({"title": f"Imported {i}", "year": 2000 + i})
            objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
        return objects

    async def batches() -> AsyncIterator[ret_pb.ImportObjectsRequest]:
        yield ret_pb.ImportObjectsRequest(collection="Books", objects=batch(0))
        await second.wait()
        yield ret_pb.ImportObjectsRequest(objects=batch(3))

    async def run() -> ret_pb.ImportObjectsResponse:
        return await cached.retrieval.ImportObjects(batches(), metadata=ALICE)

    async def first_message_written() -> bool:
        count = await cached.retrieval.CountObjects(
            ret_pb.CountObjectsRequest(collection="Books"), metadata=ALICE
        )
        return count.count == 8

    task = asyncio.create_task(run())
    try:
        await until(first_message_written, "the first message written", timeout=30)
        await _delete(cached)
    finally:
        second.set()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await task
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.metadata["field"] == "collection"
    # The first message's objects are counted, and the second made nothing again.
    assert (info.metadata["received_count"], info.metadata["imported_count"]) == ("3", "3")
    await _gone(cached)


async def test_the_delete_fences_the_collection_it_removed_with_no_read_before(
    stack_factory: StackFactory, shared_redis: RedisProcess, prefix: str
) -> None:
    """A reader's DeleteCollection is PERMISSION_DENIED before any downstream call (it
    cost a GetCollection before: the gateway read the creation time first). An admin's
    delete reads nothing either: its drop mark names the creation time retrieval's delete
    answers (the collection it removed), the one the collection had. The mark lives the
    longest a search runs, not CACHE_MAX_TTL (7 days: a collection restored from a backup,
    same creation time, had its stores refused that long)."""
    stack = await stack_factory(
        shared={"api_keys": CACHE_KEYS},
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
    )
    await create_books(stack, metadata=ALICE)
    got = await stack.retrieval.GetCollection(
        ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE
    )
    created = got.collection.create_time
    reads = retrieval_calls("GetCollection")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name="Books"),
            metadata=(("authorization", "Bearer key-rita-acme"),),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert retrieval_calls("GetCollection") == reads  # 1 before
    deleted = await stack.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    assert retrieval_calls("GetCollection") == reads  # 1 before
    assert deleted.create_time == created
    marks = [k for k in await cache_keys(shared_redis.url, prefix) if b"gencache-dropped" in k]
    tag = Scope("acme", "Books", created.ToNanoseconds()).tag()
    assert len(marks) == 1 and marks[0].endswith(tag.encode()), marks
    redis = Redis.from_url(shared_redis.url)
    try:
        life_ms = await redis.pttl(marks[0])
    finally:
        await redis.aclose()
    assert 0 < life_ms <= LONGEST_SEARCH_SECONDS * 1000  # 7 days before
    await _gone(stack)


async def test_a_search_phase_is_cut_where_the_drop_marks_reach_ends(
    cached: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop mark lives LONGEST_SEARCH_SECONDS, which counts the search phase at most
    SEARCH_PHASE_SECONDS: the gateway must cut a search there even when the caller set
    no deadline (retrieval's own timeouts may be a day each). With the cap at nothing,
    a GenerativeSearch without a deadline fails DEADLINE_EXCEEDED before any LLM call.
    Before, its retrieval calls had no deadline at all: the search ran on and answered."""
    await create_books(cached, metadata=ALICE)
    monkeypatch.setattr(generation_cache, "SEARCH_PHASE_SECONDS", 0.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cached.stub.GenerativeSearch(search(USE), metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    assert cached.fake.chat_requests == []


class _HeldObjects(Relay):
    """Retrieval as it is, but BatchGetObjects' answer held until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def answer(self, method: str, answer: bytes) -> bytes:
        if method.endswith("/BatchGetObjects"):
            await self.release.wait()
        return answer


async def test_generate_on_objects_read_is_cut_where_the_drop_marks_reach_ends(
    stack_factory: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GenerateOnObjects' read of a collection's objects is its search phase: cut at
    SEARCH_PHASE_SECONDS (here 0.5 s) with no caller deadline, DEADLINE_EXCEEDED, while
    retrieval holds the answer. Before, the read had no deadline: it waited as long as
    retrieval did (here until the test's guard gave up)."""
    held = _HeldObjects()
    async with serving(held) as address:
        stack = await stack_factory(shared={"api_keys": CACHE_KEYS}, retrieval_addr=address)
        held.target = f"127.0.0.1:{stack.servers['retrieval'].port}"
        try:
            ids = await create_books(stack, metadata=ALICE)
            monkeypatch.setattr(generation_cache, "SEARCH_PHASE_SECONDS", 0.5)
            request = gw_pb.GenerateOnObjectsRequest(
                collection="Books",
                ids=gw_pb.ObjectIds(ids=ids[:1]),
                generate=gw_pb.Generate(single_prompt="Title: {title}"),
            )
            call = stack.stub.GenerateOnObjects(request, metadata=ALICE)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # A guard against a hang only (the old code's outcome), not a timing bound.
                await asyncio.wait_for(call, 60)
        finally:
            held.release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    assert stack.fake.chat_requests == []
