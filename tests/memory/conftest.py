"""Fixtures of the memory tests: the real service on a free port against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.server import GrpcServer
from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from services.memory.settings import MemorySettings

KEYS = "alice:ka,bob:kb"
INTERNAL_TOKEN = "internal-test-token"
ALICE = (("authorization", "Bearer ka"),)
BOB = (("authorization", "Bearer kb"),)


def make_settings(redis_url: str, **overrides: Any) -> MemorySettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "metrics_port": None,
        "api_keys": KEYS,
        "internal_token": INTERNAL_TOKEN,
        "grace_period": 1.0,
    }
    values.update(overrides)
    return MemorySettings(**values)


@dataclass
class Memory:
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: pb_grpc.MemoryServiceStub
    redis: aioredis.Redis
    settings: MemorySettings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


MemoryFactory = Callable[..., Awaitable[Memory]]


@pytest.fixture
async def memory_factory(redis_server: RedisProcess) -> AsyncIterator[MemoryFactory]:
    """Starts memory services (with settings overrides) against the test's Redis."""
    started: list[Memory] = []

    async def start(**overrides: Any) -> Memory:
        settings = make_settings(redis_server.url, **overrides)
        server = await build_server(settings, port=0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        memory = Memory(
            server,
            channel,
            pb_grpc.MemoryServiceStub(channel),
            aioredis.Redis.from_url(redis_server.url),
            settings,
        )
        started.append(memory)
        return memory

    yield start
    for memory in started:
        await memory.channel.close()
        await memory.redis.aclose()
        await memory.server.stop(0)


@pytest.fixture
async def memory(memory_factory: MemoryFactory) -> Memory:
    return await memory_factory()
