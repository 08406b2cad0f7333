"""The memory service's own Redis is restarted when it dies, and the service recovers."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.devlaunch.redis_server import RedisProcess, bundled_binary, find_binary
from services.memory.__main__ import build_server
from services.memory.settings import MemorySettings
from tests.memory.helpers import redis_pid


async def test_supervised_redis_comes_back_with_its_data(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", appendfsync="always")
    await server.start()
    server.supervise()
    try:
        client = aioredis.Redis.from_url(server.url)
        await client.set("kept", "1")
        await client.aclose()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)  # a crash
        client = aioredis.Redis.from_url(server.url)
        try:
            value = None
            for _ in range(100):
                try:
                    value = await client.get("kept")
                    break
                except (aioredis.ConnectionError, aioredis.ResponseError):
                    await asyncio.sleep(0.1)
            assert value == b"1"
        finally:
            await client.aclose()
    finally:
        await server.stop()
    assert not server.running


async def test_memory_recovers_when_its_own_redis_is_killed(tmp_path: Path) -> None:
    settings = MemorySettings(data_dir=tmp_path, metrics_port=None, redis_appendfsync="always")
    server = await build_server(settings, port=0)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            made = await stub.CreateConversation(pb.CreateConversationRequest(name="kept"))
            request = pb.GetConversationRequest(conversation_id=made.conversation.conversation_id)
            os.kill(redis_pid(tmp_path / "redis"), signal.SIGKILL)
            got = None
            for _ in range(100):
                try:
                    got = await stub.GetConversation(request, timeout=2)
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
            assert got is not None and got.conversation.name == "kept"
    finally:
        await server.stop(0)


def test_the_server_binary_can_be_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GENSEARCH_REDIS_SERVER: `bundled` wins over a redis-server on PATH (CI sets it), a
    path or command name is taken as is, and a wrong one fails naming the variable."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    monkeypatch.delenv("GENSEARCH_REDIS_SERVER", raising=False)
    assert find_binary() == str(fake)  # the default prefers a redis-server on PATH
    monkeypatch.setenv("GENSEARCH_REDIS_SERVER", "bundled")
    assert find_binary() == bundled_binary() != str(fake)
    assert Path(bundled_binary()).name == "valkey-server"
    monkeypatch.setenv("GENSEARCH_REDIS_SERVER", str(fake))
    assert find_binary() == str(fake)
    monkeypatch.setenv("GENSEARCH_REDIS_SERVER", "no-such-redis-server")
    with pytest.raises(RuntimeError, match="GENSEARCH_REDIS_SERVER"):
        find_binary()


async def test_a_port_another_redis_holds_fails_the_start(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    """The port picked for the embedded server was taken by another process's Redis
    before ours bound it: ours exits, and the start says so. Before, readiness was asked on
    the TCP port, where the other server answered: the start passed, and the memory
    service then used a socket nothing served (its own server had exited)."""
    taken = RedisProcess(tmp_path / "second", port=redis_server.port)
    try:
        with pytest.raises(RuntimeError, match="redis exited"):
            await taken.start(timeout=30)
    finally:
        await taken.stop()
