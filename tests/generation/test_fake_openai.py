"""The fake OpenAI-compatible server itself (other services' tests and benches rely on it)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.fake_openai import Behaviour, FakeOpenAI

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello big world"}]}


async def test_models_embeddings_and_auth() -> None:
    async with (
        FakeOpenAI(models=["a", "b"], api_key="sk-fake-test-key-1234", embedding_dim=4) as fake,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{fake.base_url}/models") as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["a", "b"]
        async with http.post(f"{fake.base_url}/chat/completions", json=BODY) as resp:
            assert resp.status == 401
        headers = {"Authorization": "Bearer sk-fake-test-key-1234"}
        async with http.post(
            f"{fake.base_url}/embeddings", json={"input": ["x", "y"]}, headers=headers
        ) as resp:
            data = (await resp.json())["data"]
        assert [len(d["embedding"]) for d in data] == [4, 4]
        assert data[0]["embedding"] != data[1]["embedding"]
        assert fake.requests[-1].json == {"input": ["x", "y"]}


async def test_unary_stream_usage_and_scripted_errors() -> None:
    async with FakeOpenAI(reply=lambda body: "echo: " + body["model"]) as fake:
        async with aiohttp.ClientSession() as http:
            url = f"{fake.base_url}/chat/completions"
            async with http.post(url, json=BODY) as resp:
                reply = await resp.json()
            assert reply["choices"][0]["message"]["content"] == "echo: m"
            assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            stream = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
            async with http.post(url, json=stream) as resp:
                lines = [line async for line in resp.content if line.strip()]
            assert lines[-1] == b"data: [DONE]\n"
            assert b'"usage"' in lines[-2]
            fake.enqueue(Behaviour.rate_limited(retry_after="3"), Behaviour.model_not_found("m"))
            async with http.post(url, json=BODY) as resp:
                assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
            async with http.post(url, json=BODY) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "model_not_found"
            fake.enqueue(Behaviour.reset())
            with pytest.raises(aiohttp.ClientError):
                async with http.post(url, json=BODY) as resp:
                    await resp.read()
        assert fake.pending == 0
        assert fake.max_concurrent == 1


def test_runs_in_a_thread() -> None:
    async def call(url: str) -> str:
        async with aiohttp.ClientSession() as http, http.post(url, json=BODY) as resp:
            return str((await resp.json())["choices"][0]["message"]["content"])

    with FakeOpenAI().in_thread() as fake:
        assert asyncio.run(call(f"{fake.base_url}/chat/completions")) == "hello big world"


async def test_latency_jitter_spreads_the_wait_within_its_bounds() -> None:
    async with FakeOpenAI(latency=0.1, latency_jitter=0.5) as fake, aiohttp.ClientSession() as http:
        url = f"{fake.base_url}/chat/completions"

        async def call() -> None:
            async with http.post(url, json=BODY) as resp:
                await resp.read()

        await asyncio.gather(*(call() for _ in range(20)))
        waits = [r.finished_at - r.received_at for r in fake.requests if r.finished_at]
    assert len(waits) == 20
    # Each waits 0.1 s x uniform(0.5, 1.5): never less than 0.05 s, and not all alike.
    assert min(waits) >= 0.05
    assert max(waits) - min(waits) >= 0.02


@pytest.mark.parametrize("counting", ["reserved", "used"])
async def test_token_counting_reserved_takes_max_tokens_at_arrival(counting: str) -> None:
    # Each request: 3 prompt words, max_tokens 10, a 1-word answer. Reserved: 13 each at
    # arrival, so the 4th of a 50-token window is refused unanswered; used: 4 each.
    async with FakeOpenAI(
        token_limit=50, rate_window=3600, reply="ok", token_counting=counting
    ) as fake:
        body = {"model": "m", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 10}
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(4):
                async with http.post(f"{fake.base_url}/chat/completions", json=body) as resp:
                    statuses.append(resp.status)
    if counting == "reserved":
        assert statuses == [200, 200, 200, 429]
        assert fake.max_tokens_per_window == 4 * 13
    else:
        assert statuses == [200] * 4
        assert fake.max_tokens_per_window == 4 * 4
