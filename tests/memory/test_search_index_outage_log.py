"""An operator's view of the memory search index's Qdrant server being unreachable: one
WARNING from the indexer (turns wait in the outbox) and one from the store, both naming
memory's own settings, not a WARNING per stored turn and per retry (a real Redis-protocol
server, real qdrant-client against a port where nothing listens)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT
from services.common.redis_client import connect
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from services.memory.indexer import Indexer
from services.memory.search_index import make_index
from services.memory.store import MemoryStore, Owner

ALICE = Owner(DEFAULT_TENANT, "alice")
TURNS = 4


async def test_an_unreachable_index_is_one_warning_not_one_per_turn(
    redis_server: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = MemoryStore(redis, key_prefix=f"outage-{uuid.uuid4().hex[:8]}")
    index = make_index(
        mode="keyword",
        data_dir=tmp_path,
        qdrant_url=f"http://127.0.0.1:{free_port()}",
        qdrant_api_key="",
        collection="outage",
        model_path="",
        embed_threads=1,
    )
    assert index is not None
    indexer = Indexer(store, index, retry_seconds=0.0)
    caplog.set_level(logging.INFO)
    try:
        cid = (await store.create_conversation(ALICE, "c")).conversation_id
        for i in range(TURNS):
            stored = await store.create_interaction(
                ALICE, cid, pb.Interaction(input=f"q{i}", response=f"a{i}"), ""
            )
            indexer.stored(ALICE, stored)
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
