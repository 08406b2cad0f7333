"""The operator's provider keys go only to the base URL of the provider they belong to.

Two providers, each on its own loopback fake server with its own key variable: whatever
a caller asks for (provider, model, headers), a key never reaches the other server. The
one URL a request may name, ``base_url``, is a caller's URL that never gets a key from the
environment (tests/common/test_request_urls.py, test_structured_and_sampling.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import StartService, user
from tests.support.fake_openai import FakeOpenAI

KEY_A = "sk-provider-a-0123456789abcdef"
KEY_B = "sk-provider-b-fedcba9876543210"
CALLER_A = "sk-caller-for-a-0011223344"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI]]:
    async with FakeOpenAI() as a, FakeOpenAI(host="127.0.0.2") as b:
        yield a, b


def provider(name: str, fake: FakeOpenAI) -> dict[str, object]:
    return {
        "name": name,
        "base_url": fake.base_url,
        "default_model": f"{name}-model",
        "api_key_env": [f"GENSEARCH_TEST_PROVIDER_{name.upper()}_KEY"],
    }


async def test_each_providers_key_reaches_only_its_own_base_url(
    servers: tuple[FakeOpenAI, FakeOpenAI],
    start_service: StartService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = servers
    monkeypatch.setenv("GENSEARCH_TEST_PROVIDER_A_KEY", KEY_A)
    monkeypatch.setenv("GENSEARCH_TEST_PROVIDER_B_KEY", KEY_B)
    svc = await start_service([provider("a", a), provider("b", b)], default_provider="a")
    calls = [
        (pb.GenerateRequest(messages=[user("hi")]), ()),
        (pb.GenerateRequest(provider="b", messages=[user("hi")]), ()),
        (pb.GenerateRequest(provider="b", model="a-model", messages=[user("hi")]), ()),
        # The caller's key for provider a, on a call to provider b: b gets b's key.
        (pb.GenerateRequest(provider="b", messages=[user("hi")]), (("x-a-api-key", CALLER_A),)),
        (pb.GenerateRequest(provider="a", messages=[user("hi")]), (("x-a-api-key", CALLER_A),)),
    ]
    for request, metadata in calls:
        await svc.stub.Generate(request, metadata=metadata, timeout=5)
    async for _ in svc.stub.StreamGenerate(
        pb.StreamGenerateRequest(provider="b", messages=[user("hi")]), timeout=5
    ):
        pass
    seen_a = [r.headers["Authorization"] for r in a.chat_requests]
    seen_b = [r.headers["Authorization"] for r in b.chat_requests]
    assert seen_a == [f"Bearer {KEY_A}", f"Bearer {CALLER_A}"]
    assert seen_b == [f"Bearer {KEY_B}"] * 4
