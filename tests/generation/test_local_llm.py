"""The real local model: llama.cpp's llama-server with SmolLM2-135M-Instruct, through the
service.

Its answers are weak; these tests check the plumbing (OpenAI protocol, streaming, usage,
parallel slots, process lifecycle), not the wisdom."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.devlaunch import llm_server as local_llm
from services.generation.settings import LOCAL_MODEL, PRESETS
from tests.generation.conftest import Service, StartService, user
from tests.support.rpc import error_info

pytestmark = [pytest.mark.llm, pytest.mark.slow]

QUESTION = [
    pb.Message(role=pb.ROLE_SYSTEM, content="You are a helpful assistant. Answer briefly."),
    user("What is the capital of France?"),
]


@pytest.fixture
async def local_service(
    local_llm_url: str, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> Service:
    # The `local` preset, moved to the test server's port the way a user would do it.
    monkeypatch.setenv("GENSEARCH_GENERATION_LOCAL_BASE_URL", local_llm_url)
    return await start_service([], default_provider="local")


async def test_generate_on_the_local_model(local_service: Service) -> None:
    reply = await local_service.stub.Generate(
        pb.GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0, debug=True),
        timeout=60,
    )
    assert reply.provider == "local"
    assert reply.model == LOCAL_MODEL
    assert reply.text.strip()
    assert reply.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens <= 24
    assert not reply.usage.estimated  # llama.cpp reports usage on unary calls
    assert reply.debug.url.endswith("/chat/completions")


async def test_stream_on_the_local_model(local_service: Service) -> None:
    chunks = [
        c
        async for c in local_service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=QUESTION, max_tokens=24, temperature=0),
            timeout=60,
        )
    ]
    deltas = [c.delta for c in chunks[:-1]]
    assert len(deltas) >= 3
    assert all(deltas)
    assert "".join(deltas).strip()
    final = chunks[-1]
    assert final.finish_reason in ("stop", "length")
    assert final.model == LOCAL_MODEL
    assert final.usage.completion_tokens > 0


async def test_local_preset_refuses_other_models(local_service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_service.stub.Generate(
            pb.GenerateRequest(messages=QUESTION, model="gpt-4o"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == "model"


async def test_local_server_stops_without_a_trace(local_llm_url: str) -> None:
    server = local_llm.LocalLLMServer(port=0, slots=2)
    await server.start(timeout=180)
    pid = server.pid
    assert pid is not None and server.running
    log = server.log_path
    assert log is not None and b"llama" in log.read_bytes()  # llama-server's own log
    await server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not log.exists()  # the temporary log goes with the server


COUNTING = [
    pb.Message(role=pb.ROLE_SYSTEM, content="You are a helpful assistant."),
    user("Count from 1 to 60, separated by commas."),
]


async def _arrival_order(service: Service, calls: int) -> list[int]:
    """Streams ``calls`` completions at once through the service; the caller index of each
    token, in the order the tokens arrived."""
    order: list[int] = []

    async def one(caller: int) -> None:
        request = pb.StreamGenerateRequest(messages=COUNTING, max_tokens=40, temperature=0)
        async for chunk in service.stub.StreamGenerate(request, timeout=180):
            if chunk.delta:
                order.append(caller)

    await asyncio.gather(*(one(i) for i in range(calls)))
    return order


def _overlapping(order: list[int]) -> bool:
    """Whether the two callers' streams overlap: each got a token before the other's last.
    One sequence at a time, the second stream starts only after the first has ended."""
    first = {c: order.index(c) for c in (0, 1)}
    last = {c: len(order) - 1 - order[::-1].index(c) for c in (0, 1)}
    return first[0] < last[1] and first[1] < last[0]


async def test_two_requests_are_decoded_at_once(
    local_llm_url: str, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-server's parallel slots: two streams through the service progress together,
    where one slot (the control, on a server of its own) serves them one after the other."""
    assert PRESETS["local"]["max_concurrency"] >= 2
    root = local_llm_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http, http.get(f"{root}/props") as resp:
        props = await resp.json()
    assert props["total_slots"] == local_llm.default_slots() >= 2

    monkeypatch.setenv("GENSEARCH_GENERATION_LOCAL_BASE_URL", local_llm_url)
    parallel = await start_service([], default_provider="local")
    order = await _arrival_order(parallel, 2)
    assert sorted(set(order)) == [0, 1]
    assert _overlapping(order), order

    async with local_llm.LocalLLMServer(port=0, slots=1) as single:
        monkeypatch.setenv("GENSEARCH_GENERATION_LOCAL_BASE_URL", single.base_url)
        serial = await start_service([], default_provider="local")
        order = await _arrival_order(serial, 2)
    assert sorted(set(order)) == [0, 1]
    assert not _overlapping(order), order
