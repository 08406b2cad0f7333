"""A client stream that stops sending is ended (services/common/stream_idle.py): the
gateway's ImportObjects waits at most STREAM_IDLE_TIMEOUT for each message, then answers
DEADLINE_EXCEEDED (STREAM_IDLE), gives back the tenant's quota slot and its own call slot at
once, ends the stream it forwarded to retrieval, and keeps what was imported before."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2
from redis.asyncio import Redis

from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import ALICE, Stack, StackFactory, create_books, vector
from tests.support.client_streams import on_schedule
from tests.support.rpc import error_info

IDLE = 2.0  # the gateway's STREAM_IDLE_TIMEOUT here; retrieval keeps its 30 s


def _batch(first: int, count: int, collection: str = "") -> ret_pb.ImportObjectsRequest:
    objects = []
    for i in range(first, first + count):
        props = struct_pb2.Struct()
        props.update({"title": f"Imported {i}"})
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    return ret_pb.ImportObjectsRequest(collection=collection, objects=objects)


async def _then_silent(
    messages: Iterable[ret_pb.ImportObjectsRequest],
) -> AsyncIterator[ret_pb.ImportObjectsRequest]:
    """Sends ``messages``, then nothing, never half-closing (a client that stalled)."""
    for message in messages:
        yield message
    await asyncio.Event().wait()


async def _count(stack: Stack) -> int:
    counted = await stack.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=ALICE, timeout=5
    )
    return counted.count


async def _slots_free(stack: Stack) -> None:
    """Soon (polled, up to 30 s: a loaded machine may be slow to it), neither the gateway
    nor retrieval serves a call any more."""
    servers = (stack.gateway, stack.servers["retrieval"])
    end = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < end:
        if all(server.call_slots.in_flight == 0 for server in servers):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a call is still being served")


async def _holds_a_quota_slot(url: str, prefix: str, call: asyncio.Future[object]) -> None:
    """Waits (polled, up to 30 s) until a call holds a slot of the tenant's concurrent-call
    quota in Redis (a fixed sleep was not always long enough on a loaded machine)."""
    redis = Redis.from_url(url)
    try:
        end = asyncio.get_running_loop().time() + 30
        while True:
            held = [await redis.zcard(k) async for k in redis.scan_iter(f"{prefix}:quota:*:calls")]
            if any(held):
                return
            assert not call.done(), call
            assert asyncio.get_running_loop().time() < end, "the call never took a slot"
            await asyncio.sleep(0.01)
    finally:
        await redis.aclose()


@pytest.fixture
def quota_prefix() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def stack(
    stack_factory: StackFactory, shared_redis: RedisProcess, quota_prefix: str
) -> Stack:
    # A quota of one call at once: a silent stream that kept its slot would lock alice out.
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=quota_prefix,
        quota_concurrent_calls=1,
        stream_idle_timeout=IDLE,
    )
    await create_books(stack)
    return stack


def _assert_idle(err: grpc.aio.AioRpcError, imported: int) -> None:
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    info = error_info(err)
    assert info.reason == "STREAM_IDLE"
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_STREAM_IDLE_TIMEOUT"
    assert info.metadata["timeout_seconds"] == f"{IDLE:g}"
    assert info.metadata["imported_count"] == str(imported)
    assert f"no request message arrived within {IDLE:g} s" in (err.details() or "")


async def test_a_stream_that_never_sends_ends_and_frees_the_quota(
    stack: Stack, shared_redis: RedisProcess, quota_prefix: str
) -> None:
    started = time.monotonic()
    silent = asyncio.ensure_future(
        stack.retrieval.ImportObjects(_then_silent([]), metadata=ALICE, timeout=30)
    )
    await _holds_a_quota_slot(shared_redis.url, quota_prefix, silent)
    # While it waits it holds alice's only slot ...
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _count(stack)
    assert error_info(refused.value).reason == "QUOTA_EXCEEDED"
    # ... until the gateway ends it, not the client's deadline.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await silent
    assert IDLE <= time.monotonic() - started < 20  # not at the 30 s deadline
    _assert_idle(ended.value, 0)
    # Her quota and both services' call slots are free at once.
    assert await _count(stack) == 5
    await _slots_free(stack)


async def test_a_stream_that_stalls_keeps_what_it_imported(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stack.retrieval.ImportObjects(
            _then_silent([_batch(10, 2, "Books")]), metadata=ALICE, timeout=10
        )
    _assert_idle(ended.value, 2)
    assert error_info(ended.value).metadata["received_count"] == "2"
    assert "(message 1; 2 objects imported before it)" in (ended.value.details() or "")
    assert await _count(stack) == 7
    await _slots_free(stack)


async def test_a_stalled_stream_says_which_objects_were_rejected(stack: Stack) -> None:
    # Retrieval's answer to the stream the gateway ended holds the per-object errors; the
    # gateway's status must not drop them (it said how many objects were lost, not which).
    batch = _batch(30, 3, "Books")
    del batch.objects[1].vector[1:]  # wrong dimensions
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stack.retrieval.ImportObjects(_then_silent([batch]), metadata=ALICE, timeout=10)
    _assert_idle(ended.value, 2)
    info = error_info(ended.value)
    assert (info.metadata["received_count"], info.metadata["rejected_indexes"]) == ("3", "1")
    await _slots_free(stack)


async def test_a_slow_stream_within_the_timeout_completes(stack: Stack) -> None:
    async def slow() -> AsyncIterator[ret_pb.ImportObjectsRequest]:
        # Longer than IDLE in all, never that long between two messages.
        for i in range(3):
            await asyncio.sleep(IDLE / 3)
            yield _batch(20 + i, 1, "Books" if i == 0 else "")
        await asyncio.sleep(IDLE / 3)

    imported = await stack.retrieval.ImportObjects(slow(), metadata=ALICE, timeout=10)
    assert (imported.received_count, imported.imported_count) == (3, 3)
    assert await _count(stack) == 8


async def test_empty_messages_do_not_hold_the_quota_slot(
    stack: Stack, shared_redis: RedisProcess, quota_prefix: str
) -> None:
    """An ImportObjects stream sending a message without objects every IDLE / 4 held
    alice's only quota slot until its deadline (a bare DEADLINE_EXCEEDED, no ErrorInfo):
    such a message is no progress, so the gateway ends it STREAM_IDLE, IDLE after the
    batch, what it imported kept and said, and her slot is free again.

    Two empty messages (IDLE / 3 apart) carry the stream past that end on a gateway that
    takes them as progress, where a batch at 1.4 IDLE is imported too (3 objects, not 2).
    Ended, it reads that batch in its drain and drops it. No message is written within
    IDLE / 3 of the end, nor near the status, 2 s of drain later
    (tests/support/client_streams.py; a tick every IDLE / 4 fell on the end in CI, and
    the client read INTERNAL)."""
    empty = ret_pb.ImportObjectsRequest()
    keeping_alive = on_schedule(
        _batch(40, 2, "Books"),
        (IDLE / 3, lambda: empty),
        (2 * IDLE / 3, lambda: empty),
        (1.4 * IDLE, lambda: _batch(42, 1)),
    )
    call = asyncio.ensure_future(
        stack.retrieval.ImportObjects(keeping_alive, metadata=ALICE, timeout=6 * IDLE)
    )
    await _holds_a_quota_slot(shared_redis.url, quota_prefix, call)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call
    _assert_idle(ended.value, 2)
    assert await _count(stack) == 7
    await _slots_free(stack)


async def test_a_stream_past_its_lifetime_ends_and_says_what_it_imported(
    stack_factory: StackFactory, shared_redis: RedisProcess, quota_prefix: str
) -> None:
    """A trickle of one object a message, each within the idle timeout, is ended by the
    gateway's CLIENT_STREAM_MAX_SECONDS: DEADLINE_EXCEEDED, STREAM_TOO_LONG naming the
    setting, with the count retrieval imported (all of it stored: no acknowledged write
    lost)."""
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=quota_prefix,
        quota_concurrent_calls=1,
        stream_idle_timeout=IDLE,
        client_stream_max_seconds=IDLE,
    )
    await create_books(stack)

    # One object every IDLE / 8 for half the lifetime, then nothing: the stream stays
    # within its idle timeout until its lifetime ends it (a gateway without one ends it
    # STREAM_IDLE at 1.5 IDLE), and no message is written within IDLE / 2 of that end
    # (grpc/grpc#36066: one written as the status comes reads INTERNAL;
    # tests/support/client_streams.py).
    trickle = on_schedule(
        _batch(50, 1, "Books"),
        *((i * IDLE / 8, lambda i=i: _batch(50 + i, 1)) for i in range(1, 5)),
    )
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stack.retrieval.ImportObjects(trickle, metadata=ALICE, timeout=10 * IDLE)
    err = ended.value
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    info = error_info(err)
    assert info.reason == "STREAM_TOO_LONG"
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_CLIENT_STREAM_MAX_SECONDS"
    imported = int(info.metadata["imported_count"])
    assert imported >= 1
    assert await _count(stack) == 5 + imported
    await _slots_free(stack)
