"""ImportObjects straight to retrieval: a stream that sends nothing for
GENSEARCH_RETRIEVAL_STREAM_IDLE_TIMEOUT ends DEADLINE_EXCEEDED (STREAM_IDLE), gives its call
slot back at once, and keeps the objects of the messages before (services/common/stream_idle.py;
through the gateway: tests/gateway/test_stream_idle.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import MakeRetrieval, Retrieval, obj, vector_collection
from tests.support.client_streams import on_schedule
from tests.support.rpc import error_info

IDLE = 2.0


async def _then_silent(
    messages: Iterable[pb.ImportObjectsRequest],
) -> AsyncIterator[pb.ImportObjectsRequest]:
    for message in messages:
        yield message
    await asyncio.Event().wait()


def _batch(count: int, collection: str = "") -> pb.ImportObjectsRequest:
    objects = [obj({"title": f"t{i}"}, vector=[0.1, 0.2, 0.3, 0.4]) for i in range(count)]
    return pb.ImportObjectsRequest(collection=collection, objects=objects)


@pytest.fixture
async def retrieval(make_retrieval: MakeRetrieval) -> Retrieval:
    # One call at once: a silent stream that kept its slot would refuse every other call.
    harness = await make_retrieval(stream_idle_timeout=IDLE, max_concurrent_rpcs=1)
    created = pb.CreateCollectionRequest(collection=vector_collection("A"))
    await harness.stub.CreateCollection(created)
    return harness


async def _count(retrieval: Retrieval) -> int:
    counted = await retrieval.stub.CountObjects(pb.CountObjectsRequest(collection="A"), timeout=5)
    return counted.count


def _assert_idle(err: grpc.aio.AioRpcError, imported: int) -> None:
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    info = error_info(err)
    assert info.reason == "STREAM_IDLE"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_STREAM_IDLE_TIMEOUT"
    assert info.metadata["timeout_seconds"] == f"{IDLE:g}"
    assert info.metadata["imported_count"] == info.metadata["received_count"] == str(imported)


async def test_a_stream_that_never_sends_ends_and_frees_its_slot(retrieval: Retrieval) -> None:
    started = time.monotonic()
    silent = asyncio.ensure_future(retrieval.stub.ImportObjects(_then_silent([]), timeout=30))
    # Waited for, not slept (a loaded machine may take longer than a fixed 0.5 s to start
    # the call; the count below would then have been served).
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while retrieval.server.call_slots.in_flight < 1:
        assert not silent.done() and loop.time() < end, "the stream never began"
        await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # it holds the only slot ...
        await _count(retrieval)
    assert error_info(refused.value).reason == "TOO_MANY_CONCURRENT_RPCS"
    with pytest.raises(grpc.aio.AioRpcError) as ended:  # ... until it is ended
        await silent
    assert IDLE <= time.monotonic() - started < 20  # by the idle limit, not the 30 s deadline
    _assert_idle(ended.value, 0)
    assert f"no request message arrived within {IDLE:g} s" in (ended.value.details() or "")
    assert retrieval.server.call_slots.in_flight == 0
    assert await _count(retrieval) == 0


async def test_a_stream_that_stalls_keeps_what_it_imported(retrieval: Retrieval) -> None:
    stalled = _then_silent([_batch(2, "A")])
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await retrieval.stub.ImportObjects(stalled, timeout=10)
    _assert_idle(ended.value, 2)
    assert "(message 1; 2 objects imported before it)" in (ended.value.details() or "")
    assert await _count(retrieval) == 2


async def test_a_slow_stream_within_the_timeout_completes(retrieval: Retrieval) -> None:
    async def slow() -> AsyncIterator[pb.ImportObjectsRequest]:
        for i in range(3):  # longer than IDLE in all, never that long between two messages
            await asyncio.sleep(IDLE / 3)
            yield _batch(1, "A" if i == 0 else "")

    imported = await retrieval.stub.ImportObjects(slow(), timeout=10)
    assert (imported.received_count, imported.imported_count) == (3, 3)
    assert await _count(retrieval) == 3


async def test_empty_messages_do_not_keep_a_stream_open(retrieval: Retrieval) -> None:
    """A message without objects is no progress: one sent every IDLE / 4 kept the stream,
    its call slot and its tenant's quota slot for ever. It ends STREAM_IDLE, IDLE after the
    batch, the objects before it kept and said.

    Two empty messages (IDLE / 3 apart) carry the stream past that end on a server that
    takes them as progress, where a batch at 1.4 IDLE is imported too (3 objects, not 2).
    Ended, it reads that batch in its drain and drops it. No message is written within
    IDLE / 3 of the end, nor near the status, 2 s of drain later
    (tests/support/client_streams.py; a tick every IDLE / 4 fell on the end once in CI,
    INTERNAL)."""
    empty = pb.ImportObjectsRequest()
    keeping_alive = on_schedule(
        _batch(2, "A"),
        (IDLE / 3, lambda: empty),
        (2 * IDLE / 3, lambda: empty),
        (1.4 * IDLE, lambda: _batch(1)),
    )
    call = retrieval.stub.ImportObjects(keeping_alive, timeout=6 * IDLE)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call
    _assert_idle(ended.value, 2)
    assert retrieval.server.call_slots.in_flight == 0
    assert await _count(retrieval) == 2


async def test_a_stream_past_its_lifetime_ends_keeping_what_it_imported(
    make_retrieval: MakeRetrieval,
) -> None:
    """However steadily it sends, a stream lasts CLIENT_STREAM_MAX_SECONDS at most: a
    trickle of one object a message held its slots for ever. It ends DEADLINE_EXCEEDED,
    STREAM_TOO_LONG naming the setting, and says what it imported: every object it says
    is stored is (no acknowledged write lost)."""
    harness = await make_retrieval(
        stream_idle_timeout=IDLE, client_stream_max_seconds=IDLE, max_concurrent_rpcs=1
    )
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("A"))
    )

    # One object every IDLE / 8 for half the lifetime, then nothing: the stream stays
    # within its idle timeout until its lifetime ends it (a server without one ends it
    # STREAM_IDLE at 1.5 IDLE), and no message is written within IDLE / 2 of that end. A
    # message every IDLE / 8 to the end fell on it (grpc/grpc#36066: INTERNAL;
    # tests/support/client_streams.py).
    trickle = on_schedule(_batch(1, "A"), *((i * IDLE / 8, lambda: _batch(1)) for i in range(1, 5)))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await harness.stub.ImportObjects(trickle, timeout=10 * IDLE)
    err = ended.value
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    info = error_info(err)
    assert info.reason == "STREAM_TOO_LONG"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_CLIENT_STREAM_MAX_SECONDS"
    assert info.metadata["max_seconds"] == f"{IDLE:g}"
    imported = int(info.metadata["imported_count"])
    assert imported >= 1 and info.metadata["received_count"] == str(imported)
    assert harness.server.call_slots.in_flight == 0
    assert await _count(harness) == imported


async def test_a_stream_past_its_lifetime_reads_on_what_its_client_still_sends(
    make_retrieval: MakeRetrieval,
) -> None:
    """A client stream the server fails is read on until its client half-closes (2 s at
    most) before the status leaves: a grpc-python asyncio client whose write is under way
    when the status comes reports INTERNAL ("Internal error from Core") in its place
    (grpc/grpc#36066), and an importer would lose the counts it needs to resume. A stream
    ended past its lifetime (or idle) was not: the wait that ended it cancelled its read,
    which closed gRPC's reader, so the drain read nothing and the status left under the
    client's writes. Here the client writes every 5 ms until 0.3 s past the stream's end,
    then half-closes: it must get to its end, and read STREAM_TOO_LONG with its counts.
    Before, gRPC stopped taking its messages at the status (the client never got to its end).

    The end is the server's, seen as its call slot given back (at once, before the drain),
    not a lifetime counted from the client's start: the server counts it from when the
    call reaches it, later on a loaded machine, so a client that half-closed 0.3 s past
    its own count could do so before the server's end (the call then succeeded, every
    message imported). Counted from the end it sees, the client half-closes 0.3 s into a
    drain of 2 s, whenever that drain begins."""
    lifetime = 0.5
    harness = await make_retrieval(
        stream_idle_timeout=IDLE, client_stream_max_seconds=lifetime, max_concurrent_rpcs=1
    )
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("A"))
    )
    loop = asyncio.get_running_loop()
    slots = harness.server.call_slots
    finished = False

    async def writing_past_the_end() -> AsyncIterator[pb.ImportObjectsRequest]:
        nonlocal finished
        yield _batch(1, "A")
        give_up = loop.time() + 20 * lifetime  # a server that never ends it: no hang
        began = False
        end: float | None = None
        while end is None or loop.time() < end:
            await asyncio.sleep(0.005)
            began = began or slots.in_flight > 0
            if end is None and began and slots.in_flight == 0:
                end = loop.time() + 0.3  # the stream was ended: on past it, then half-close
            elif end is None and loop.time() > give_up:
                return
            yield _batch(1)
        finished = True

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await harness.stub.ImportObjects(writing_past_the_end(), timeout=30)
    err = ended.value
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    info = error_info(err)
    assert info.reason == "STREAM_TOO_LONG"
    assert finished  # every message it wrote was taken, then the status came
    assert harness.server.call_slots.in_flight == 0
    assert await _count(harness) == int(info.metadata["imported_count"])
