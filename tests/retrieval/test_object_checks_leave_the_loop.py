"""An upsert's objects are checked off the event loop.

Checking a batch (every value walked for NaN and depth, read into JSON, each property
coerced to its type) is pure Python, about 2 µs a value. It ran on the event loop, so one
writer's batch of many small values (1,000 objects of 2,000 tags fit the request bound)
held every other call of every tenant on that replica for seconds: the probe measured
8.8 s for another tenant's ListCollections. The checks now run on a worker thread; the
loop keeps serving while they do.

No timing assertion: the test counts how many of another tenant's calls are answered while
the writer's upsert is checked (the loop free, many; the loop held, at most the one or two
that slip in before the checks begin).
"""

from __future__ import annotations

import asyncio

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from pydantic import SecretStr

from tests.retrieval.conftest import MakeRetrieval, obj, vector_collection
from tests.support.forwarded import forwarded

TOKEN = "object-checks-internal-token"
WRITER = forwarded(TOKEN, "wanda", "acme", "admin")
OTHER = forwarded(TOKEN, "otto", "globex", "admin")
OBJECTS = 400
TAGS = 2000


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
    answered = 0
    while not upsert.done():
        await r.stub.ListCollections(pb.ListCollectionsRequest(), metadata=OTHER, timeout=600)
        answered += 1
    done = await upsert
    assert len(done.errors) == OBJECTS
    assert all(e.field == "properties.zzz_unknown" for e in done.errors), done.errors[0]
    # The loop held for the whole check answers the other tenant once or twice at most
    # (before the checks start); free, it answers one call after another meanwhile.
    assert answered >= 10, answered
