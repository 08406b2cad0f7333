"""Which Redis node an outage line names, where it used to name none (docs/operations.md,
"Redis outages, node by node"): a call before the cluster client read any slot map (the
URL's node, the only one it calls), the scripts loaded into each master at start (the
master that failed), and a master a failover replaced (its outage ends with a line naming
it: no answer of it would ever end it). Real Redis Cluster nodes on loopback."""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import Iterator

import pytest

from services.common.auth import DEFAULT_TENANT
from services.common.errors import Unavailable
from services.common.logs import ThrottledWarning
from services.common.redis_client import answered, connect, node_of
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import store_lines
from tests.support.redis_cluster import LocalCluster


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening while the block runs: connections to it
    are refused, and no other process (a parallel test's server) can take it meanwhile,
    as it could a port closed again (``_closed_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def _ends(caplog: pytest.LogCaptureFixture, log: logging.Logger) -> list[logging.LogRecord]:
    """``log``'s INFO records (outage ends): only its own, whatever another test left the
    level of other loggers at (an INFO line of the Redis client or another service module
    would otherwise be counted)."""
    return [r for r in caplog.records if r.name == log.name and r.levelno == logging.INFO]


async def test_a_call_before_any_slot_map_names_the_urls_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _refusing_port() as port:  # nothing listens: the client never reads a map
        await _no_map_call(caplog, port)


async def _no_map_call(caplog: pytest.LogCaptureFixture, port: int) -> None:
    redis = connect(
        f"redis://user:secret@127.0.0.1:{port}", cluster=True, socket_timeout=1, connect_timeout=1
    )
    store = MemoryStore(redis, key_prefix=f"nomap-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.INFO, "gensearch.memory.store")
    try:
        with pytest.raises(Unavailable):
            await store.create_conversation(Owner(DEFAULT_TENANT, "alice"), "c")
        down = store_lines(caplog, logging.WARNING, "memory store unavailable")
        assert len(down) == 1, [r.getMessage() for r in down]
        assert f"at node 127.0.0.1:{port}" in down[0].getMessage()
        assert getattr(down[0], "node", None) == f"127.0.0.1:{port}"
        assert "secret" not in down[0].getMessage() and "user" not in str(down[0].node)  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_loading_the_scripts_names_the_master_that_is_down(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    victim = own_cluster.nodes[2]
    redis = connect(own_cluster.url, cluster=True, socket_timeout=2, connect_timeout=1)
    store = MemoryStore(redis, key_prefix=f"load-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.INFO, "gensearch.memory.store")
    try:
        await redis.initialize()  # the map names the victim as a master
        own_cluster.kill(victim)
        with pytest.raises(Unavailable):
            await store.load_scripts()
        down = store_lines(caplog, logging.WARNING, "memory store unavailable")
        assert len(down) == 1, [r.getMessage() for r in down]
        assert getattr(down[0], "node", None) == f"127.0.0.1:{victim.port}", down[0].getMessage()
    finally:
        await store.close()


async def test_a_master_replaced_by_a_failover_has_its_outage_ended_naming_it(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster helper has no replicas to fail over to: the old master is a node the
    client's real slot map does not list any more (as after a failover), beside a real
    master that is down and still listed (a master without replica keeps its slots)."""
    redis = connect(own_cluster.url, cluster=True, socket_timeout=2, connect_timeout=1)
    log = logging.getLogger("gensearch.test.outage")
    caplog.set_level(logging.INFO, log.name)
    warning = ThrottledWarning(log, "cache unavailable (%s)", recovery="cache reachable again")
    try:
        await redis.set("k", "v")
        answering = node_of(redis, "k")
        assert answering is not None
        still_listed = next(
            f"127.0.0.1:{n.port}" for n in own_cluster.nodes if f"127.0.0.1:{n.port}" != answering
        )
        replaced = f"127.0.0.1:{_closed_port()}"
        warning(ConnectionError("refused"), node=replaced)
        warning(ConnectionError("refused"), node=still_listed)
        answered(warning, redis, "k")
        ends = _ends(caplog, log)
        assert [getattr(r, "node", None) for r in ends] == [replaced], [
            r.getMessage() for r in ends
        ]
        assert ends[0].getMessage().startswith(f"cache reachable again (node {replaced} ")
        assert "failover" in ends[0].getMessage()
        assert warning.down_nodes == [still_listed]  # its own answer ends it, not another's
        answered(warning, redis, "k")
        assert len(_ends(caplog, log)) == 1
    finally:
        await redis.aclose()


async def test_the_urls_node_named_before_any_map_ends_as_a_recovery_once_a_map_is_read(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL names its node otherwise than the slot map does (a host name, as a
    Kubernetes Service's, where the map lists addresses). An outage of it named before any
    map (the URL's name) ends when the map is read, which that node answered: a recovery
    line naming it. Before, the first answer after the map ended it as a master a failover
    had replaced (a false 'failover' line)."""
    port = own_cluster.nodes[0].port
    redis = connect(f"redis://localhost:{port}", cluster=True, socket_timeout=2, connect_timeout=1)
    log = logging.getLogger("gensearch.test.outage")
    caplog.set_level(logging.INFO, log.name)
    warning = ThrottledWarning(log, "cache unavailable (%s)", recovery="cache reachable again")
    try:
        before_map = node_of(redis, "k")
        assert before_map == f"localhost:{port}"
        warning(ConnectionError("refused"), node=before_map)
        await redis.set("k", "v")  # the map is read from the URL's node: it answered
        assert node_of(redis, "k") != before_map  # the map names it otherwise
        answered(warning, redis, "k")
        ends = _ends(caplog, log)
        assert [r.getMessage() for r in ends] == [f"cache reachable again (node {before_map})"]
        assert warning.down_nodes == []
    finally:
        await redis.aclose()
