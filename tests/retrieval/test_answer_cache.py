"""LookupCachedAnswer / StoreCachedAnswer on both adapters (qdrant-edge and a Qdrant
server's client): entries per (tenant, collection), the context key, expiry, entries passed
over once an object they were built from is deleted or changed, the hidden collections never
listed and dropped with their collection, errors naming the field."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import duration_pb2
from pydantic import SecretStr

from services.common.well_known import properties_sha256, struct
from services.retrieval.answer_cache import AnswerCache, cache_store_name
from services.retrieval.embedders import LocalEmbedder
from services.retrieval.schema import Schema
from services.retrieval.store import PROPS, StoredPoint
from tests.retrieval.conftest import (
    MakeRetrieval,
    Retrieval,
    hold_embedding,
    store_racing_delete,
    vector_collection,
)
from tests.support.forwarded import forwarded
from tests.support.rpc import error_info

TOKEN = "answer-cache-internal-token"
ADAPTERS = ("edge", "server")


def as_(user: str, tenant: str, role: str = "admin") -> tuple[tuple[str, str], ...]:
    return forwarded(TOKEN, user, tenant, role)


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
    # Alice shares her tenant's answer, not the words Rita typed (they were told to her).
    assert found.found and found.answer == b"Dune" and found.question == ""
    assert 0.8 <= found.similarity < 1
    own = await r.stub.LookupCachedAnswer(lookup(), metadata=READER)
    assert own.found and own.question == Q  # Rita's own question, told back to her
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


async def objects(r: Retrieval, who: tuple[tuple[str, str], ...], *titles: str) -> list[str]:
    batch = [pb.DataObject(properties=struct({"title": t}), vector=[1, 0, 0, 0]) for t in titles]
    written = await r.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Docs", objects=batch), metadata=who
    )
    return list(written.ids)


def source(object_id: str, title: str) -> pb.CachedAnswerSource:
    """An object as an answer saw it (properties as the gateway got them)."""
    return pb.CachedAnswerSource(
        id=object_id, properties_sha256=properties_sha256(struct({"title": title}))
    )


def built_from(*sources: pb.CachedAnswerSource) -> pb.StoreCachedAnswerRequest:
    request = store()
    request.sources.extend(sources)
    return request


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_an_entry_answers_only_while_its_sources_are_unchanged(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    dune, emma = await objects(r, ACME, "Dune", "Emma")
    await r.stub.StoreCachedAnswer(built_from(source(dune, "Dune")), metadata=ACME)
    # Another object changed, this one written again as it was: still fresh.
    await r.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Docs",
            objects=[
                pb.DataObject(id=emma, properties=struct({"title": "Emma!"}), vector=[0, 1, 0, 0]),
                pb.DataObject(id=dune, properties=struct({"title": "Dune"}), vector=[1, 0, 0, 0]),
            ],
        ),
        metadata=ACME,
    )
    found = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert found.found and found.stale == 0
    # Changed: passed over, and deleted.
    await r.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Docs",
            objects=[
                pb.DataObject(id=dune, properties=struct({"title": "Dune 2"}), vector=[1, 0, 0, 0])
            ],
        ),
        metadata=ACME,
    )
    changed = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert not changed.found and changed.stale == 1
    again = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert not again.found and again.stale == 0  # gone
    # Deleted: the same.
    await r.stub.StoreCachedAnswer(built_from(source(dune, "Dune 2")), metadata=ACME)
    assert (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found
    await r.stub.DeleteObjects(
        pb.DeleteObjectsRequest(collection="Docs", ids=[dune]), metadata=ACME
    )
    deleted = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert not deleted.found and deleted.stale == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_stale_entry_never_hides_a_fresh_one_behind_it(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    (dune,) = await objects(r, ACME, "Dune")
    await r.stub.StoreCachedAnswer(built_from(source(dune, "Dune")), metadata=ACME)
    await r.stub.StoreCachedAnswer(
        pb.StoreCachedAnswerRequest(
            collection="Docs", question=NEAR, answer=b"fresh", ttl=ttl(60), context_key="k"
        ),
        metadata=ACME,
    )
    await r.stub.DeleteObjects(
        pb.DeleteObjectsRequest(collection="Docs", ids=[dune]), metadata=ACME
    )
    found = await r.stub.LookupCachedAnswer(lookup(Q), metadata=ACME)  # Q itself is nearest
    assert found.found and found.answer == b"fresh" and found.stale == 1


async def test_another_tenants_object_is_a_missing_source(make_retrieval: MakeRetrieval) -> None:
    r = await start(make_retrieval, "edge")
    (theirs,) = await objects(r, GLOBEX, "Dune")
    await r.stub.StoreCachedAnswer(built_from(source(theirs, "Dune")), metadata=ACME)
    found = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert not found.found and found.stale == 1


async def test_an_entry_stored_before_sources_were_kept_never_answers(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await start(make_retrieval, "edge")
    await r.stub.StoreCachedAnswer(store(), metadata=ACME)
    got = await r.stub.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=ACME)
    name = cache_store_name(Schema(got.collection, tenant="acme"))
    (point,) = (await r.store.scroll(name, None, 10))[0]
    # The entry as the service stored it before: no "s" (sources) in its properties.
    old = {k: v for k, v in point.payload[PROPS].items() if k != "s"}
    vector = (await r.store.retrieve(name, [point.id], True))[0].dense
    await r.store.upsert(name, [StoredPoint(point.id, {**point.payload, PROPS: old}, vector)])
    found = await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)
    assert not found.found and found.stale == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_expired_entries_never_answer(make_retrieval: MakeRetrieval, adapter: str) -> None:
    r = await start(make_retrieval, adapter)
    # 5 s: the lookup right after the store finds it however slowly a loaded machine
    # embeds and writes (the expiry is set before the write, the lookup embeds again).
    await r.stub.StoreCachedAnswer(store(seconds=5), metadata=ACME)
    assert (await r.stub.LookupCachedAnswer(lookup(Q), metadata=ACME)).found
    await asyncio.sleep(5.5)
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
        (store(seconds=2 * 10**9), "ttl"),  # past MAX_TTL_SECONDS (50 years)
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
        (
            built_from(pb.CachedAnswerSource(id="nope", properties_sha256=b"x" * 32)),
            "sources[0].id",
        ),
        (
            built_from(
                source(str(uuid.uuid4()), "Dune"), pb.CachedAnswerSource(id=str(uuid.uuid4()))
            ),
            "sources[1].properties_sha256",
        ),
        (built_from(*[source(str(uuid.uuid4()), "D") for _ in range(1001)]), "sources"),
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


async def test_a_ttl_past_the_services_maximum_is_cut_to_it(
    make_retrieval: MakeRetrieval,
) -> None:
    # The gateway checks a TTL against its own maximum; one past retrieval's was refused
    # here, so the gateway's background store failed and the answer was never cached.
    # A 5 s maximum: the lookup right after the store finds it however slowly a loaded
    # machine runs the two (with 1 s it could expire in between).
    r = await make_retrieval("edge", internal_token=SecretStr(TOKEN), max_cached_answer_ttl=5)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
    )
    await r.stub.StoreCachedAnswer(store(seconds=3600), metadata=ACME)
    assert (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found
    await asyncio.sleep(5.5)
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_full_cache_first_forgets_expired_entries_then_refuses_new_ones(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    """Before, expired entries were deleted only when a lookup met them among its nearest
    candidates, and nothing bounded how many a collection's cache held: every question a
    tenant asked stayed on disk for good."""
    r = await make_retrieval(adapter, internal_token=SecretStr(TOKEN), max_cached_answers=3)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
    )
    for n in range(2):
        await r.stub.StoreCachedAnswer(
            store(f"Short-lived question {n}?", seconds=0.3), metadata=ACME
        )
    await r.stub.StoreCachedAnswer(store("Lasting question 0?"), metadata=ACME)
    await asyncio.sleep(0.5)  # the two short-lived entries expire
    for n in (1, 2):  # they make room: expired entries go first
        await r.stub.StoreCachedAnswer(store(f"Lasting question {n}?"), metadata=ACME)
    try:
        await r.stub.StoreCachedAnswer(store("One question too many?"), metadata=ACME)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        info = error_info(err)
        assert info.reason == "COLLECTION_FULL"
        assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWERS"
        assert info.metadata["limit"] == "3"
        assert "GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWERS" in (err.details() or "")
    else:
        raise AssertionError("a fourth live entry was stored")
    # Storing an entry again replaces it: it always fits.
    await r.stub.StoreCachedAnswer(store("Lasting question 1?", b"Newer"), metadata=ACME)
    found = await r.stub.LookupCachedAnswer(
        lookup("Lasting question 1?", similarity=0.99), metadata=ACME
    )
    assert found.found and found.answer == b"Newer"
    # Another tenant's cache, even of a collection of the same name, is its own.
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=GLOBEX
    )
    await r.stub.StoreCachedAnswer(store("One question too many?"), metadata=GLOBEX)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("cached_before", [False, True])
async def test_a_store_racing_the_collections_delete_leaves_no_cache_behind(
    make_retrieval: MakeRetrieval,
    local_embedder: LocalEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    adapter: str,
    cached_before: bool,
) -> None:
    """The gateway stores an Ask's answer in the background: its store may have read the
    collection just before a DeleteCollection. Held there (in the question's embedding,
    after the collection was read) while the delete runs, it must be refused NOT_FOUND
    naming the collection, and leave no hidden cache named after the deleted collection
    (it made one again: never listed, outside the byte budget, never dropped)."""
    r = await start(make_retrieval, adapter)
    if cached_before:
        await r.stub.StoreCachedAnswer(store(NEAR), metadata=ACME)
    before = await r.store.schemas()
    entered, release = hold_embedding(monkeypatch, local_embedder)
    refused = await store_racing_delete(r, store(Q), ACME, entered, release)
    assert "Docs" in (refused.details() or "")
    left = await r.store.schemas()
    gone = 2 if cached_before else 1  # the collection, and its cache if it had one
    assert len(left) == len(before) - gone
    # The same name made again starts with an empty cache (embeddings wait no more: released).
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
    )
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("held_at", ["before-create", "after-create"])
async def test_a_delete_while_the_hidden_cache_is_made_leaves_no_cache_behind(
    make_retrieval: MakeRetrieval, monkeypatch: pytest.MonkeyPatch, adapter: str, held_at: str
) -> None:
    """The first store of a collection makes its hidden cache after checking the collection
    is still there. A delete landing after that check (held before the create: the check
    after the write must catch it and drop the cache made) or between the create and the
    write (held after the create: the engine's NotFound named the hidden cache, ``_a`` and a
    digest) is NOT_FOUND naming the collection, in the caller's terms, and leaves nothing."""
    r = await start(make_retrieval, adapter)
    before = await r.store.schemas()
    real = AnswerCache._create
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(self: AnswerCache, name: str, schema: Schema, dimensions: int) -> None:
        if held_at == "after-create":
            await real(self, name, schema, dimensions)
        entered.set()
        await release.wait()
        if held_at == "before-create":
            await real(self, name, schema, dimensions)

    monkeypatch.setattr(AnswerCache, "_create", held)
    refused = await store_racing_delete(r, store(Q), ACME, entered, release)
    details = refused.details() or ""
    assert "'Docs'" in details and "_a" not in details, details
    assert len(await r.store.schemas()) == len(before) - 1  # the collection; no cache left


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_store_names_the_collection_it_was_built_from(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    """``collection_create_time``: a store built from another collection of that name (the
    gateway read it before it was deleted and made again) is NOT_FOUND naming the
    collection and stores nothing; the very collection's, and an unset one, are stored."""
    r = await start(make_retrieval, adapter)
    got = (
        await r.stub.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=ACME)
    ).collection
    older = store(Q, b"old")
    older.collection_create_time.FromNanoseconds(got.create_time.ToNanoseconds() - 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.StoreCachedAnswer(older, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'Docs'" in (caught.value.details() or "")
    assert error_info(caught.value).metadata["field"] == "collection"
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found
    same = store(Q, b"Dune")
    same.collection_create_time.CopyFrom(got.create_time)
    await r.stub.StoreCachedAnswer(same, metadata=ACME)
    assert (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).answer == b"Dune"
    await r.stub.StoreCachedAnswer(store(NEAR, b"unset"), metadata=ACME)  # not checked
    # Stored: the lookup of its very question finds it (nearer than Q's "Dune").
    assert (await r.stub.LookupCachedAnswer(lookup(NEAR, 0.99), metadata=ACME)).answer == b"unset"


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_store_naming_another_collections_creation_time_stores_nothing(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    """Guard (abuser12): a store whose ``collection_create_time`` is another tenant's
    collection of that name, another collection of the tenant's, or set to zero (a
    Timestamp sent empty) is NOT_FOUND naming ``collection`` and stores nothing: only the
    very collection's time (or none) is taken."""
    r = await start(make_retrieval, adapter)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Other")), metadata=ACME
    )

    async def created(name: str, who: tuple[tuple[str, str], ...]) -> int:
        got = await r.stub.GetCollection(pb.GetCollectionRequest(name=name), metadata=who)
        return got.collection.create_time.ToNanoseconds()

    for ns in (await created("Docs", GLOBEX), await created("Other", ACME), 0):
        wrong = store(Q, b"wrong")
        wrong.collection_create_time.FromNanoseconds(ns)
        assert wrong.HasField("collection_create_time")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await r.stub.StoreCachedAnswer(wrong, metadata=ACME)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, ns
        assert error_info(caught.value).metadata["field"] == "collection"
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=GLOBEX)).found


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("seconds", [-(2**63), 2**63 - 1, -1])
async def test_a_store_with_a_creation_time_past_timestamps_range_is_not_found(
    make_retrieval: MakeRetrieval, adapter: str, seconds: int
) -> None:
    """A ``collection_create_time`` of any two integers (past Timestamp's range too, as
    the request fuzz sends) is NOT_FOUND naming ``collection``; it was INTERNAL when the
    check compared the times with ToNanoseconds, which raises past the range."""
    r = await start(make_retrieval, adapter)
    wrong = store(Q, b"wrong")
    wrong.collection_create_time.seconds = seconds
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.StoreCachedAnswer(wrong, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["field"] == "collection"
    assert not (await r.stub.LookupCachedAnswer(lookup(), metadata=ACME)).found


async def test_a_replica_whose_cache_is_stale_stores_for_the_collection_made_again(
    make_retrieval: MakeRetrieval,
) -> None:
    """Two replicas on one engine (a Qdrant server: its client shared). The collection is
    deleted and made again through one; the other still caches the old one (a name it
    knows is not reloaded). A store naming the new collection's create_time through the
    stale replica is stored (it was NOT_FOUND "deleted", on every store, until something
    reloaded that replica); one naming the old collection's is still refused."""
    first = await start(make_retrieval, "server")
    second = await make_retrieval("server", store=first.store, internal_token=SecretStr(TOKEN))
    get = pb.GetCollectionRequest(name="Docs")
    old = (await second.stub.GetCollection(get, metadata=ACME)).collection  # cached there
    await first.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Docs"), metadata=ACME)
    await first.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
    )
    new = (await first.stub.GetCollection(get, metadata=ACME)).collection
    assert new.create_time != old.create_time
    fresh = store(Q, b"new")
    fresh.collection_create_time.CopyFrom(new.create_time)
    await second.stub.StoreCachedAnswer(fresh, metadata=ACME)
    for replica in (first, second):
        found = await replica.stub.LookupCachedAnswer(lookup(), metadata=ACME)
        assert found.answer == b"new"
    stale = store(NEAR, b"old")
    stale.collection_create_time.CopyFrom(old.create_time)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.stub.StoreCachedAnswer(stale, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'Docs'" in (caught.value.details() or "")
    assert error_info(caught.value).metadata["field"] == "collection"


async def test_a_delete_through_a_stale_replica_answers_for_the_collection_it_removed(
    make_retrieval: MakeRetrieval,
) -> None:
    """Two replicas on one engine; the collection deleted and made again through one, the
    other still caching the old one. The engine's name comes from (tenant, name), so a
    delete through the stale replica removes the new collection: it must answer the new
    one's create_time (the gateway fences its late stores with it; the cached old one's
    fenced the wrong collection) and drop the new one's hidden answer cache (the old one's,
    already gone, was dropped, and the new one's stayed in the engine for good)."""
    first = await start(make_retrieval, "server")
    second = await make_retrieval("server", store=first.store, internal_token=SecretStr(TOKEN))
    get = pb.GetCollectionRequest(name="Docs")
    old = (await second.stub.GetCollection(get, metadata=ACME)).collection  # cached there
    await first.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Docs"), metadata=ACME)
    await first.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
    )
    new = (await first.stub.GetCollection(get, metadata=ACME)).collection
    assert new.create_time != old.create_time
    before = await first.store.schemas()  # both tenants' collections
    await first.stub.StoreCachedAnswer(store(Q), metadata=ACME)  # makes the hidden cache
    assert len(await first.store.schemas()) == len(before) + 1
    deleted = await second.stub.DeleteCollection(
        pb.DeleteCollectionRequest(name="Docs"), metadata=ACME
    )
    assert deleted.create_time == new.create_time
    # The collection and its hidden cache are gone; Globex's collection stays.
    assert len(await first.store.schemas()) == len(before) - 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_store_for_an_older_collection_is_refused_without_asking_the_engine(
    make_retrieval: MakeRetrieval, monkeypatch: pytest.MonkeyPatch, adapter: str
) -> None:
    """A late store naming a create_time older than this replica's cached collection (one
    deleted before it was made: the usual case after a delete and create again here) is
    NOT_FOUND with no read of the engine's schema (a read that waits for the catalog's
    lock); only a newer one, which could mean this replica is stale, asks the engine."""
    r = await start(make_retrieval, adapter)
    got = (
        await r.stub.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=ACME)
    ).collection
    reads: list[str] = []
    real = r.store.schema

    async def counted(name: str) -> dict[str, Any] | None:
        reads.append(name)
        return await real(name)

    monkeypatch.setattr(r.store, "schema", counted)
    older = store(Q, b"old")
    older.collection_create_time.FromNanoseconds(got.create_time.ToNanoseconds() - 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.StoreCachedAnswer(older, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["field"] == "collection"
    assert reads == []
    newer = store(Q, b"new")
    newer.collection_create_time.FromNanoseconds(got.create_time.ToNanoseconds() + 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.StoreCachedAnswer(newer, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reads  # the engine was asked
