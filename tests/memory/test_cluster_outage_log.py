"""An operator's view of a partial Redis Cluster outage in the memory service's log (a real
3-node cluster on loopback, one master killed): one WARNING naming the dead node, and one
INFO line naming it when it answers again. Before, outage tracking was one flag for the
whole cluster: every call a healthy node served logged 'memory store reachable again', and
the next call to the dead node the warning again (every 30 s), a stream of flips that named
no node."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from services.common.auth import DEFAULT_TENANT
from services.common.errors import Unavailable
from services.common.redis_client import connect
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import store_lines
from tests.support.redis_cluster import LocalCluster

ROUNDS = 4


async def test_one_dead_node_is_one_warning_and_one_recovery_naming_it(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    redis = connect(own_cluster.url, cluster=True, socket_timeout=2, connect_timeout=1)
    store = MemoryStore(redis, key_prefix=f"partial-{uuid.uuid4().hex[:8]}")
    owners = [Owner(DEFAULT_TENANT, f"user-{n}") for n in range(1000)]
    victim = own_cluster.nodes[1]
    dead = next(o for o in owners if own_cluster.node_for(store.tag(o)) is victim)
    alive = next(o for o in owners if own_cluster.node_for(store.tag(o)) is not victim)
    address = f"127.0.0.1:{victim.port}"
    caplog.set_level(logging.INFO, "gensearch.memory.store")
    try:
        # As the service does at start: a script first used with a master down is loaded
        # into every master, and fails for everyone (MemoryStore.load_scripts).
        await store.load_scripts()
        for owner in (dead, alive):
            await store.create_conversation(owner, "c")

        own_cluster.kill(victim)
        for _ in range(ROUNDS):
            with pytest.raises(Unavailable) as caught:
                await store.list_conversations(dead, 10, None)
            assert caught.value.reason == "STORE_UNAVAILABLE"
            # The healthy masters serve their users all along: no recovery of the dead one.
            assert len((await store.list_conversations(alive, 10, None)).items) == 1
        back = store_lines(caplog, logging.INFO, "memory store reachable again")
        assert back == [], [r.getMessage() for r in back]
        down = store_lines(caplog, logging.WARNING, "memory store unavailable")
        assert len(down) == 1, [r.getMessage() for r in down]
        assert address in down[0].getMessage(), down[0].getMessage()
        assert getattr(down[0], "node", None) == address

        await own_cluster.restart(victim)
        assert len((await store.list_conversations(alive, 10, None)).items) == 1
        assert store_lines(caplog, logging.INFO, "memory store reachable again") == []
        for _ in range(600):  # until the client finds the node again (no timing asserted)
            try:
                await store.list_conversations(dead, 10, None)
                break
            except Unavailable:
                await asyncio.sleep(0.1)
        for _ in range(ROUNDS):
            await store.list_conversations(dead, 10, None)
            await store.list_conversations(alive, 10, None)
        back = store_lines(caplog, logging.INFO, "memory store reachable again")
        assert [r.getMessage() for r in back] == [f"memory store reachable again (node {address})"]
        assert getattr(back[0], "node", None) == address
        assert len(store_lines(caplog, logging.WARNING, "memory store unavailable")) == 1
    finally:
        await store.close()
