"""LookupCachedAnswer / StoreCachedAnswer on both adapters (qdrant-edge and a Qdrant
server's client): entries per (tenant, collection), the context key, expiry, the hidden
collections never listed and dropped with their collection, errors naming the field."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import duration_pb2
from pydantic import SecretStr

from services.retrieval.embedders import LocalEmbedder
from tests.retrieval.conftest import MakeRetrieval, Retrieval, vector_collection
from tests.support.rpc import error_info

TOKEN = "answer-cache-internal-token"
ADAPTERS = ("edge", "server")


def as_(user: str, tenant: str, role: str = "admin") -> tuple[tuple[str, str], ...]:
    return (
        ("x-gensearch-internal-token", TOKEN),
        ("x-gensearch-user", user),
        ("x-gensearch-tenant", tenant),
        ("x-gensearch-role", role),
    )


ACME, GLOBEX = as_("alice", "acme"), as_("bob", "globex")
READER = as_("rita", "acme", "reader")
Q = "Which book is set on a desert planet?"
NEAR = "Which novel takes place on a desert planet?"


def ttl(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def store(question: str = Q, answer: bytes = b"Dune", seconds: float = 60, key: str = "k"):  # type: ignore[no-untyped-def]
    return pb.StoreCachedAnswerRequest(
        collection="Docs", question=question, answer=answer, ttl=ttl(seconds), context_key=key
    )


def lookup(question: str = NEAR, similarity: float = 0.8, key: str = "k"):  # type: ignore[no-untyped-def]
    return pb.LookupCachedAnswerRequest(
        collection="Docs", question=question, min_similarity=similarity, context_key=key
    )


async def start(make_retrieval: MakeRetrieval, adapter: str) -> Retrieval:
    r = await make_retrieval(adapter, internal_token=SecretStr(TOKEN))
    for who in (ACME, GLOBEX):
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=who
        )
    return r


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_store_then_find_by_meaning_within_a_tenant(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found
    await r.stub.StoreCachedAnswer(store(), metadata=READER)  # a reader may: it asks
    found = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert found.found and found.answer == b"Dune" and found.question == Q
    assert 0.8 <= found.similarity < 1
    strict = await r.stub.LookupCachedAnswer(lookup(similarity=1.0), metadata=ACME)
    assert not strict.found
    other_key = await r.stub.LookupCachedAnswer(lookup(key="other"), metadata=ACME)
    assert not other_key.found
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=GLOBEX)).found
    listed = await r.stub.ListCollections(pb.ListCollectionsRequest(), metadata=ACME)
    assert [c.name for c in listed.collections] == ["Docs"]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_nearer_entries_of_other_settings_never_crowd_out_a_match(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    # The very question, answered under 20 other settings (more than the candidates one
    # lookup reads), and a close one under the lookup's own.
    for i in range(20):
        await r.stub.StoreCachedAnswer(store(Q, b"other", key=f"x{i}"), metadata=ACME)
    await r.stub.StoreCachedAnswer(store(NEAR, b"Dune", key="k"), metadata=ACME)
    found = await r.stub.LookupCachedAnswer(lookup(Q, key="k"), metadata=ACME)
    assert found.found and found.answer == b"Dune" and found.question == NEAR


async def test_a_missed_question_is_embedded_once_for_its_lookup_and_store(
    make_retrieval: MakeRetrieval, local_embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await start(make_retrieval, "edge")
    embedded: list[str] = []
    real = local_embedder.embed

    async def counted(texts: list[str]) -> list[list[float]]:
        embedded.extend(texts)
        return await real(texts)

    monkeypatch.setattr(local_embedder, "embed", counted)
    assert not (await r.stub.LookupCachedAnswer(lookup(Q), metadata=ACME)).found
    await r.stub.StoreCachedAnswer(store(Q), metadata=ACME)
    assert embedded == [Q]  # the store reused the lookup's vector
    found = await r.stub.LookupCachedAnswer(lookup(NEAR), metadata=ACME)
    assert found.found and found.answer == b"Dune"
    # Kept per tenant: another tenant's same question is embedded for it.
    assert not (await r.stub.LookupCachedAnswer(lookup(Q), metadata=GLOBEX)).found
    assert embedded == [Q, NEAR, Q]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_expired_entries_never_answer(make_retrieval: MakeRetrieval, adapter: str) -> None:
    r = await start(make_retrieval, adapter)
    await r.stub.StoreCachedAnswer(store(seconds=2), metadata=ACME)
    assert (await r.stub.LookupCachedAnswer(lookup(Q), metadata=ACME)).found
    await asyncio.sleep(2.5)
    assert not (await r.stub.LookupCachedAnswer(lookup(Q), metadata=ACME)).found


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_deleting_the_collection_drops_its_entries(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    await r.stub.StoreCachedAnswer(store(), metadata=ACME)
    await r.stub.StoreCachedAnswer(store(), metadata=GLOBEX)
    before = len(await r.store.schemas())
    await r.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Docs"), metadata=ACME)
    assert len(await r.store.schemas()) == before - 2  # the collection and its cache
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
    )
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found
    assert (await r.stub.LookupCachedAnswer(lookup(), metadata=GLOBEX)).found


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (store(seconds=0), "ttl"),
        (store(seconds=10**9), "ttl"),
        (
            pb.StoreCachedAnswerRequest(
                collection="Docs",
                question=Q,
                answer=b"Dune",
                ttl=duration_pb2.Duration(seconds=5, nanos=-5),  # mixed signs: invalid
                context_key="k",
            ),
            "ttl",
        ),
        (store(question=" "), "question"),
        (store(answer=b"x" * 2_000_000), "answer"),
        (store(key="k" * 200), "context_key"),
        (lookup(similarity=0.2), "min_similarity"),
        (lookup(question="q" * 9000), "question"),
    ],
)
async def test_bad_requests_name_the_field(
    make_retrieval: MakeRetrieval, request_: object, field: str
) -> None:
    r = await start(make_retrieval, "edge")
    method = (
        r.stub.StoreCachedAnswer
        if isinstance(request_, pb.StoreCachedAnswerRequest)
        else r.stub.LookupCachedAnswer
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_, metadata=ACME)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == field


async def test_an_unknown_collection_is_not_found(make_retrieval: MakeRetrieval) -> None:
    r = await start(make_retrieval, "edge")
    request = lookup()
    request.collection = "Nope"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.LookupCachedAnswer(request, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["field"] == "collection"


@pytest.mark.parametrize(
    ("defaults", "field"),
    [
        (pb.CacheDefaults(ttl=ttl(-1)), "collection.generative.cache.ttl"),
        (
            pb.CacheDefaults(ttl=duration_pb2.Duration(seconds=5, nanos=-5)),
            "collection.generative.cache.ttl",
        ),
        (pb.CacheDefaults(min_similarity=0.1), "collection.generative.cache.min_similarity"),
    ],
)
async def test_bad_collection_cache_defaults_name_the_field(
    make_retrieval: MakeRetrieval, defaults: pb.CacheDefaults, field: str
) -> None:
    r = await make_retrieval("edge", internal_token=SecretStr(TOKEN))
    collection = vector_collection("Docs")
    collection.generative.cache.CopyFrom(defaults)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=collection), metadata=ACME
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == field
