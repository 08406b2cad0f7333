"""An upsert's objects are checked, and a read's reply built, off the event loop.

Checking a batch (every value walked for NaN and depth, read into JSON, each property
coerced to its type) is pure Python, about 2 µs a value. It ran on the event loop, so one
writer's batch of many small values (1,000 objects of 2,000 tags fit the request bound)
held every other call of every tenant on that replica for seconds: the probe measured
8.8 s for another tenant's ListCollections. The checks now run on a worker thread; the
loop keeps serving while they do. The same for a read's reply: its properties are turned
back into Struct values one by one (about 1 µs a value), and a GetObject of one object of
a million tags held the loop close to a second.

No timing assertion: each test counts how many of another tenant's calls are answered while
the writer's call is at work (the loop free, many; the loop held, at most the one or two
that slip in before the checks begin).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from pydantic import SecretStr

from tests.retrieval.conftest import MakeRetrieval, Retrieval, obj, vector_collection
from tests.support.forwarded import forwarded

TOKEN = "object-checks-internal-token"
WRITER = forwarded(TOKEN, "wanda", "acme", "admin")
OTHER = forwarded(TOKEN, "otto", "globex", "admin")
OBJECTS = 400
TAGS = 2000
# One object's tags, read back whole (about 9 MB of reply).
READ_TAGS = 1_000_000


async def test_another_tenant_is_served_while_a_big_batch_is_checked(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await make_retrieval(internal_token=SecretStr(TOKEN))
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=WRITER
    )
    # Every object is walked whole and refused at its last property (no such property):
    # nothing is written, so the call is its checks alone.
    tags = [str(i) for i in range(TAGS)]
    batch = [obj({"tags": tags, "zzz_unknown": 1}, vector=[1.0, 0, 0, 0]) for _ in range(OBJECTS)]
    upsert = asyncio.ensure_future(
        r.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Docs", objects=batch),
            metadata=WRITER,
            timeout=600,
        )
    )
    answered = await _answered_meanwhile(r, upsert)
    done = await upsert
    assert len(done.errors) == OBJECTS
    assert all(e.field == "properties.zzz_unknown" for e in done.errors), done.errors[0]
    # The loop held for the whole check answers the other tenant once or twice at most
    # (before the checks start); free, it answers one call after another meanwhile.
    assert answered >= 10, answered


async def test_another_tenant_is_served_while_a_big_object_is_read(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await make_retrieval(internal_token=SecretStr(TOKEN))
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=WRITER
    )
    tags = [str(i) for i in range(READ_TAGS)]
    written = await r.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Docs", objects=[obj({"tags": tags}, vector=[1.0, 0, 0, 0])]
        ),
        metadata=WRITER,
        timeout=600,
    )
    assert not written.errors, written.errors
    # The engine's part of this read is short: nearly all of it is building the reply.
    big = grpc.aio.insecure_channel(
        f"127.0.0.1:{r.server.port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    try:
        read = asyncio.ensure_future(
            pb_grpc.RetrievalServiceStub(big).GetObject(  # type: ignore[arg-type]
                pb.GetObjectRequest(collection="Docs", id=written.ids[0]),
                metadata=WRITER,
                timeout=600,
            )
        )
        answered = await _answered_meanwhile(r, read)
        got = await read
    finally:
        await big.close()
    assert len(got.object.properties["tags"]) == READ_TAGS
    assert answered >= 10, answered


async def _answered_meanwhile(r: Retrieval, call: asyncio.Future[Any]) -> int:
    """How many of another tenant's ListCollections are answered, one after another,
    until ``call`` (started) is done. The loop held for all of its work answers one or two
    at most (before that work starts); free, one after another."""
    answered = 0
    while not call.done():
        await r.stub.ListCollections(pb.ListCollectionsRequest(), metadata=OTHER, timeout=600)
        answered += 1
    return answered
