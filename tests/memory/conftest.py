"""Fixtures of the memory tests: the real service on a free port against a real Redis.

Every test that uses the service runs twice, against a standalone server and against a
real three-master Redis Cluster (one per session, flushed before each test), unless its
module sets ``BACKENDS = ("standalone",)`` or the test takes ``redis_server`` itself (it
stops, kills or restarts the standalone server).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.redis_client import RedisClient, connect
from services.common.server import GrpcServer
from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from services.memory.settings import MemorySettings
from services.memory.store import MemoryStore
from tests.support.redis_cluster import LocalCluster

KEYS = "alice:ka,bob:kb"
INTERNAL_TOKEN = "internal-test-token"
ALICE = (("authorization", "Bearer ka"),)
BOB = (("authorization", "Bearer kb"),)


BACKENDS = ("standalone", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    backends = getattr(metafunc.module, "BACKENDS", BACKENDS)
    if "redis_server" in metafunc.fixturenames:
        backends = ("standalone",)
    metafunc.parametrize("backend", backends)


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
    redis: RedisClient  # the test's own client, beside the service's
    settings: MemorySettings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


MemoryFactory = Callable[..., Awaitable[Memory]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Target:
    """The Redis a test's memory services use."""

    url: str
    cluster: LocalCluster | None


@pytest.fixture
def target(backend: str, request: pytest.FixtureRequest) -> Target:
    # Looked up here, not requested by name: a standalone test must not start a cluster,
    # and "redis_server" in a test's own arguments means standalone only (see above).
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return Target(cluster.url, cluster)
    server: RedisProcess = request.getfixturevalue("redis_server")
    return Target(server.url, None)


@pytest.fixture
async def memory_factory(target: Target) -> AsyncIterator[MemoryFactory]:
    """Starts memory services (with settings overrides) against the test's Redis."""
    clustered = target.cluster is not None
    if target.cluster is not None:
        await target.cluster.flush()  # a clean cluster for every test, as a fresh server is
    started: list[Memory] = []

    async def start(**overrides: Any) -> Memory:
        settings = make_settings(target.url, redis_cluster=clustered, **overrides)
        server = await build_server(settings, port=0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        redis = connect(target.url, cluster=clustered, socket_timeout=5, connect_timeout=2)
        memory = Memory(server, channel, pb_grpc.MemoryServiceStub(channel), redis, settings)
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


def store_lines(
    caplog: pytest.LogCaptureFixture, level: int, start: str
) -> list[logging.LogRecord]:
    """The memory store's log records of ``level`` whose message begins with ``start``."""
    return [
        r
        for r in caplog.records
        if r.name == "gensearch.memory.store"
        and r.levelno == level
        and r.getMessage().startswith(start)
    ]


def cluster_client(own_cluster: LocalCluster) -> RedisClient:
    """A cluster client of the test's own cluster."""
    return connect(own_cluster.url, cluster=True, socket_timeout=5, connect_timeout=2)


@pytest_asyncio.fixture
async def make_store(own_cluster: LocalCluster) -> AsyncIterator[Callable[..., MemoryStore]]:
    """Makes a store on the test's own cluster (keywords: its limits); each one made is
    closed after the test."""
    stores: list[MemoryStore] = []

    def make(**limits: Any) -> MemoryStore:
        stores.append(MemoryStore(cluster_client(own_cluster), **limits))
        return stores[-1]

    yield make
    for store in stores:
        await store.close()
