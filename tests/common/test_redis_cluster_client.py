"""The cluster client of ``services/common/redis_client.py`` on a real three-master Redis
Cluster: a reshard's MOVED replies never break the calls other tasks have in flight."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from services.common.redis_client import connect
from tests.support.redis_cluster import LocalCluster, Node, until


async def _blocked(node: Node) -> bool:
    async with node.client() as client:
        return int((await client.info("clients"))["blocked_clients"]) == 1


@pytest.mark.slow
async def test_moved_replies_leave_other_calls_in_flight_alone(own_cluster: LocalCluster) -> None:
    cluster = own_cluster
    redis = connect(cluster.url, cluster=True, socket_timeout=10, connect_timeout=2)
    try:
        held, source, target = cluster.nodes
        blocked = next(k for k in (f"b{n}" for n in range(1000)) if cluster.node_for(k) is held)
        # A call in flight on one node: a blocking pop, parked until the test pushes.
        pop = asyncio.create_task(redis.blpop([blocked], timeout=8))  # type: ignore[arg-type]
        await until(lambda: _blocked(held), 30, "the pop did not block")

        # Meanwhile another node hands empty slots over to a third (a reshard), behind the
        # client's back; each key in them answers MOVED once, then the patched map routes it.
        keys: dict[int, str] = {}
        for key in (f"k{n}" for n in range(10_000)):
            if cluster.node_for(key) is source:
                keys.setdefault(key_slot(key.encode()), key)
            if len(keys) == 12:  # beyond redis-py's default of a full refresh every 5th MOVED
                break
        target_id = await cluster.node_id(target)
        for node in (target, source, held):
            async with node.client() as client:
                for slot in keys:
                    await client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for key in keys.values():
            assert await redis.set(key, "v")
        async with target.client() as client:
            assert await client.get(next(iter(keys.values()))) == b"v"

        async with held.client() as client:
            await client.rpush(blocked, "done")
        assert tuple(await pop) == (blocked.encode(), b"done")
    finally:
        await redis.aclose()
