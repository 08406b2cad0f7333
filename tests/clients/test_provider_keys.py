"""A caller's own embedding key through each client (Python's llm_keys / key_urls,
TypeScript's providerKeys, Go's providerkeys) to a collection whose vectorizer URL its
admin set: refused (PERMISSION_DENIED, KEY_DESTINATION_UNCONFIRMED) until the call names
that URL, then sent there. The URL is the loopback fake of
tests/retrieval/test_key_destinations.py, recording the Authorization it receives over
real HTTP, behind the whole gateway stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gensearch.client import AsyncGensearch, errors
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret

from tests.clients.conftest import go_build, run_go, run_node
from tests.gateway.conftest import ALICE, Stack, StackFactory
from tests.retrieval.test_key_destinations import BOB_KEY, authorizations, embedded
from tests.support.fake_openai import FakeOpenAI

ALICE_KEY = ALICE[0][1].removeprefix("Bearer ")
# What keys.ts and keys/main.go print before their last three lines.
REFUSED_THEN_SENT = [
    "unconfirmed PermissionDenied KEY_DESTINATION_UNCONFIRMED x-embedding-base-url"
    " collection.vectorizer.base_url",
    "confirmed 1 1",
]


@pytest.fixture
async def admins_server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(embedding_dim=8) as server:
        yield server


async def shared(stack_factory: StackFactory, admins_server: FakeOpenAI) -> Stack:
    """The stack, and alice's collection "Shared" embedded at the admin's URL."""
    stack = await stack_factory()
    request = ret.CreateCollectionRequest(collection=embedded(admins_server.base_url))
    await stack.retrieval.CreateCollection(request, metadata=ALICE)
    return stack


def env(admins_server: FakeOpenAI) -> dict[str, str]:
    return {
        "GENSEARCH_COLLECTION": "Shared",
        "GENSEARCH_EMBEDDING_URL": admins_server.base_url,
        "GENSEARCH_EMBEDDING_KEY": BOB_KEY,
    }


async def test_python_client_key_urls(
    stack_factory: StackFactory, admins_server: FakeOpenAI
) -> None:
    stack = await shared(stack_factory, admins_server)
    address, keys = f"127.0.0.1:{stack.gateway.port}", {"embedding": BOB_KEY}
    async with AsyncGensearch(address, api_key=ALICE_KEY, llm_keys=keys) as client:
        with pytest.raises(errors.KeyDestinationUnconfirmedError) as info:
            await client.collections.get("Shared").data.insert({"title": "mine"})
        assert info.value.field == "x-embedding-base-url"
    confirmed = {"embedding": admins_server.base_url}
    async with AsyncGensearch(address, api_key=ALICE_KEY, llm_keys=keys, key_urls=confirmed) as c:
        shared_ = c.collections.get("Shared")
        await shared_.data.insert({"title": "mine"})
        assert len((await shared_.query.near_text("mine", limit=1)).hits) == 1
    assert authorizations(admins_server) == [f"Bearer {BOB_KEY}"] * 2


@pytest.mark.slow  # compiles TypeScript
async def test_typescript_provider_keys(
    stack_factory: StackFactory, admins_server: FakeOpenAI, node: str, typescript_build: Path
) -> None:
    """keys.js: providerKeys({ llmKeys }) refused, with keyUrls sent; bad options refused
    at once, naming the option (never the key)."""
    stack = await shared(stack_factory, admins_server)
    script = typescript_build / "keys.js"
    out = await run_node(node, script, stack.gateway.port, ALICE_KEY, env(admins_server))
    assert out.splitlines() == [
        *REFUSED_THEN_SENT,
        'refused llmKeys["embedding"]',
        "refused keyUrls:",
        "refused llmKeys:",
        "refused llmKeys:",  # two spellings of one provider
    ], out
    assert authorizations(admins_server) == [f"Bearer {BOB_KEY}"] * 2


@pytest.mark.slow  # compiles Go
async def test_go_provider_keys(
    stack_factory: StackFactory, admins_server: FakeOpenAI, gopath: Path
) -> None:
    """keys/main.go: providerkeys as a call's credentials refused, as the connection's
    (with KeyURLs) sent; bad options refused by New, naming the option."""
    binary = go_build(gopath, "keys")
    stack = await shared(stack_factory, admins_server)
    out = await run_go(binary, stack.gateway.port, env(admins_server))
    assert out.splitlines() == [
        *REFUSED_THEN_SENT,
        'refused LLMKeys["embedding"]',
        "refused KeyURLs.Rerank",
        "refused LLMKeys:",
        "refused LLMKeys:",  # two spellings of one provider
    ], out
    assert authorizations(admins_server) == [f"Bearer {BOB_KEY}"] * 2
