"""A caller's own key goes where that caller chose (or the operator did), never where another
user of the tenant chose.

Before: a tenant admin set a collection's vectorizer (or default rerank block) to a server
of their own, on the operator's allowlist; every other user who searched or inserted with
``x-embedding-api-key`` (``x-rerank-api-key``) sent that key to the admin's server. The
server here is the loopback fake (``tests/support/fake_openai.py``), recording the
``Authorization`` header it receives over real HTTP; nothing is patched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from pydantic import SecretStr

from tests.retrieval.conftest import (
    ARTICLE_PROPS,
    MakeRetrieval,
    Retrieval,
    expect_error,
    obj,
    vector_collection,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.forwarded import forwarded
from tests.support.rpc import error_info

TOKEN = "retrieval-key-destinations-token"
BOB_KEY = "sk-bob-own-embedding-key-0123456789"
Metadata = tuple[tuple[str, str], ...]


def as_(user: str, role: str) -> Metadata:
    return forwarded(TOKEN, user, "acme", role)


ADMIN = as_("mallory", "admin")
BOB = as_("bob", "writer")


@pytest.fixture
async def admins_server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(embedding_dim=8) as server:
        yield server


async def start(make_retrieval: MakeRetrieval, **kw: object) -> Retrieval:
    return await make_retrieval(internal_token=SecretStr(TOKEN), **kw)


def embedded(base_url: str) -> pb.Collection:
    return pb.Collection(
        name="Shared",
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(
            kind=pb.VECTORIZER_KIND_OPENAI_COMPATIBLE, base_url=base_url, dimensions=8
        ),
    )


def authorizations(fake: FakeOpenAI) -> list[str]:
    return [r.headers.get("Authorization", "") for r in fake.requests]


def upsert() -> pb.UpsertObjectsRequest:
    return pb.UpsertObjectsRequest(collection="Shared", objects=[obj({"title": "bob's"})])


def search() -> pb.SearchRequest:
    return pb.SearchRequest(collection="Shared", near_text=pb.NearText(text="bob"))


async def test_reproduced_an_admins_vectorizer_url_does_not_receive_another_users_key(
    make_retrieval: MakeRetrieval, admins_server: FakeOpenAI
) -> None:
    retrieval = await start(make_retrieval, allowed_hosts="http://127.0.0.1")
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=embedded(admins_server.base_url)), metadata=ADMIN
    )
    with_key = (*BOB, ("x-embedding-api-key", BOB_KEY))
    for call in (
        retrieval.stub.UpsertObjects(upsert(), metadata=with_key),
        retrieval.stub.Search(search(), metadata=with_key),
    ):
        err = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "x-embedding-base-url")
        info = error_info(err)
        assert info.reason == "KEY_DESTINATION_UNCONFIRMED"
        assert info.metadata["collection"] == "Shared"
        assert info.metadata["base_url_field"] == "collection.vectorizer.base_url"
        assert BOB_KEY not in (err.details() or "")
    assert admins_server.requests == []
    # Naming another URL is no confirmation either.
    elsewhere = (*with_key, ("x-embedding-base-url", "http://127.0.0.1:1/v1"))
    await expect_error(
        retrieval.stub.UpsertObjects(upsert(), metadata=elsewhere),
        grpc.StatusCode.PERMISSION_DENIED,
        "x-embedding-base-url",
    )
    assert admins_server.requests == []


async def test_the_key_goes_where_its_caller_names_the_url_and_no_key_needs_no_name(
    make_retrieval: MakeRetrieval, admins_server: FakeOpenAI
) -> None:
    retrieval = await start(make_retrieval, allowed_hosts="http://127.0.0.1")
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=embedded(admins_server.base_url)), metadata=ADMIN
    )
    await retrieval.stub.UpsertObjects(upsert(), metadata=BOB)  # no key: nothing to protect
    # The same endpoint however spelled (canonical form: trailing slash, default case).
    confirmed = (
        *BOB,
        ("x-embedding-api-key", BOB_KEY),
        ("x-embedding-base-url", admins_server.base_url.upper().replace("/V1", "/v1") + "/"),
    )
    await retrieval.stub.UpsertObjects(upsert(), metadata=confirmed)
    hits = await retrieval.stub.Search(search(), metadata=confirmed)
    assert hits.hits
    assert authorizations(admins_server) == ["", f"Bearer {BOB_KEY}", f"Bearer {BOB_KEY}"]


async def test_an_operators_endpoint_takes_the_callers_key_unconfirmed(
    make_retrieval: MakeRetrieval, admins_server: FakeOpenAI
) -> None:
    """The operator chose it (GENSEARCH_RETRIEVAL_EMBEDDING_KEY_URLS): no confirmation."""
    retrieval = await start(
        make_retrieval, embedding_key_urls={"OPERATOR_EMBEDDING_KEY": admins_server.base_url}
    )
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=embedded(admins_server.base_url)), metadata=ADMIN
    )
    await retrieval.stub.UpsertObjects(upsert(), metadata=(*BOB, ("x-embedding-api-key", BOB_KEY)))
    assert authorizations(admins_server) == [f"Bearer {BOB_KEY}"]


async def test_a_collections_default_rerank_url_does_not_receive_another_users_key(
    make_retrieval: MakeRetrieval, admins_server: FakeOpenAI
) -> None:
    retrieval = await start(make_retrieval, allowed_hosts="http://127.0.0.1", rerank_providers={})
    collection = vector_collection("Towers", rerank=pb.Rerank(base_url=admins_server.base_url))
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=collection), metadata=ADMIN
    )
    objects = [obj({"title": f"tower {i}"}, vector=[1.0, float(i), 0.0, 0.0]) for i in range(3)]
    await retrieval.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Towers", objects=objects), metadata=ADMIN
    )
    with_key = (*BOB, ("x-rerank-api-key", BOB_KEY))
    by_default = pb.SearchRequest(
        collection="Towers", keyword=pb.Keyword(text="tower"), use_collection_rerank=True
    )
    # The gateway copies the default block into the search it sends: the same URL.
    copied = pb.SearchRequest(
        collection="Towers",
        keyword=pb.Keyword(text="tower"),
        rerank=pb.Rerank(base_url=admins_server.base_url + "/"),
    )
    for request in (by_default, copied):
        err = await expect_error(
            retrieval.stub.Search(request, metadata=with_key),
            grpc.StatusCode.PERMISSION_DENIED,
            "x-rerank-base-url",
        )
        assert error_info(err).reason == "KEY_DESTINATION_UNCONFIRMED"
        assert error_info(err).metadata["base_url_field"] == "collection.rerank.base_url"
    assert admins_server.rerank_requests == []
    confirmed = (*with_key, ("x-rerank-base-url", admins_server.base_url))
    await retrieval.stub.Search(by_default, metadata=confirmed)
    [sent] = admins_server.rerank_requests
    assert sent.headers["Authorization"] == f"Bearer {BOB_KEY}"
