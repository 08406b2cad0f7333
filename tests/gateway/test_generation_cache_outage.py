"""An operator's view of a Redis outage in the gateway's generation cache: one WARNING
when it starts, not a read and a write failure per cached call, and one INFO line when
Redis answers again (a real Redis-protocol server, stopped and started again)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.common import redis_client
from services.devlaunch.redis_server import RedisProcess
from services.gateway.generation_cache import GenerationCache, Scope
from services.gateway.generator import Options
from tests.support.redis_cluster import LocalCluster

CALLS = 3
LOGGER = "gensearch.gateway.cache"


@dataclass
class Cached:
    """A cache on a Redis of the test's own (stopped and started by it), and the key of
    one call's answer."""

    server: RedisProcess
    cache: GenerationCache
    scope: Scope
    key: str


@pytest.fixture
async def cached(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Cached]:
    server = RedisProcess(tmp_path / "redis")
    await server.start()
    client = redis_client.connect(server.url, cluster=False, socket_timeout=1, connect_timeout=1)
    cache = GenerationCache(client, "gc", 3600, 1 << 20)
    scope = Scope("acme", "Books", 123)
    key = cache.keys_for(scope, Options(provider="fake", model="m"))(
        [gen_pb.Message(role=gen_pb.ROLE_USER, content="Title: Emma")]
    )
    caplog.set_level(logging.INFO, LOGGER)
    try:
        yield Cached(server, cache, scope, key)
    finally:
        await client.aclose()
        await server.stop()


def _lines(caplog: pytest.LogCaptureFixture, level: int, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and r.getMessage().startswith(start)
    ]


async def test_a_redis_outage_is_one_warning_and_its_end_one_line(
    cached: Cached, caplog: pytest.LogCaptureFixture
) -> None:
    cache, key = cached.cache, cached.key
    result = gw_pb.GenerationResult(result="an answer", finish_reason="stop")
    await cache.put(cached.scope, key, result, 60)
    assert (await cache.get_many({0: key}))[0].result == "an answer"
    assert not _lines(caplog, logging.INFO, "generation cache reachable again")
    await cached.server.stop()
    for _ in range(CALLS):  # a cached call: a read, then a write
        assert await cache.get_many({0: key}) == {}
        await cache.put(cached.scope, key, result, 60)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned  # before: a read and a write failure per call
    down = _lines(caplog, logging.WARNING, "generation cache unavailable")
    assert len(down) == 1, down
    assert "GENSEARCH_GATEWAY_REDIS_URL" in down[0]
    await cached.server.start()
    for _ in range(CALLS):
        assert (await cache.get_many({0: key}))[0].result == "an answer"
    assert len(_lines(caplog, logging.INFO, "generation cache reachable again")) == 1
    await cached.server.stop()
    for _ in range(CALLS):  # within 30 s of the first warning: at most one per 30 s
        assert await cache.get_many({0: key}) == {}
    assert len(_lines(caplog, logging.WARNING, "generation cache unavailable")) == 1


async def test_a_call_out_of_time_is_no_redis_outage(
    cached: Cached, caplog: pytest.LogCaptureFixture
) -> None:
    """A read given no time (the request's generation budget spent) is a miss, but Redis
    answers well: it warned 'generation cache unavailable' naming GENSEARCH_GATEWAY_REDIS_URL
    (and the next read logged it 'reachable again'), sending the operator to a setting
    for a caller's short deadline."""
    cache, key = cached.cache, cached.key
    await cache.put(cached.scope, key, gw_pb.GenerationResult(result="an answer"), 60)
    assert await cache.get_many({0: key}, timeout=0.0) == {}
    assert (await cache.get_many({0: key}))[0].result == "an answer"
    assert not _lines(caplog, logging.WARNING, "generation cache unavailable")
    assert not _lines(caplog, logging.INFO, "generation cache reachable again")


async def test_one_dead_cluster_node_is_one_line_and_its_end_another(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """One Redis Cluster master down: reads of the tenants of the other masters answer all
    along, and that is not the dead master's recovery. Before, every such read logged
    'generation cache reachable again' and the dead master's next failure the warning
    again (every 30 s), naming no node."""
    client = redis_client.connect(
        own_cluster.url, cluster=True, socket_timeout=2, connect_timeout=1
    )
    cache = GenerationCache(client, "gc", 3600, 1 << 20)
    message = [gen_pb.Message(role=gen_pb.ROLE_USER, content="Title: Emma")]
    options = Options(provider="fake", model="m")
    keys = [cache.keys_for(Scope(f"tenant-{n}", "Books", 1), options)(message) for n in range(200)]
    victim = own_cluster.nodes[1]  # not the node of the URL, the client's first
    address = f"127.0.0.1:{victim.port}"
    dead = next(k for k in keys if own_cluster.node_for(k) is victim)
    alive = next(k for k in keys if own_cluster.node_for(k) is not victim)
    caplog.set_level(logging.INFO, LOGGER)
    try:
        assert await cache.get_many({0: alive}) == {}  # the client reads the slot map
        own_cluster.kill(victim)
        for _ in range(CALLS):
            assert await cache.get_many({0: dead}) == {}
            assert await cache.get_many({0: alive}) == {}
        assert _lines(caplog, logging.INFO, "generation cache reachable again") == []
        warned = _lines(caplog, logging.WARNING, "generation cache unavailable")
        assert len(warned) == 1 and address in warned[0], warned

        await own_cluster.restart(victim)
        await cache.get_many({0: alive})
        assert _lines(caplog, logging.INFO, "generation cache reachable again") == []
        for _ in range(600):  # until the client finds the node again (no timing asserted)
            await cache.get_many({0: dead})
            if _lines(caplog, logging.INFO, "generation cache reachable again"):
                break
            await asyncio.sleep(0.1)
        assert _lines(caplog, logging.INFO, "generation cache reachable again") == [
            f"generation cache reachable again (node {address})"
        ]
    finally:
        await client.aclose()
