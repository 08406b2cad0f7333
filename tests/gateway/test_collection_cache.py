"""The gateway's collection cache (``catalog.py``) on the generative search path: a
collection read moments ago is not read again, yet a search never acts on one for longer
than ``collection_cache_ttl``, a deletion through this gateway is seen at once, and a
known collection's default rerank applies to the first (and only) search."""

from __future__ import annotations

import asyncio
import dataclasses

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from prometheus_client import REGISTRY

from services.common.auth import Identity, Role, forwarded_identity
from tests.gateway.conftest import ALICE, DIM, TOKEN, StackFactory, create_books, vector
from tests.gateway.test_rerank_and_chunks import create_books_into, prefer, titles

RETRIEVAL = "gensearch.retrieval.v1.RetrievalService"


def handled(method: str) -> float:
    """Calls of ``method`` the retrieval server (and the gateway's forwarder of the same
    API) answered OK so far, in this process."""
    labels = {
        "grpc_type": "unary",
        "grpc_service": RETRIEVAL,
        "grpc_method": method,
        "grpc_code": "OK",
    }
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def near(model_prompt: str = "{title}") -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=1,
        generate=gw_pb.Generate(single_prompt=model_prompt),
    )


def model(name: str) -> ret_pb.GenerativeConfig:
    return ret_pb.GenerativeConfig(provider="fake", model=name)


async def test_a_known_collection_is_read_once_then_searched_alone(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(collection_cache_ttl=60)
    await create_books(stack, generative=model("first-model"))
    await stack.stub.GenerativeSearch(near(), metadata=ALICE)  # reads the collection
    reads, searches = handled("GetCollection"), handled("Search")
    for _ in range(3):
        await stack.stub.GenerativeSearch(near(), metadata=ALICE)
        assert stack.fake.chat_requests[-1].json["model"] == "first-model"
    assert handled("GetCollection") == reads  # not read again
    assert handled("Search") == searches + 3  # one search each


async def test_a_deletion_through_this_gateway_is_seen_at_once(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(collection_cache_ttl=60)
    await create_books(stack, generative=model("old-model"))
    await stack.stub.GenerativeSearch(near(), metadata=ALICE)
    await stack.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    await create_books(stack, generative=model("new-model"))
    await stack.stub.GenerativeSearch(near(), metadata=ALICE)
    assert stack.fake.chat_requests[-1].json["model"] == "new-model"


async def test_a_change_behind_the_gateways_back_is_seen_within_the_ttl(
    stack_factory: StackFactory,
) -> None:
    # Another replica (here: retrieval called directly) recreates the collection: this
    # gateway may act on what it kept for at most collection_cache_ttl.
    stack = await stack_factory(collection_cache_ttl=0.5)
    await create_books(stack, generative=model("old-model"))
    await stack.stub.GenerativeSearch(near(), metadata=ALICE)
    as_alice = forwarded_identity(Identity("alice", "alice", Role.ADMIN), TOKEN)
    await stack.retrieval_direct.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=as_alice
    )
    behind = dataclasses.replace(stack, retrieval=stack.retrieval_direct)
    await create_books(behind, metadata=as_alice, generative=model("new-model"))
    await asyncio.sleep(0.6)
    await stack.stub.GenerativeSearch(near(), metadata=ALICE)
    assert stack.fake.chat_requests[-1].json["model"] == "new-model"


async def test_a_known_collections_default_rerank_applies_to_its_only_search(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(collection_cache_ttl=60)
    await create_books(stack, "Books")
    collection = (
        await stack.retrieval.GetCollection(
            ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE
        )
    ).collection
    collection.name = "Ranked"
    collection.rerank.CopyFrom(ret_pb.Rerank(base_url=stack.fake.base_url, candidates=5))
    collection.ClearField("create_time")
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
    )
    await create_books_into(stack, "Ranked")
    stack.fake.rerank_score = lambda query, document: prefer(document)
    request = gw_pb.GenerativeSearchRequest(
        collection="Ranked",
        hybrid=ret_pb.Hybrid(text="a future village", vector=vector(0)),
        limit=2,
        generate=gw_pb.Generate(single_prompt="Summarise {title}"),
    )
    for reranks in (1, 2):  # first with the collection unknown, then known
        searches = handled("Search")
        found = await stack.stub.GenerativeSearch(request, metadata=ALICE)
        assert titles(h.hit for h in found.hits) == ["Emma", "Neuromancer"]
        assert len(stack.fake.rerank_requests) == reranks
        # One search either way: unknown, retrieval applies the default itself.
        assert handled("Search") == searches + 1
    # A near_vector search has no text to rank against: the default stays out of it, and
    # the search is not made twice for it.
    request.near_vector.CopyFrom(ret_pb.NearVector(vector=vector(0)))
    searches = handled("Search")
    unranked = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    assert not unranked.hits[0].hit.HasField("rerank_score")
    assert handled("Search") == searches + 1


async def test_an_unknown_collections_default_rerank_stays_out_of_a_vector_search_once(
    stack_factory: StackFactory,
) -> None:
    # The collection read with the search (no cache): a near_vector search of a collection
    # that reranks by default is not made a second time for a rerank it cannot have.
    stack = await stack_factory(collection_cache_ttl=0)
    await create_books(stack, "Books")
    collection = (
        await stack.retrieval.GetCollection(
            ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE
        )
    ).collection
    collection.name = "Ranked"
    collection.rerank.CopyFrom(ret_pb.Rerank(base_url=stack.fake.base_url, candidates=5))
    collection.ClearField("create_time")
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
    )
    await create_books_into(stack, "Ranked")
    request = near()
    request.collection = "Ranked"
    searches = handled("Search")
    unranked = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    assert not unranked.hits[0].hit.HasField("rerank_score")
    assert handled("Search") == searches + 1
    assert not stack.fake.rerank_requests
