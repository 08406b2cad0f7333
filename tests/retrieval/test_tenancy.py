"""Tenants own their collections, enforced by the retrieval service itself: each test runs
on both adapters (embedded qdrant-edge, and AsyncQdrantClient for a Qdrant server), with
identities forwarded as the gateway forwards them."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from pydantic import SecretStr

from services.common.well_known import duration
from tests.retrieval.conftest import MakeRetrieval, Retrieval, expect_error, obj, vector_collection
from tests.support.forwarded import forwarded
from tests.support.rpc import error_info

TOKEN = "retrieval-tenancy-internal-token"
ADAPTERS = ("edge", "server")
Metadata = tuple[tuple[str, str], ...]


def as_(user: str, tenant: str, role: str = "admin") -> Metadata:
    return forwarded(TOKEN, user, tenant, role)


ACME = as_("alice", "acme")
GLOBEX = as_("bob", "globex")
# The same user name in another tenant is another caller.
ALICE_OF_GLOBEX = as_("alice", "globex")


async def start(make_retrieval: MakeRetrieval, adapter: str, **kw: Any) -> Retrieval:
    return await make_retrieval(adapter, internal_token=SecretStr(TOKEN), **kw)


async def create(r: Retrieval, who: Metadata, name: str = "Docs", n: int = 3) -> list[str]:
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection(name)), metadata=who
    )
    objects = [obj({"title": f"{name} {i}"}, vector=[1.0, i, 0.5, 0.0]) for i in range(n)]
    done = await r.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection=name, objects=objects), metadata=who
    )
    assert not done.errors
    return list(done.ids)


def answer(err: grpc.aio.AioRpcError) -> tuple[Any, ...]:
    info = error_info(err)
    return err.code(), err.details(), info.reason, dict(info.metadata)


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_another_tenants_collection_is_not_found_like_a_missing_one(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    s = r.stub
    probe = pb.GetCollectionRequest(name="Docs")
    before = answer(await expect_error(s.GetCollection(probe, metadata=GLOBEX), NOT_FOUND))
    ids = await create(r, ACME)

    after = answer(await expect_error(s.GetCollection(probe, metadata=GLOBEX), NOT_FOUND))
    assert after == before  # code, message, reason and metadata: nothing tells them apart
    listed = await s.ListCollections(pb.ListCollectionsRequest(), metadata=GLOBEX)
    assert list(listed.collections) == []
    for who in (GLOBEX, ALICE_OF_GLOBEX):
        for call in (
            s.Search(
                pb.SearchRequest(collection="Docs", near_vector=pb.NearVector(vector=[1, 0, 0, 0])),
                metadata=who,
            ),
            s.CountObjects(pb.CountObjectsRequest(collection="Docs"), metadata=who),
            s.GetObject(pb.GetObjectRequest(collection="Docs", id=ids[0]), metadata=who),
            s.BatchGetObjects(pb.BatchGetObjectsRequest(collection="Docs", ids=ids), metadata=who),
            s.UpsertObjects(
                pb.UpsertObjectsRequest(
                    collection="Docs", objects=[obj({"title": "x"}, vector=[1, 1, 1, 1])]
                ),
                metadata=who,
            ),
            s.DeleteObjects(pb.DeleteObjectsRequest(collection="Docs", ids=ids), metadata=who),
        ):
            await expect_error(call, NOT_FOUND, "collection")
        deleted = await expect_error(
            s.DeleteCollection(pb.DeleteCollectionRequest(name="Docs"), metadata=who), NOT_FOUND
        )
        assert "Docs" in (deleted.details() or "")
    # acme's collection is untouched by all of it.
    got = await s.GetCollection(probe, metadata=ACME)
    assert got.object_count == 3


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_the_same_name_in_two_tenants_holds_two_data_sets(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    r = await start(make_retrieval, adapter)
    s = r.stub
    acme_ids = await create(r, ACME, n=3)
    globex_ids = await create(r, GLOBEX, n=5)
    assert not set(acme_ids) & set(globex_ids)
    for who, mine in ((ACME, acme_ids), (GLOBEX, globex_ids)):
        count = await s.CountObjects(pb.CountObjectsRequest(collection="Docs"), metadata=who)
        assert count.count == len(mine)
        found = await s.Search(
            pb.SearchRequest(
                collection="Docs", near_vector=pb.NearVector(vector=[1, 1, 1, 1]), limit=20
            ),
            metadata=who,
        )
        assert sorted(h.id for h in found.hits) == sorted(mine)
        # The other tenant's ids in a collection of the same name: missing, like ids
        # never written; one's own are found.
        theirs = globex_ids if mine is acme_ids else acme_ids
        got = await s.BatchGetObjects(
            pb.BatchGetObjectsRequest(collection="Docs", ids=[*theirs, *mine]), metadata=who
        )
        assert [o.id for o in got.objects] == mine
        assert list(got.missing_ids) == theirs
        listed = await s.ListCollections(pb.ListCollectionsRequest(), metadata=who)
        assert [c.name for c in listed.collections] == ["Docs"]
    # Names are unique per tenant: acme cannot make a second "Docs".
    await expect_error(
        s.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("Docs")), metadata=ACME
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await s.DeleteCollection(pb.DeleteCollectionRequest(name="Docs"), metadata=GLOBEX)
    count = await s.CountObjects(pb.CountObjectsRequest(collection="Docs"), metadata=ACME)
    assert count.count == 3
    await expect_error(
        s.CountObjects(pb.CountObjectsRequest(collection="Docs"), metadata=GLOBEX), NOT_FOUND
    )


def role_error(err: grpc.aio.AioRpcError, needed: str, has: str) -> None:
    info = error_info(err)
    assert info.reason == "ROLE_REQUIRED"
    assert dict(info.metadata) == {"required_role": needed, "role": has}
    assert repr(needed) in (err.details() or "")


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_roles(make_retrieval: MakeRetrieval, adapter: str) -> None:
    r = await start(make_retrieval, adapter)
    s = r.stub
    reader, writer = as_("rita", "acme", "reader"), as_("wes", "acme", "writer")
    ids = await create(r, ACME)
    new = pb.CreateCollectionRequest(collection=vector_collection("Other"))
    drop = pb.DeleteCollectionRequest(name="Docs")
    for who, has in ((reader, "reader"), (writer, "writer")):
        role_error(await expect_error(s.CreateCollection(new, metadata=who), DENIED), "admin", has)
        role_error(await expect_error(s.DeleteCollection(drop, metadata=who), DENIED), "admin", has)
    upsert = pb.UpsertObjectsRequest(collection="Docs", objects=[obj({}, vector=[0, 0, 1, 0])])
    role_error(
        await expect_error(s.UpsertObjects(upsert, metadata=reader), DENIED),
        "writer",
        "reader",
    )

    async def one_batch() -> Any:
        yield pb.ImportObjectsRequest(collection="Docs", objects=upsert.objects)

    role_error(
        await expect_error(s.ImportObjects(one_batch(), metadata=reader), DENIED),
        "writer",
        "reader",
    )
    delete = pb.DeleteObjectsRequest(collection="Docs", ids=ids[:1])
    role_error(
        await expect_error(s.DeleteObjects(delete, metadata=reader), DENIED),
        "writer",
        "reader",
    )
    # Nothing of it happened.
    count = await s.CountObjects(pb.CountObjectsRequest(collection="Docs"), metadata=reader)
    assert count.count == 3
    # A writer writes; a reader reads; an admin does both.
    await s.UpsertObjects(upsert, metadata=writer)
    await s.DeleteObjects(delete, metadata=writer)
    await s.ImportObjects(one_batch(), metadata=ACME)
    got = await s.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=reader)
    assert got.object_count == 4
    read = await s.BatchGetObjects(
        pb.BatchGetObjectsRequest(collection="Docs", ids=ids), metadata=reader
    )
    assert len(read.objects) + len(read.missing_ids) == 3
    await s.DeleteCollection(drop, metadata=ACME)


async def test_tenants_survive_a_restart_and_default_keeps_its_old_names(
    make_retrieval: MakeRetrieval, tmp_path: Any
) -> None:
    from services.retrieval.edge_store import EdgeStore
    from services.retrieval.schema import Schema
    from services.retrieval.store import CollectionLayout, StoredPoint
    from services.retrieval.tenancy import NAMING_KEY, TENANT_KEY, storage_name

    data = tmp_path / "kept"
    # A default tenant's collection as releases before derived names stored it: under its
    # own name; one from before tenants existed has no tenant key either.
    old = EdgeStore(data / "qdrant")
    await old.open()
    for name, stamp in (("Legacy", False), ("Older", True)):
        collection = vector_collection(name)
        collection.vectorizer.distance = pb.DISTANCE_COSINE
        schema = Schema(collection).to_json()
        schema.pop(NAMING_KEY)
        if stamp:
            schema.pop(TENANT_KEY)
        await old.create_collection(CollectionLayout(name, 4, "cosine", False), schema)
        points = [StoredPoint(str(uuid.uuid4()), {"p": {}}, [1.0, i, 0, 0]) for i in range(2)]
        await old.upsert(name, points)
    await old.close()

    r = await start(make_retrieval, "edge", data_dir=data)
    default = as_("anonymous", "default")
    await create(r, default, "Fresh", n=1)
    await create(r, ACME, "Docs", n=3)
    await r.stop()
    collections = data / "qdrant" / "collections"
    # Old collections keep their engine names; every new one, the default tenant's
    # included, has a derived one.
    assert (collections / "Legacy").is_dir() and (collections / "Older").is_dir()
    for tenant, name in (("default", "Fresh"), ("acme", "Docs")):
        hashed = storage_name(tenant, name)
        assert hashed.startswith("_t") and tenant not in hashed
        assert (collections / hashed).is_dir() and not (collections / name).exists()

    r = await start(make_retrieval, "edge", data_dir=data)
    s = r.stub
    for name, count in (("Legacy", 2), ("Older", 2), ("Fresh", 1)):
        got = await s.GetCollection(pb.GetCollectionRequest(name=name), metadata=default)
        assert got.object_count == count
        await expect_error(
            s.GetCollection(pb.GetCollectionRequest(name=name), metadata=ACME), NOT_FOUND
        )
    # An old collection is still the caller's own: no second one beside it.
    await expect_error(
        s.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("Legacy")), metadata=default
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "collection.name",
    )
    got = await s.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=ACME)
    assert got.object_count == 3
    await expect_error(
        s.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=default), NOT_FOUND
    )
    await s.DeleteCollection(pb.DeleteCollectionRequest(name="Legacy"), metadata=default)
    await r.stop()
    assert not (collections / "Legacy").exists()


async def test_api_keys_give_tenant_and_role(make_retrieval: MakeRetrieval) -> None:
    keys = "ann@acme/admin:key-ann-1,rob@acme/reader:key-rob-2,zed:key-zed-3"
    r = await make_retrieval("edge", api_keys=SecretStr(keys))
    ann, rob, zed = (
        ((("authorization", f"Bearer {k}"),)) for k in ("key-ann-1", "key-rob-2", "key-zed-3")
    )
    await create(r, ann)
    got = await r.stub.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=rob)
    assert got.object_count == 3
    err = await expect_error(
        r.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Docs"), metadata=rob), DENIED
    )
    role_error(err, "admin", "reader")
    # "zed:key" is zed alone in the tenant "zed", admin there.
    await expect_error(
        r.stub.GetCollection(pb.GetCollectionRequest(name="Docs"), metadata=zed), NOT_FOUND
    )
    await create(r, zed)


NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_collection_dropped_under_a_call_keeps_the_callers_name(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    from services.retrieval.tenancy import storage_name

    r = await start(make_retrieval, adapter)
    await create(r, GLOBEX)
    # Dropped behind the catalog's back (as another replica on a shared server would).
    assert await r.store.delete_collection(storage_name("globex", "Docs"))
    err = await expect_error(
        r.stub.CountObjects(pb.CountObjectsRequest(collection="Docs"), metadata=GLOBEX), NOT_FOUND
    )
    assert err.details() == "collection 'Docs' not found"  # not the engine's name


async def test_the_collection_limit_counts_each_tenant_apart(
    make_retrieval: MakeRetrieval,
) -> None:
    # One tenant at its limit neither blocks another nor tells it that collections exist.
    r = await start(make_retrieval, "edge", max_collections=2)
    for name in ("A", "B"):
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection(name)), metadata=ACME
        )
    # A per-tenant count limit, like memory's OWNER_CONVERSATIONS_FULL: RESOURCE_EXHAUSTED
    # naming the limit and its setting (it was FAILED_PRECONDITION, naming neither).
    err = await expect_error(
        r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("C")), metadata=ACME
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    info = error_info(err)
    assert info.reason == "TOO_MANY_COLLECTIONS"
    assert dict(info.metadata) == {
        "limit": "2",
        "setting": "GENSEARCH_RETRIEVAL_MAX_COLLECTIONS",
    }
    assert "GENSEARCH_RETRIEVAL_MAX_COLLECTIONS" in err.details()
    for name in ("A", "B"):
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection(name)), metadata=GLOBEX
        )


def described(name: str, chars: int) -> pb.Collection:
    """A collection whose schema is about ``chars`` bytes of property descriptions."""
    collection = vector_collection(name)
    for prop in collection.properties:
        prop.description = "d" * min(chars // len(collection.properties), 4096)
    return collection


async def test_a_collection_schema_over_max_schema_bytes_is_refused_naming_it(
    make_retrieval: MakeRetrieval,
) -> None:
    """Before, a schema took up to 256 properties with 4 KiB descriptions each (~1 MB), and
    a tenant max_collections of them, in every replica's memory."""
    r = await start(make_retrieval, "edge")
    limit = r.settings.max_schema_bytes
    assert limit == 256 * 1024
    big = vector_collection("Big")
    big.properties.extend(
        pb.Property(name=f"p{n}", data_type=pb.DATA_TYPE_TEXT, description="d" * 4096)
        for n in range(100)
    )
    err = await expect_error(
        r.stub.CreateCollection(pb.CreateCollectionRequest(collection=big), metadata=ACME),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection",
    )
    info = error_info(err)
    assert info.reason == "SCHEMA_TOO_LARGE"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES"
    assert int(info.metadata["size_bytes"]) > limit == int(info.metadata["limit_bytes"])
    assert set(info.metadata) == {"field", "limit_bytes", "size_bytes", "setting"}
    assert "GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES" in err.details()
    await r.stub.CreateCollection(  # a schema within it is taken
        pb.CreateCollectionRequest(collection=described("Fits", 20_000)), metadata=ACME
    )


async def test_a_tenants_schemas_are_bounded_together_and_not_another_tenants(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await start(make_retrieval, "edge", max_schema_bytes_per_tenant=64 * 1024)
    for name in ("A", "B", "C"):  # ~20 KB each: three fit in 64 KiB
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=described(name, 20_000)), metadata=ACME
        )
    err = await expect_error(
        r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=described("D", 20_000)), metadata=ACME
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "collection",
    )
    info = error_info(err)
    assert info.reason == "TENANT_SCHEMAS_FULL"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES_PER_TENANT"
    assert info.metadata["limit_bytes"] == str(64 * 1024)
    assert 0 < int(info.metadata["held_bytes"]) <= 64 * 1024
    assert set(info.metadata) == {"field", "limit_bytes", "held_bytes", "setting"}
    # Another tenant has its own room; a deleted collection gives its bytes back.
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=described("D", 20_000)), metadata=GLOBEX
    )
    await r.stub.DeleteCollection(pb.DeleteCollectionRequest(name="A"), metadata=ACME)
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=described("D", 20_000)), metadata=ACME
    )


async def test_the_answer_cache_refuses_clients_with_api_keys(
    make_retrieval: MakeRetrieval,
) -> None:
    """Only a peer service holding the internal token (the gateway's Ask) reaches the
    semantic answer cache: a client key straight to retrieval could store an answer
    under its tenant's questions and poison what the others are told."""
    r = await make_retrieval(
        "edge", api_keys=SecretStr("carol@acme/reader:key-carol"), internal_token=SecretStr(TOKEN)
    )
    await create(r, as_("ann", "acme"))
    store = pb.StoreCachedAnswerRequest(
        collection="Docs", question="what?", answer=b"POISON", ttl=duration(60)
    )
    lookup = pb.LookupCachedAnswerRequest(collection="Docs", question="what?", min_similarity=0.9)
    carol = (("authorization", "Bearer key-carol"),)
    for call in (r.stub.StoreCachedAnswer(store, metadata=carol),
                 r.stub.LookupCachedAnswer(lookup, metadata=carol)):  # fmt: skip
        err = await expect_error(call, DENIED)
        assert error_info(err).reason == "INTERNAL_METHOD"
        # It said "clients reach it through the gateway", which refuses it too.
        assert "gateway" not in err.details() and "internal token" in err.details()
    # The same reader, vouched for by the gateway, is served.
    gateway = as_("carol", "acme", "reader")
    await r.stub.StoreCachedAnswer(store, metadata=gateway)
    found = await r.stub.LookupCachedAnswer(lookup, metadata=gateway)
    assert found.found and found.answer == b"POISON"


async def test_a_mistyped_collection_name_suggests_the_callers_own_collection(
    make_retrieval: MakeRetrieval,
) -> None:
    # "collection 'docs' not found" left the user guessing at case and typos; the hint
    # comes from the caller's own collections only.
    r = await start(make_retrieval, "edge")
    await create(r, ACME, "Docs")
    for typo in ("docs", "Dcos"):
        err = await expect_error(
            r.stub.GetCollection(pb.GetCollectionRequest(name=typo), metadata=ACME), NOT_FOUND
        )
        assert err.details() == f"name: collection {typo!r} not found; did you mean 'Docs'?"
        assert error_info(err).metadata["field"] == "name"
        assert error_info(err).metadata["suggestion"] == "Docs"
    # Another tenant is told nothing of acme's names, and nothing unlike a name nobody has.
    err = await expect_error(
        r.stub.Search(
            pb.SearchRequest(collection="docs", near_vector=pb.NearVector(vector=[1, 0, 0, 0])),
            metadata=GLOBEX,
        ),
        NOT_FOUND,
    )
    assert err.details() == "collection 'docs' not found"
