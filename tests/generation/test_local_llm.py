"""The real local model: llama_cpp.server with SmolLM2-135M-Instruct, through the service.

Its answers are weak; these tests check the plumbing (OpenAI protocol, streaming, usage,
process lifecycle), not the wisdom."""

from __future__ import annotations

import os

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.devlaunch import llm_server as local_llm
from services.generation.settings import LOCAL_MODEL
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
    server = local_llm.LocalLLMServer(port=0)
    await server.start(timeout=180)
    assert server._proc is not None
    pid = server._proc.pid
    assert server.running
    await server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
