"""One tenant's flood of embeddings requests leaves room at the endpoint for the others
(``services/retrieval/upstream_slots.py``): a real service, a real loopback embeddings
endpoint that serves a few requests at once and answers 429 past them (as TEI's
``--max-concurrent-requests``), tenants as the gateway forwards them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from pydantic import SecretStr

from tests.retrieval.conftest import (
    MakeRetrieval,
    Retrieval,
    expect_error,
    obj,
    remote_collection,
    vector_collection,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.forwarded import forwarded
from tests.support.rpc import error_info

TOKEN = "retrieval-upstream-slots-token"
KEY_ENV = "TEST_UPSTREAM_SLOTS_KEY"
FLOOD_MODEL = "flood-model"
Metadata = tuple[tuple[str, str], ...]
WAIT_SECONDS = 30.0


def as_(user: str, tenant: str) -> Metadata:
    return forwarded(TOKEN, user, tenant, "admin")


ACME = as_("alice", "acme")
GLOBEX = as_("bob", "globex")


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, "sk-test-slots-key-123")
    async with FakeOpenAI(embedding_dim=16) as server:
        server.embedding_concurrency = 3  # the endpoint serves three at once
        # The flooding tenant's requests take as long as the test: they hold what they hold.
        server.by_model[FLOOD_MODEL] = Behaviour.hang()
        yield server


async def eventually(check: Callable[[], bool]) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_SECONDS
    while not check():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def flooded(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI, imports: int
) -> tuple[Retrieval, list[asyncio.Task[pb.UpsertObjectsResponse]]]:
    """A service whose per-tenant share of an endpoint is 2 requests, acme's ``imports``
    writes (one embeddings request each, never answered) under way, and globex's
    collection at the same endpoint, holding one object."""
    r = await make_retrieval(
        internal_token=SecretStr(TOKEN),
        embedding_key_urls={KEY_ENV: fake.base_url},
        upstream_max_in_flight_per_tenant=2,
    )
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=remote_collection(fake.base_url, KEY_ENV, name="Flood", model=FLOOD_MODEL)
        ),
        metadata=ACME,
    )
    await r.stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=remote_collection(fake.base_url, KEY_ENV, name="Docs", model="embed-1")
        ),
        metadata=GLOBEX,
    )
    done = await r.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Docs", objects=[obj({"title": "puffins"})]),
        metadata=GLOBEX,
    )
    assert not done.errors

    def write(n: int) -> Awaitable[pb.UpsertObjectsResponse]:
        return r.stub.UpsertObjects(  # type: ignore[no-any-return]
            pb.UpsertObjectsRequest(collection="Flood", objects=[obj({"title": f"seal {n}"})]),
            metadata=ACME,
        )

    tasks = [asyncio.ensure_future(write(n)) for n in range(imports)]
    # The flood reached the endpoint (as much of it as may).
    assert await eventually(lambda: _flood_requests(fake) >= 2)
    return r, tasks


def _flood_requests(fake: FakeOpenAI) -> int:
    return sum(
        1
        for req in fake.requests
        if req.path == "/v1/embeddings" and (req.json or {}).get("model") == FLOOD_MODEL
    )


async def _stop(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_another_tenants_search_proceeds_while_one_floods_the_endpoint(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    """Nothing bounded a tenant's requests to an embeddings endpoint: acme's six writes
    took all three of the endpoint's places (the rest answered 429 and retried), and
    globex's Search was answered 429 until its deadline: RESOURCE_EXHAUSTED
    (EMBEDDINGS_RATE_LIMITED). Now acme holds its share of two, waits for them, and
    globex's query is embedded at once."""
    r, flood = await flooded(make_retrieval, fake, imports=6)
    try:
        found = await r.stub.Search(
            pb.SearchRequest(collection="Docs", near_text=pb.NearText(text="puffins")),
            metadata=GLOBEX,
            timeout=10,
        )
        assert [hit.properties["title"] for hit in found.hits] == ["puffins"]
        assert _flood_requests(fake) == 2  # the rest of acme's flood waits in retrieval
        assert fake.rate_limited == 0  # and the endpoint refused nobody
    finally:
        await _stop(flood)


async def test_a_request_that_finds_its_tenants_share_full_is_told_which(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    r, flood = await flooded(make_retrieval, fake, imports=2)
    try:
        err = await expect_error(
            r.stub.Search(
                pb.SearchRequest(collection="Flood", near_text=pb.NearText(text="seals")),
                metadata=ACME,
                timeout=2,
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        info = error_info(err)
        assert info.reason == "EMBEDDINGS_RATE_LIMITED"
        assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_UPSTREAM_MAX_IN_FLIGHT_PER_TENANT"
        assert info.metadata["limit"] == "2"
        assert "GENSEARCH_RETRIEVAL_UPSTREAM_MAX_IN_FLIGHT_PER_TENANT" in (err.details() or "")
        assert _flood_requests(fake) == 2  # it never reached the endpoint
    finally:
        await _stop(flood)


async def test_a_rerank_provider_is_shared_the_same_way(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    """The rerank stage calls its provider through the same slots: acme's four reranked
    Searches (each one request, never answered) reached the provider all at once; now two
    do, and globex's reranked Search is answered meanwhile."""
    fake.by_model["flood-rr"] = Behaviour.hang()
    r = await make_retrieval(
        internal_token=SecretStr(TOKEN),
        rerank_providers={
            "fake": {"base_url": fake.base_url, "api_key_env": KEY_ENV, "model": "rr-1"}
        },
        upstream_max_in_flight_per_tenant=2,
    )
    for who in (ACME, GLOBEX):
        await r.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("Towers")), metadata=who
        )
        await r.stub.UpsertObjects(
            pb.UpsertObjectsRequest(
                collection="Towers",
                objects=[obj({"title": "t", "body": "tower"}, vector=[1.0] * 4)],
            ),
            metadata=who,
        )

    def reranked(who: Metadata, model: str) -> Awaitable[pb.SearchResponse]:
        return r.stub.Search(  # type: ignore[no-any-return]
            pb.SearchRequest(
                collection="Towers",
                keyword=pb.Keyword(text="tower"),
                limit=1,
                rerank=pb.Rerank(provider="fake", model=model, candidates=6),
            ),
            metadata=who,
            timeout=10,
        )

    flood = [asyncio.ensure_future(reranked(ACME, "flood-rr")) for _ in range(4)]
    try:
        assert await eventually(lambda: len(_reranks(fake, "flood-rr")) >= 2)
        found = await reranked(GLOBEX, "rr-1")
        assert len(found.hits) == 1
        assert len(_reranks(fake, "flood-rr")) == 2  # the other two wait in retrieval
    finally:
        await _stop(flood)


def _reranks(fake: FakeOpenAI, model: str) -> list[object]:
    return [r for r in fake.rerank_requests if (r.json or {}).get("model") == model]
