"""A server stream whose client stops reading is cut (services/common/stream_idle.py): the
gateway gives each message STREAM_SEND_TIMEOUT to be taken, then ends the call
DEADLINE_EXCEEDED (STREAM_STALLED) whatever its deadline, gives back the tenant's quota
slot and its call slot at once, and stops the hits still generating (their upstream
requests are closed). Before, the stream waited at its write for as long as the client
kept its connection open (or until a far deadline): a client that read the hits of a
StreamGenerativeSearch and stalled held its tenant's only quota slot for good, after every
hit had ended."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import (
    ALICE,
    WITH_BODY,
    Stack,
    StackFactory,
    books_stream_search,
    create_books,
)
from tests.support.rpc import error_info

SEND = 2.0  # the gateway's STREAM_SEND_TIMEOUT here
MIB = 1024 * 1024
# A client whose flow-control window stays at HTTP/2's 64 KiB (gRPC's BDP probing grows it
# to megabytes as a connection is used, which would let a small test's stream through),
# taking messages of any size.
CLIENT_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
]


@pytest.fixture
async def stack(stack_factory: StackFactory, shared_redis: RedisProcess) -> Stack:
    # A quota of one call at once: a stalled stream that kept its slot would lock alice out.
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=f"q-{uuid.uuid4().hex[:8]}",
        quota_concurrent_calls=1,
        stream_send_timeout=SEND,
    )
    await create_books(stack, books=WITH_BODY)
    return stack


@pytest.fixture
async def stub(stack: Stack) -> AsyncIterator[gw_grpc.GatewayServiceAsyncStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.port}", options=CLIENT_OPTIONS)
    yield gw_grpc.GatewayServiceStub(channel)  # type: ignore[misc]
    await channel.close()


async def _served(stack: Stack, metadata: tuple[tuple[str, str], ...]) -> int:
    counted = await stack.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=metadata, timeout=10
    )
    return counted.count


async def _until(check: object, what: str) -> None:
    """Polled, up to 30 s (a loaded machine is slow to it)."""
    end = asyncio.get_running_loop().time() + 30
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < end, what
        await asyncio.sleep(0.02)


async def _read_on(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    """Reads what the stream still holds; returns its error (it must end in one)."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await call.read() is not grpc.aio.EOF:
            pass
    return ended.value


def _assert_stalled(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    info = error_info(err)
    assert info.reason == "STREAM_STALLED"
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_STREAM_SEND_TIMEOUT"
    assert info.metadata["timeout_seconds"] == f"{SEND:g}"
    assert f"the client took no stream message within {SEND:g} s" in (err.details() or "")


async def test_a_client_that_stops_reading_is_cut_and_frees_its_tenants_quota(
    stack: Stack, stub: gw_grpc.GatewayServiceAsyncStub
) -> None:
    # Answers far larger than the client's flow-control window: the gateway cannot send
    # the hits' results to a client that does not read.
    stack.fake.reply = "y" * MIB  # GENSEARCH_GENERATION_MAX_ANSWER_CHARS
    call = stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="Say {title}"), metadata=ALICE
    )
    first = await call.read()
    assert first.WhichOneof("event") == "hits"
    # Stalled: every hit ends, and the stream waits at a write ...
    await _until(lambda: stack.fake.served >= 4, "the hits never reached the provider")
    # ... until it is cut: alice's only quota slot and the gateway's call slot are free,
    # while her client still has not read (before: held for as long as it stayed).
    await _until(lambda: stack.gateway.call_slots.in_flight == 0, "the stream was not cut")
    assert await _served(stack, ALICE) == 4
    # Reading on, the client gets what gRPC held for it, then the status saying why.
    _assert_stalled(await _read_on(call))


async def test_cutting_a_stalled_stream_stops_its_hits_upstream(
    stack: Stack, stub: gw_grpc.GatewayServiceAsyncStub
) -> None:
    # Long answers of large words, streamed: the client's window fills with token deltas,
    # then the gateway's delta buffer, then the hits stop reading their generation streams.
    stack.fake.reply = " ".join("w" * 20_000 for _ in range(500))
    call = stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="Say {title}", stream_tokens=True),
        metadata=ALICE,
    )
    assert (await call.read()).WhichOneof("event") == "hits"
    await _until(lambda: stack.fake.served >= 4, "the hits never reached the provider")
    # Cut at the send timeout, not at the generation budget (120 s): the hits' upstream
    # requests are closed and no call is left in the gateway or the generation service.
    await _until(lambda: stack.fake.disconnects >= 4, "the upstream requests stayed open")
    await _until(
        lambda: (
            stack.gateway.call_slots.in_flight == 0
            and stack.servers["generation"].call_slots.in_flight == 0
        ),
        "a call is still being served",
    )
    assert stack.fake.concurrent == 0
    assert await _served(stack, ALICE) == 4
    _assert_stalled(await _read_on(call))


async def test_a_client_that_reads_slowly_but_steadily_is_not_cut(stack: Stack) -> None:
    # Each message taken within the timeout: however long the whole stream lasts.
    stack.fake.reply = " ".join(f"word{i}" for i in range(40))
    stack.fake.chunk_delay = 0.05
    events = []
    async for event in stack.stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="Say {title}", stream_tokens=True), metadata=ALICE
    ):
        events.append(event.WhichOneof("event"))
        await asyncio.sleep(0.02)
    assert events[0] == "hits" and events[-1] == "done"
    assert events.count("hit_result") == 4


async def test_a_client_with_a_long_deadline_that_stops_reading_is_cut_too(
    stack: Stack, stub: gw_grpc.GatewayServiceAsyncStub
) -> None:
    # A deadline an hour away: before, the stalled stream was held to it, and alice's only
    # quota slot with it, for the hour. A write blocked past the send timeout is a client
    # that stopped reading, deadline or not.
    stack.fake.reply = "y" * MIB
    call = stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="Say {title}"), metadata=ALICE, timeout=3600
    )
    assert (await call.read()).WhichOneof("event") == "hits"
    await _until(lambda: stack.gateway.call_slots.in_flight == 0, "the stream was not cut")
    # Her quota of one call is free again, while her stalled client has still not read.
    assert await _served(stack, ALICE) == 4
    _assert_stalled(await _read_on(call))
