"""An operator's view of the memory search index's Qdrant server being unreachable: one
WARNING from the indexer (turns wait in the outbox) and one from the store, both naming
memory's own settings, not a WARNING per stored turn and per retry (a real Redis-protocol
server, real qdrant-client against a port where nothing listens)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT
from services.common.errors import Unavailable
from services.common.metrics import REDIS_ERRORS
from services.common.redis_client import connect
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex, make_index
from services.memory.store import MemoryStore, Owner
from tests.support.redis_cluster import LocalCluster

ALICE = Owner(DEFAULT_TENANT, "alice")
TURNS = 4


def _keyword_index(data_dir: Path, *, qdrant_url: str) -> InteractionIndex:
    """Memory's search index as its settings make it, keyword mode (no model): on the
    Qdrant server at ``qdrant_url``, or the embedded engine in ``data_dir`` for ""."""
    index = make_index(
        mode="keyword",
        data_dir=data_dir,
        qdrant_url=qdrant_url,
        qdrant_api_key="",
        collection="outage",
        model_path="",
        embed_threads=1,
    )
    assert index is not None
    return index


async def test_an_unreachable_index_is_one_warning_not_one_per_turn(
    redis_server: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = MemoryStore(redis, key_prefix=f"outage-{uuid.uuid4().hex[:8]}")
    index = _keyword_index(tmp_path, qdrant_url=f"http://127.0.0.1:{free_port()}")
    indexer = Indexer(store, index, retry_seconds=0.0)
    caplog.set_level(logging.INFO)
    try:
        cid = (await store.create_conversation(ALICE, "c")).conversation_id
        for i in range(TURNS):
            stored = await store.create_interaction(
                ALICE, cid, pb.Interaction(input=f"q{i}", response=f"a{i}"), ""
            )
            await indexer.stored(ALICE, stored)
            await indexer.idle()
        await indexer.drain()  # every job fails again
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("gensearch.")
        ]
        assert len(warned) == 2, warned  # the indexer's, and the store's
        assert all("GENSEARCH_MEMORY_SEARCH_QDRANT_URL" in line for line in warned), warned
        assert not any("GENSEARCH_RETRIEVAL" in line for line in warned), warned
    finally:
        await indexer.close()
        await redis.aclose()


def _memory_redis_errors() -> float:
    return sum(
        sample.value
        for metric in REDIS_ERRORS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("store") == "memory"
    )


async def test_a_redis_outage_is_not_a_warning_per_outbox_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Memory's own Redis down while the search index is on: the outbox retry loop, every
    GENSEARCH_MEMORY_SEARCH_RETRY_SECONDS (5 s), logged 'search outbox unreadable' as a
    WARNING each time (six every 30 s beside the store's one 'memory store unavailable').
    Now at most one every 30 s, as the store's own."""
    server = RedisProcess(tmp_path / "redis")  # never started: nothing on its port
    store = MemoryStore(connect(server.url, cluster=False, socket_timeout=1, connect_timeout=1))
    index = _keyword_index(tmp_path, qdrant_url="")
    indexer = Indexer(store, index, retry_seconds=0.01)
    caplog.set_level(logging.INFO)
    before = _memory_redis_errors()
    indexer.start()
    try:
        # Each failed drain counts at least one failed Redis call: wait for six of them
        # (no timing is asserted; the bound only keeps a broken loop from hanging).
        async with asyncio.timeout(60):
            while True:
                if _memory_redis_errors() >= before + 6:
                    break
                await asyncio.sleep(0.01)
    finally:
        await indexer.close()
        await store.close()
    unreadable = [
        r
        for r in caplog.records
        if r.name == "gensearch.memory.indexer" and r.levelno >= logging.WARNING
    ]
    assert len(unreadable) <= 1, [r.getMessage() for r in unreadable]


async def test_a_turn_redis_cannot_read_is_blamed_on_redis_not_the_index(
    own_cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A retried index job reads its turn from memory's Redis first. With the Redis Cluster
    node of the turn's owner down (the outbox's node up, the index fine) that read fails:
    the indexer logged 'search index unavailable ... GENSEARCH_MEMORY_SEARCH_QDRANT_URL',
    sending the operator to a Qdrant that was never down. Now its line names Redis's
    setting, and one INFO line says when the turns are read again."""
    redis = connect(own_cluster.url, cluster=True, socket_timeout=2, connect_timeout=1)
    store = MemoryStore(redis, key_prefix=f"unread-{uuid.uuid4().hex[:8]}")
    # The outbox's nodes (and that of its keys from before the bound) stay up.
    prefix = store.outbox_key.partition(":{")[0]
    outbox_nodes = {
        own_cluster.node_for(key).port for key in (store.outbox_key, f"{prefix}:search-outbox")
    }
    owner = next(
        o
        for o in (Owner(DEFAULT_TENANT, f"user-{n}") for n in range(1000))
        if own_cluster.node_for(store.tag(o)).port not in outbox_nodes
    )
    victim = own_cluster.node_for(store.tag(owner))
    # Another owner, on a master that stays up: its turns are read all along.
    healthy = next(
        o
        for o in (Owner(DEFAULT_TENANT, f"user-{n}") for n in range(1000))
        if own_cluster.node_for(store.tag(o)) is not victim
    )
    index = _keyword_index(tmp_path, qdrant_url="")  # the embedded engine: up all along
    indexer = Indexer(store, index, retry_seconds=0.0)
    caplog.set_level(logging.INFO)

    def back() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "gensearch.memory.indexer" and r.levelno == logging.INFO
        ]

    try:
        await store.load_scripts()  # as the service does: a script is on every master
        cid = (await store.create_conversation(owner, "c")).conversation_id
        stored = await store.create_interaction(
            owner, cid, pb.Interaction(input="puffins", response="seabirds"), ""
        )
        # The job as a failed first attempt leaves it: in the outbox, due now.
        job = json.dumps(["index", owner.tenant, owner.user, stored.interaction_id])
        await store.outbox_add(job, 0, owner, max_jobs=10, per_tenant=0, index=True)

        own_cluster.kill(victim)
        assert await indexer.drain() == 0  # the turn's read failed: the job waits
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name == "gensearch.memory.indexer" and r.levelno >= logging.WARNING
        ]
        assert len(warned) == 1, warned
        assert "GENSEARCH_MEMORY_REDIS_URL" in warned[0], warned
        assert "QDRANT" not in warned[0], warned

        # A turn of the healthy master read (its job done) is not the dead one's recovery:
        # before, it logged 'search index jobs read their turns again' (and the dead
        # master's next failure the warning again, every 30 s).
        other = (await store.create_conversation(healthy, "c")).conversation_id
        read = await store.create_interaction(
            healthy, other, pb.Interaction(input="gannets", response="seabirds"), ""
        )
        job = json.dumps(["index", healthy.tenant, healthy.user, read.interaction_id])
        await store.outbox_add(job, 0, healthy, max_jobs=10, per_tenant=0, index=True)
        assert await indexer.drain() == 1  # the healthy one's; the dead one's waits
        assert await index.count(healthy, read.interaction_id) == 2
        assert back() == [], back()

        await own_cluster.restart(victim)
        for _ in range(600):  # the cluster client finds the node again
            if await indexer.drain() == 1:
                break
            await asyncio.sleep(0.1)
        assert await index.count(owner, stored.interaction_id) == 2
        node = f"127.0.0.1:{victim.port}"  # the turn's node, named in both lines
        assert node in warned[0], warned
        assert back() == [f"search index jobs read their turns again (node {node})"], back()
    finally:
        await indexer.close()
        await redis.aclose()


async def test_a_search_only_outage_of_the_index_ends_with_an_info_line(
    redis_server: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The index failing searches only (no turn stored meanwhile; Redis fine) warned once,
    and never said when it answered again: only a job's success did. Here the embedded
    engine cannot open its directory (a file where it goes), then can."""
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = MemoryStore(redis, key_prefix=f"search-out-{uuid.uuid4().hex[:8]}")
    blocked = tmp_path / "data"
    blocked.write_text("not a directory")
    index = _keyword_index(blocked, qdrant_url="")
    indexer = Indexer(store, index, retry_seconds=60.0)
    caplog.set_level(logging.INFO)

    def lines(level: int) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "gensearch.memory.indexer" and r.levelno == level
        ]

    try:
        for _ in range(3):
            with pytest.raises(Unavailable) as caught:
                await indexer.search(ALICE, "puffins", "", pb.SEARCH_MODE_KEYWORD, 5)
            assert caught.value.reason == "SEARCH_INDEX_UNAVAILABLE"
        assert len(lines(logging.WARNING)) == 1, lines(logging.WARNING)
        assert not lines(logging.INFO)

        blocked.unlink()  # the engine's directory can be made now
        assert await indexer.search(ALICE, "puffins", "", pb.SEARCH_MODE_KEYWORD, 5) == []
        assert lines(logging.INFO) == ["search index reachable again"]
    finally:
        await indexer.close()
        await redis.aclose()


async def test_a_broken_index_on_disk_is_named_by_its_files_not_the_qdrant_setting(
    redis_server: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded index (``<data_dir>/memory-index``) opens at its first use, so a broken
    one (a partial copy: a schema file, its shard's files unreadable) starts without a word
    and each search answers UNAVAILABLE. Its warning named
    GENSEARCH_MEMORY_SEARCH_QDRANT_URL, empty in that case: it now names the index's
    directory and GENSEARCH_DATA_DIR."""
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = MemoryStore(redis, key_prefix=f"broken-{uuid.uuid4().hex[:8]}")
    collections = tmp_path / "memory-index" / "collections"
    (collections / "outage").mkdir(parents=True)
    (collections / "outage.json").write_text('{"kind": "interactions", "name": "outage"}')
    (collections / "outage" / "segments").write_text("not the engine's files")
    indexer = Indexer(store, _keyword_index(tmp_path, qdrant_url=""), retry_seconds=60.0)
    caplog.set_level(logging.INFO)
    try:
        with pytest.raises(Unavailable) as caught:
            await indexer.search(ALICE, "puffins", "", pb.SEARCH_MODE_KEYWORD, 5)
        assert caught.value.reason == "SEARCH_INDEX_UNAVAILABLE"
        assert "QDRANT" not in str(caught.value)
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name == "gensearch.memory.indexer" and r.levelno >= logging.WARNING
        ]
        assert len(warned) == 1, warned
        assert "QDRANT" not in warned[0], warned
        assert "GENSEARCH_DATA_DIR" in warned[0], warned
        assert str(tmp_path / "memory-index") in warned[0], warned
    finally:
        await indexer.close()
        await redis.aclose()
