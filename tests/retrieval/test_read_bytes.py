"""The bytes one tenant's reads may be building at once
(GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT, services/retrieval/read_bytes.py).

16 concurrent ~60 MB Searches of one tenant took retrieval to ~1 GB: the reply bound
counts a reply only once built, and the memory sits in building it. The gate stands before
the engine read. The engine's thread is held here (by a third tenant's call) so that the
reads stay in flight for as long as the test needs: which read waits, goes or is refused
depends on the gate alone, never on a clock. Real gRPC, the real qdrant-edge engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY
from pydantic import SecretStr

from services.common.errors import DeadlineExceeded, ResourceExhausted
from services.retrieval.edge_store import EdgeStore
from services.retrieval.read_bytes import MEASURE_EVERY, MEASURED_POINTS, SETTING, ReadBytes
from services.retrieval.store import FoundPoint
from tests.retrieval.conftest import (
    MakeRetrieval,
    Retrieval,
    expect_error,
    hold_engine,
    obj,
    vector_collection,
)
from tests.retrieval.test_tenancy import TOKEN, as_
from tests.support.rpc import error_info, retry_delay

GREEDY = as_("mallory", "greedy")
OTHER = as_("alice", "other")
DIMS = 4
OBJECTS = 10
OBJECT_CHARS = 100_000  # 10 of them: ~1 MB a search, one search's worth of the bound
BOUND = 1024 * 1024


async def _setup(make_retrieval: MakeRetrieval, **settings: Any) -> Retrieval:
    r = await make_retrieval(
        "edge",
        internal_token=SecretStr(TOKEN),
        max_read_bytes_in_flight_per_tenant=BOUND,
        **settings,
    )
    for who in (GREEDY, OTHER):
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("Big", DIMS)), metadata=who
        )
        objects = [
            obj({"body": "x" * OBJECT_CHARS}, vector=[1.0, float(i), 0.5, 0.1])
            for i in range(OBJECTS)
        ]
        resp = await r.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Big", objects=objects), metadata=who
        )
        assert not resp.errors
        await _search(r, who)  # its point size measured, before the engine is held
    return r


def _search(r: Retrieval, who: Any) -> Awaitable[pb.SearchResponse]:
    request = pb.SearchRequest(
        collection="Big", near_vector=pb.NearVector(vector=[1, 1, 0.5, 0.1]), limit=OBJECTS
    )
    return r.stub.Search(request, metadata=who)


async def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Polls counters that offer no event (the engine's queue, a gauge); the generous
    limit only ends a test that would otherwise hang."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def _waiting() -> float:
    return REGISTRY.get_sample_value("gensearch_retrieval_reads_waiting") or 0.0


def _queued(r: Retrieval, tenant: str) -> int:
    store = r.store
    assert isinstance(store, EdgeStore)
    return store._executor.queued(tenant)


async def test_a_tenants_second_large_read_is_refused_while_another_tenant_reads(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await _setup(make_retrieval, read_bytes_wait=0)
    gate, holding = hold_engine(r)
    first = asyncio.ensure_future(_search(r, GREEDY))
    await _until(lambda: _queued(r, "greedy") == 1)  # past the gate, at the engine
    # Another of the same tenant's: the first one's ~1 MB leaves no room, and no wait.
    err = await expect_error(_search(r, GREEDY), grpc.StatusCode.RESOURCE_EXHAUSTED)
    info = error_info(err)
    assert info.reason == "RESPONSE_BYTES_IN_FLIGHT"
    assert info.metadata["setting"] == SETTING
    assert int(info.metadata["limit_bytes"]) == BOUND
    assert int(info.metadata["held_bytes"]) > 0
    assert retry_delay(err) > 0
    assert _queued(r, "greedy") == 1  # refused before the engine: nothing built for it
    # Another tenant's read of the same size counts against its own bound: it goes.
    other = asyncio.ensure_future(_search(r, OTHER))
    await _until(lambda: _queued(r, "other") == 1)
    gate.set()
    await holding
    assert len((await first).hits) == OBJECTS
    assert len((await other).hits) == OBJECTS
    # Its room given back, the tenant reads again.
    assert len((await _search(r, GREEDY)).hits) == OBJECTS


async def test_a_read_over_the_bound_waits_for_room_then_runs(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await _setup(make_retrieval, read_bytes_wait=60)
    gate, holding = hold_engine(r)
    first = asyncio.ensure_future(_search(r, GREEDY))
    await _until(lambda: _queued(r, "greedy") == 1)
    already = _waiting()
    waiting = [asyncio.ensure_future(_search(r, GREEDY)) for _ in range(3)]
    # The greedy tenant's three wait at the gate, not at the engine: one read's worth of
    # its bytes is being built at a time.
    await _until(lambda: _waiting() == already + 3)
    other = asyncio.ensure_future(_search(r, OTHER))
    await _until(lambda: _queued(r, "other") == 1)  # the other tenant's is at the engine
    assert _queued(r, "greedy") == 1
    assert not any(call.done() for call in waiting)
    gate.set()
    await holding
    for call in (first, *waiting, other):
        assert len((await call).hits) == OBJECTS


async def test_reads_wait_in_their_order_and_one_given_up_lets_the_next_in() -> None:
    """The gate alone: first come, first served (a small read does not pass a large one
    waiting before it), and a waiting read whose call is cancelled leaves the queue."""
    reads = ReadBytes(100, wait=60)
    order: list[str] = []
    release = asyncio.Event()

    async def read(name: str, size: int) -> None:
        async with reads.reading("t", size):
            order.append(name)
            await release.wait()

    first = asyncio.ensure_future(read("first", 80))
    await _until(lambda: order == ["first"])
    large = asyncio.ensure_future(read("large", 80))
    await _until(lambda: reads.waiting("t") == 1)
    small = asyncio.ensure_future(read("small", 10))  # would fit, but waits behind "large"
    await _until(lambda: reads.waiting("t") == 2)
    assert order == ["first"]
    large.cancel()
    await _until(lambda: order == ["first", "small"])
    assert reads.held("t") == 90
    release.set()
    await asyncio.gather(first, small)
    assert large.cancelled()
    assert reads.held("t") == 0 and reads.waiting("t") == 0
    # A tenant's read always goes when none of its others is being built.
    async with reads.reading("t", 1000):
        assert reads.held("t") == 1000


async def test_a_read_whose_deadline_passes_while_it_waits_is_deadline_exceeded() -> None:
    """The call's deadline, not the tenant's bytes, ended the wait: DEADLINE_EXCEEDED (a
    client retrying a RESOURCE_EXHAUSTED with the same deadline fails the same way), and
    the message quotes the wait spent, not READ_BYTES_WAIT."""
    reads = ReadBytes(100, wait=60)
    release = asyncio.Event()
    held = asyncio.Event()

    async def first() -> None:
        async with reads.reading("t", 80):
            held.set()
            await release.wait()

    holder = asyncio.ensure_future(first())
    await held.wait()
    for time_left in (0.0, -1.0, 0.05):
        with pytest.raises(DeadlineExceeded) as raised:
            async with reads.reading("t", 80, time_left):
                raise AssertionError("no room was made")
        err = raised.value
        assert err.reason == "DEADLINE_EXCEEDED"
        assert err.metadata["setting"] == SETTING
        waited = err.metadata["waited_ms"]
        assert int(waited) >= 0
        assert f"in the {waited} ms it waited" in err.message
        assert "60 s" not in err.message
    assert reads.waiting("t") == 0 and reads.held("t") == 80
    # A wait that READ_BYTES_WAIT ends, not the deadline, stays RESOURCE_EXHAUSTED.
    short = ReadBytes(100, wait=0)
    async with short.reading("t", 80):
        with pytest.raises(ResourceExhausted):
            async with short.reading("t", 80, 30.0):
                raise AssertionError("no room was made")
    release.set()
    await holder


class _WalkedPayload(dict[str, Any]):
    """A payload that counts how often its size is measured (``value_bytes`` walks its
    items)."""

    walks = 0

    def items(self) -> Any:
        _WalkedPayload.walks += 1
        return super().items()


def _points(count: int, chars: int) -> list[FoundPoint]:
    return [FoundPoint(id=str(i), payload=_WalkedPayload(body="x" * chars)) for i in range(count)]


async def test_a_reads_size_is_measured_on_a_few_of_its_points_and_still_moves_the_estimate() -> (
    None
):
    """observe walked every returned point's payload on every Search and BatchGetObjects
    (~0.05 ms of a Search's p50): its cost grew with the points a read returned. It now
    measures at most MEASURED_POINTS of a read, one read in MEASURE_EVERY."""
    reads = ReadBytes(BOUND, wait=0)
    _WalkedPayload.walks = 0
    reads.observe("c", _points(1000, 10))  # a collection's first read is always measured
    assert 0 < _WalkedPayload.walks <= MEASURED_POINTS
    small = reads.estimate("c", 1)
    assert 0 < small < 1000
    _WalkedPayload.walks = 0
    for _ in range(4 * MEASURE_EVERY):  # then many reads of many large points
        reads.observe("c", _points(1000, 100_000))
    assert _WalkedPayload.walks <= 4 * MEASURED_POINTS
    # The exponential mean still followed the larger points.
    assert reads.estimate("c", 1) > 50_000
    # A read whose large points come late in it is seen too (the measured points are
    # spread over the read, not its first few).
    reads.forget("c")
    late = _points(500, 10) + _points(500, 100_000)
    reads.observe("c", late)
    assert reads.estimate("c", 1) > 20_000


def _chunked(name: str) -> pb.Collection:
    return pb.Collection(
        name=name,
        properties=[
            pb.Property(name="doc", data_type=pb.DATA_TYPE_TEXT),
            pb.Property(name="pos", data_type=pb.DATA_TYPE_INT),
            pb.Property(name="body", data_type=pb.DATA_TYPE_TEXT),
        ],
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=DIMS),
        chunking=pb.Chunking(document_property="doc", order_property="pos"),
    )


def _get_chunks(r: Retrieval, who: Any) -> Awaitable[pb.GetChunksResponse]:
    # Ten ranges over the one document, each its own (a repeat is refused) and each
    # holding every chunk: each reads them again (~1 MB a range).
    book = struct_pb2.Value(string_value="book")
    ranges = [pb.ChunkRange(document=book, first=0, last=OBJECTS - 1 + k) for k in range(10)]
    return r.stub.GetChunks(pb.GetChunksRequest(collection="Chunks", ranges=ranges), metadata=who)


async def test_get_chunks_takes_its_room_in_the_tenants_reads_like_a_search(
    make_retrieval: MakeRetrieval,
) -> None:
    """GetChunks read up to MAX_LIMIT ranges of MAX_CHUNKS_PER_RANGE chunks each (20 100
    points at the defaults, 200 times a Search's most) past the gate: any number of one
    tenant's at once, each building its payloads before the reply bound saw it. It now
    takes room for the chunks it asks the engine for, as a Search does for its limit."""
    r = await _setup(make_retrieval, read_bytes_wait=0, max_chunks_per_range=OBJECTS)
    for who in (GREEDY, OTHER):
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=_chunked("Chunks")), metadata=who
        )
        objects = [
            obj({"doc": "book", "pos": i, "body": "x" * (OBJECT_CHARS // 10)}, vector=[1, i, 0, 0])
            for i in range(OBJECTS)
        ]
        resp = await r.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Chunks", objects=objects), metadata=who
        )
        assert not resp.errors
        await _get_chunks(r, who)  # its point size measured, before the engine is held
    gate, holding = hold_engine(r)
    first = asyncio.ensure_future(_get_chunks(r, GREEDY))
    await _until(lambda: _queued(r, "greedy") >= 1)  # past the gate, at the engine
    # The same tenant's second one finds no room: refused before the engine.
    err = await expect_error(_get_chunks(r, GREEDY), grpc.StatusCode.RESOURCE_EXHAUSTED)
    info = error_info(err)
    assert info.reason == "RESPONSE_BYTES_IN_FLIGHT"
    assert info.metadata["setting"] == SETTING
    assert retry_delay(err) > 0
    # Another tenant's counts against its own bound.
    other = asyncio.ensure_future(_get_chunks(r, OTHER))
    await _until(lambda: _queued(r, "other") >= 1)
    gate.set()
    await holding
    for call in (first, other):
        ranges = (await call).ranges
        assert [len(chunks.chunks) for chunks in ranges] == [OBJECTS] * 10
    # Its room given back, the tenant reads again.
    assert len((await _get_chunks(r, GREEDY)).ranges) == 10
