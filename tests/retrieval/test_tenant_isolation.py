"""No caller, in any tenant (the default one included), reaches a collection it does not
own: another tenant's, the answer cache's hidden ones, the memory service's interaction
index, or another application's, on a Qdrant server they all share. Every RPC that takes
a collection name answers for those exactly as for a name nobody has, and CreateCollection
never collides with them (tenancy.py: every new engine name is derived). Real gRPC, the
real engine (``AsyncQdrantClient`` in-process, shared the way a Qdrant server is)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import duration_pb2
from pydantic import SecretStr
from qdrant_client import models

from services.memory.search_index import InteractionIndex
from services.memory.store import Owner
from services.retrieval.server_store import SCHEMA_KEY, ServerStore
from tests.retrieval.conftest import MakeRetrieval, Retrieval, expect_error, obj, vector_collection
from tests.retrieval.test_tenancy import TOKEN, as_, create
from tests.support.rpc import error_info

DEFAULT = as_("anonymous", "default")
ACME = as_("alice", "acme")
GLOBEX = as_("bob", "globex")
CALLERS = {"default": DEFAULT, "acme": ACME, "globex": GLOBEX}
# Each caller's own collection, by a name only it uses.
OWN = {"default": "DefaultOnly", "acme": "AcmeOnly", "globex": "GlobexOnly"}
MEMORY_INDEX = "gensearch_memory"  # the memory service's default search_collection
FOREIGN = "Foreign"  # another application's Qdrant collection
MARKED = "Marked"  # a Qdrant collection with schema metadata that is no collection's
MISSING = "NeverMade"
VECTOR = [1.0, 0.5, 0.25, 0.0]


def _normalized(err: grpc.aio.AioRpcError, name: str) -> tuple[Any, ...]:
    info = error_info(err)
    # The probed name itself may appear (it is the caller's own input): compare the rest.
    details = (err.details() or "").replace(repr(name), "<name>")
    metadata = dict(info.metadata)
    return err.code(), details, info.reason, metadata


async def _answers(s: Any, who: Any, name: str) -> list[tuple[Any, ...]]:
    """The answer of every RPC that names a collection, when it names ``name``."""

    async def one_batch() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection=name, objects=[obj({}, vector=VECTOR)])

    ttl = duration_pb2.Duration(seconds=60)
    calls = (
        s.GetCollection(pb.GetCollectionRequest(name=name), metadata=who),
        s.DeleteCollection(pb.DeleteCollectionRequest(name=name), metadata=who),
        s.UpsertObjects(
            pb.UpsertObjectsRequest(collection=name, objects=[obj({}, vector=VECTOR)]),
            metadata=who,
        ),
        s.ImportObjects(one_batch(), metadata=who),
        s.GetObject(
            pb.GetObjectRequest(collection=name, id="00000000-0000-0000-0000-000000000001"),
            metadata=who,
        ),
        s.DeleteObjects(
            pb.DeleteObjectsRequest(collection=name, ids=["00000000-0000-0000-0000-000000000001"]),
            metadata=who,
        ),
        s.CountObjects(pb.CountObjectsRequest(collection=name), metadata=who),
        s.Search(
            pb.SearchRequest(collection=name, near_vector=pb.NearVector(vector=VECTOR)),
            metadata=who,
        ),
        s.GetChunks(pb.GetChunksRequest(collection=name), metadata=who),
        s.LookupCachedAnswer(
            pb.LookupCachedAnswerRequest(collection=name, question="q?", min_similarity=0.8),
            metadata=who,
        ),
        s.StoreCachedAnswer(
            pb.StoreCachedAnswerRequest(collection=name, question="q?", answer=b"a", ttl=ttl),
            metadata=who,
        ),
    )
    out = []
    for call in calls:
        try:
            await call
        except grpc.aio.AioRpcError as err:
            out.append(_normalized(err, name))
        else:
            raise AssertionError(f"a call on {name!r} succeeded")
    return out


async def _populate(r: Retrieval) -> InteractionIndex:
    """Everything a shared Qdrant server may hold beside the callers' own collections."""
    client = r.store.client  # type: ignore[attr-defined]
    for tenant, who in CALLERS.items():
        await create(r, who, OWN[tenant], n=2)
    # The answer cache's hidden collection for acme's collection.
    await r.stub.StoreCachedAnswer(
        pb.StoreCachedAnswerRequest(
            collection="AcmeOnly",
            question="what is the capital of France?",
            answer=b"Paris",
            ttl=duration_pb2.Duration(seconds=600),
        ),
        metadata=ACME,
    )
    # The memory service pointed at the same Qdrant server (its search_qdrant_url).
    index = InteractionIndex(ServerStore(client), None, MEMORY_INDEX)
    await index.add(
        Owner("acme", "alice"),
        mem_pb.Interaction(
            interaction_id="01HZZZZZZZZZZZZZZZZZZZZZZZ",
            conversation_id="c1",
            input="a private question",
            response="a private answer",
        ),
    )
    params = models.VectorParams(size=4, distance=models.Distance.COSINE)
    await client.create_collection(FOREIGN, vectors_config={"dense": params})
    await client.create_collection(
        MARKED, vectors_config={"dense": params}, metadata={SCHEMA_KEY: {"name": MARKED}}
    )
    return index


async def _engine_names(r: Retrieval) -> list[str]:
    client = r.store.client  # type: ignore[attr-defined]
    return sorted(c.name for c in (await client.get_collections()).collections)


async def test_nothing_a_caller_does_not_own_answers_other_than_a_missing_name(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await make_retrieval("server", internal_token=SecretStr(TOKEN))
    s = r.stub
    await _populate(r)
    engine = await _engine_names(r)
    # Hidden caches, the interaction index, other applications' collections, and derived
    # engine names (``_t…``, ``_a…``) are all there to be probed.
    assert MEMORY_INDEX in engine and FOREIGN in engine and MARKED in engine
    assert any(n.startswith("_a") for n in engine) and any(n.startswith("_t") for n in engine)
    # A name starting with "_" fails validation whatever exists (BAD_NAME), the same for an
    # engine name as for one nobody has.
    bad_missing = await _answers(s, DEFAULT, "_t0")
    assert {a[0] for a in bad_missing} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert {a[2] for a in bad_missing} == {"BAD_NAME"}
    for tenant, who in CALLERS.items():
        missing = await _answers(s, who, MISSING)
        assert {a[0] for a in missing} == {grpc.StatusCode.NOT_FOUND}
        others = [OWN[t] for t in OWN if t != tenant]
        for name in (*engine, *others):
            if name == OWN[tenant]:
                continue  # its own (a default tenant's old collection keeps its name)
            expected = bad_missing if name.startswith("_") else missing
            assert await _answers(s, who, name) == expected, (tenant, name)
        listed = await s.ListCollections(pb.ListCollectionsRequest(), metadata=who)
        assert [c.name for c in listed.collections] == [OWN[tenant]]
        # Its own collection is all there (the probes above wrote and deleted nothing).
        count = await s.CountObjects(pb.CountObjectsRequest(collection=OWN[tenant]), metadata=who)
        assert count.count == 2


@pytest.mark.parametrize("adapter", ["server", "edge"])
async def test_create_never_collides_with_what_the_caller_does_not_own(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await make_retrieval(adapter, internal_token=SecretStr(TOKEN))
    s = r.stub
    shared = adapter == "server"
    if shared:
        index = await _populate(r)
    else:
        for tenant, who in CALLERS.items():
            await create(r, who, OWN[tenant], n=2)
    before = await _engine_names(r) if shared else []
    taken = [*OWN.values(), *((MEMORY_INDEX, FOREIGN, MARKED) if shared else ())]
    for tenant, who in CALLERS.items():
        for name in taken:
            if name == OWN[tenant]:
                err = await expect_error(
                    s.CreateCollection(
                        pb.CreateCollectionRequest(collection=vector_collection(name)),
                        metadata=who,
                    ),
                    grpc.StatusCode.ALREADY_EXISTS,
                    "collection.name",
                )
                assert err.details() == f"collection.name: collection {name!r} already exists"
                continue
            # Someone else's name (or something internal) is free for this caller: made,
            # used, listed and dropped as its own, touching nothing else.
            await create(r, who, name, n=1)
            got = await s.GetCollection(pb.GetCollectionRequest(name=name), metadata=who)
            assert got.object_count == 1
            await s.DeleteCollection(pb.DeleteCollectionRequest(name=name), metadata=who)
    for tenant, who in CALLERS.items():
        listed = await s.ListCollections(pb.ListCollectionsRequest(), metadata=who)
        assert [c.name for c in listed.collections] == [OWN[tenant]]
        count = await s.CountObjects(pb.CountObjectsRequest(collection=OWN[tenant]), metadata=who)
        assert count.count == 2
    if shared:
        client = r.store.client  # type: ignore[attr-defined]
        assert await _engine_names(r) == before
        # The interaction index and acme's cached answer are as they were.
        assert (await client.count(MEMORY_INDEX)).count == 2
        assert await index.indexed(["01HZZZZZZZZZZZZZZZZZZZZZZZ"]) == {"01HZZZZZZZZZZZZZZZZZZZZZZZ"}
        found = await s.LookupCachedAnswer(
            pb.LookupCachedAnswerRequest(
                collection="AcmeOnly",
                question="what is the capital of France?",
                min_similarity=0.9,
            ),
            metadata=ACME,
        )
        assert found.found and found.answer == b"Paris"
