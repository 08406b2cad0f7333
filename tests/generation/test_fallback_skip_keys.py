"""A primary at the caller's own ``base_url`` that is skipped (its window cannot hold the
prompt) opens nothing a caller could not reach before: the call goes to the operator's
fallback endpoint with that endpoint's own key, the caller's URL gets no request (so no
key), and the operator's key of the primary's provider goes nowhere. Guards: they held
on the code as merged (53f6c7dd)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import StartService, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

KEY_A = "sk-provider-a-0123456789abcdef"
KEY_B = "sk-provider-b-fedcba9876543210"
CALLER_A = "sk-caller-for-a-0011223344"
# ~500 tokens by the shared estimate: past a window of 100 (with its 1.25 slack).
LONG = "w" * 2000


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI, FakeOpenAI]]:
    async with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI() as callers:
        yield a, b, callers


def provider(name: str, fake: FakeOpenAI, window: int) -> dict[str, object]:
    return {
        "name": name,
        "base_url": fake.base_url,
        "default_model": f"{name}-model",
        "api_key_env": [f"GENSEARCH_TEST_PROVIDER_{name.upper()}_KEY"],
        "context_window": window,
    }


@pytest.mark.parametrize("b_window", [4096, 100], ids=["b-holds-it", "none-holds-it"])
async def test_a_skipped_primary_at_the_callers_url_sends_no_key_anywhere_new(
    servers: tuple[FakeOpenAI, FakeOpenAI, FakeOpenAI],
    start_service: StartService,
    monkeypatch: pytest.MonkeyPatch,
    b_window: int,
) -> None:
    a, b, callers = servers
    monkeypatch.setenv("GENSEARCH_TEST_PROVIDER_A_KEY", KEY_A)
    monkeypatch.setenv("GENSEARCH_TEST_PROVIDER_B_KEY", KEY_B)
    svc = await start_service(
        [provider("a", a, 100), provider("b", b, b_window)],
        default_provider="a",
        allowed_hosts="http://127.0.0.1",
    )
    b.reply = "from b"
    request = pb.GenerateRequest(
        provider="a",
        base_url=callers.base_url,
        messages=[user(LONG)],
        fallback=[pb.ModelChoice(provider="b")],
    )
    call = svc.stub.Generate(request, metadata=(("x-a-api-key", CALLER_A),), timeout=10)
    if b_window == 100:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        err = caught.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(err)
        assert info.reason == "CONTEXT_WINDOW_EXCEEDED" and info.metadata["field"] == "messages"
        assert b.chat_requests == []
    else:
        reply = await call
        assert (reply.text, reply.provider, reply.fallback_index) == ("from b", "b", 1)
        assert [r.headers["Authorization"] for r in b.chat_requests] == [f"Bearer {KEY_B}"]
    assert callers.requests == [] and a.requests == []
