"""When an ImportObjects stream ends in an engine optimize + flush (qdrant-edge).

Each stream that imported anything ended in ``optimize()`` + ``flush()`` on the engine's one
thread, which every tenant shares: 50-250 ms of segment fsyncs on a 20 000-point
collection, against 6 ms for the same one-object write through UpsertObjects. A writer
looping one-object streams kept the thread busy with flushes at 50 times the cost of its
writes. The optimize now waits until the collection has taken
IMPORT_OPTIMIZE_MIN_OBJECTS objects since its last one (counting UpsertObjects too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import Unavailable
from tests.retrieval.conftest import MakeRetrieval, Retrieval, obj, vector_collection

MIN_OBJECTS = 10


def _counting_optimizes(r: Retrieval) -> list[str]:
    """The engine collections our own store adapter is asked to optimize, in order."""
    calls: list[str] = []
    optimize = r.store.optimize

    async def counted(name: str) -> None:
        calls.append(name)
        await optimize(name)

    r.store.optimize = counted  # type: ignore[method-assign]
    return calls


async def _import(r: Retrieval, count: int, start: int = 0) -> pb.ImportObjectsResponse:
    async def messages() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(
            collection="Notes",
            objects=[
                obj({"title": f"note {start + i}"}, vector=[1.0, float(start + i), 0.5, 0.1])
                for i in range(count)
            ],
        )

    response: pb.ImportObjectsResponse = await r.stub.ImportObjects(messages())
    assert response.imported_count == count
    return response


async def test_small_import_streams_share_one_optimize(make_retrieval: MakeRetrieval) -> None:
    r = await make_retrieval("edge", import_optimize_min_objects=MIN_OBJECTS)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Notes", 4))
    )
    calls = _counting_optimizes(r)
    for n in range(5):
        await _import(r, 1, start=n)
    assert calls == []  # each of them ended in its own optimize + flush before
    # Found all the same: the engine searches what it has not optimized yet.
    search = pb.SearchRequest(
        collection="Notes", near_vector=pb.NearVector(vector=[1.0, 0.0, 0.5, 0.1]), limit=10
    )
    assert len((await r.stub.Search(search)).hits) == 5
    # Upserts count too: with them the collection reaches the bound at the next stream.
    objects = [obj({"title": f"upserted {i}"}, vector=[1.0, 0.0, float(i), 0.1]) for i in range(4)]
    await r.stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Notes", objects=objects))
    await _import(r, 1, start=5)
    assert len(calls) == 1
    await _import(r, 1, start=6)
    assert len(calls) == 1
    # A bulk stream past the bound is optimized at its end, as before.
    await _import(r, MIN_OBJECTS, start=7)
    assert len(calls) == 2


async def test_a_deleted_collection_starts_its_count_again(make_retrieval: MakeRetrieval) -> None:
    r = await make_retrieval("edge", import_optimize_min_objects=MIN_OBJECTS)
    collection: Any = vector_collection("Notes", 4)
    await r.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    calls = _counting_optimizes(r)
    await _import(r, MIN_OBJECTS - 1)
    await r.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Notes"))
    await r.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    await _import(r, 1)
    assert calls == []


async def test_a_stream_ending_in_an_error_counts_what_it_wrote(
    make_retrieval: MakeRetrieval,
) -> None:
    """A stream whose later message was refused wrote its earlier ones, but added none of
    them to the collection's count: they never led to an optimize."""
    r = await make_retrieval("edge", import_optimize_min_objects=MIN_OBJECTS)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Notes", 4))
    )
    calls = _counting_optimizes(r)

    async def messages() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(
            collection="Notes",
            objects=[
                obj({"title": f"note {i}"}, vector=[1.0, float(i), 0.5, 0.1])
                for i in range(MIN_OBJECTS - 1)
            ],
        )
        yield pb.ImportObjectsRequest(collection="Other")  # refused: another collection

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.ImportObjects(messages())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    count = await r.stub.CountObjects(pb.CountObjectsRequest(collection="Notes"))
    assert count.count == MIN_OBJECTS - 1  # written
    assert calls == []
    await _import(r, 1, start=MIN_OBJECTS)  # the bound, with the failed stream's
    assert len(calls) == 1


async def test_an_optimize_that_fails_keeps_the_count(make_retrieval: MakeRetrieval) -> None:
    """The count was cleared before the optimize: one that failed (the engine busy or
    down) lost it, and the objects waited for another IMPORT_OPTIMIZE_MIN_OBJECTS."""
    r = await make_retrieval("edge", import_optimize_min_objects=MIN_OBJECTS)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Notes", 4))
    )
    calls: list[str] = []
    optimize = r.store.optimize

    async def failing_once(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise Unavailable("the engine is busy; try again")
        await optimize(name)

    r.store.optimize = failing_once  # type: ignore[method-assign]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import(r, MIN_OBJECTS)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert len(calls) == 1
    await _import(r, 1, start=MIN_OBJECTS)  # still past the bound: optimized now
    assert len(calls) == 2
