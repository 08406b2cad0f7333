"""The search indexer stops when its service stops, also when the cancel of its retry loop
is lost. On Python 3.11 redis-py's ``asyncio.wait_for`` around each command loses a cancel
that lands as the reply comes in (services/common/tasks.py); the retry loop then ran on
and the memory service's shutdown waited for it forever (a CI run hung 300 s in a test's
teardown). The store below loses the first cancel the same way, at the same place: the
retry loop's Redis read."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.redis_client import connect
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex
from services.memory.store import MemoryStore, Owner
from services.retrieval.edge_store import EdgeStore
from tests.memory.conftest import Target
from tests.support.lost_cancel import LosesTheFirstCancel

BACKENDS = ("standalone",)


class _LosesTheFirstCancel(MemoryStore):
    """Loses the first cancel that lands while the outbox is read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read = LosesTheFirstCancel()

    async def outbox_due(self, now_ms: int, count: int) -> list[str]:
        await self.read.reply()
        return await super().outbox_due(now_ms, count)


async def test_close_ends_the_retry_loop_whose_cancel_was_lost(
    target: Target, tmp_path: Path
) -> None:
    redis = connect(target.url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = _LosesTheFirstCancel(redis, key_prefix=f"stop-{uuid.uuid4().hex[:8]}")
    indexer = Indexer(store, InteractionIndex(EdgeStore(tmp_path / "index"), None, "stop"), 0.01)
    indexer.start()
    try:
        await asyncio.wait_for(store.read.started.wait(), 10)
        # Waited for without cancelling it: a timeout's cancel would reach the loop too.
        closing = asyncio.create_task(indexer.close())
        await asyncio.wait({closing}, timeout=10)
        assert closing.done(), "close() still waits for the retry loop"
        assert store.read.lost  # the loop did lose a cancel ...
        reads = store.read.calls
        await asyncio.sleep(1.0)  # five of its periods
        assert store.read.calls == reads  # ... and runs no more
    finally:
        await redis.aclose()


class _HoldsItsJobs(InteractionIndex):
    """An index whose writes hang until it is closed, then fail (as a write against a
    closed index does): a job stuck past the indexer's wait at close."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.writing: list[asyncio.Task[object]] = []
        self.started = asyncio.Event()
        self._closed = asyncio.Event()

    async def add(self, owner: Owner, interaction: pb.Interaction) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.writing.append(task)
        self.started.set()
        await self._closed.wait()
        raise RuntimeError("the search index is closed")

    async def close(self) -> None:
        self._closed.set()
        await super().close()


async def test_close_cancels_a_job_stuck_past_its_wait(
    target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job still running when close's wait is over was left pending: it ran on against
    the closed index and Redis client, and logged "search index job lost" (an ERROR, for a
    job in the outbox already) or failed with them. It is cancelled now, before the index
    closes; written ahead, it waits in the outbox for a drain."""
    caplog.set_level(logging.INFO)
    redis = connect(target.url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = MemoryStore(redis, key_prefix=f"stop-{uuid.uuid4().hex[:8]}")
    index = _HoldsItsJobs(EdgeStore(tmp_path / "index"), None, "stop")
    indexer = Indexer(store, index, 60.0, close_wait_seconds=0.1)
    turn = pb.Interaction(interaction_id=str(uuid.uuid4()), conversation_id="c", input="kumquat")
    try:
        await indexer.stored(Owner("acme", "alice"), turn)
        await asyncio.wait_for(index.started.wait(), 10)
        await indexer.close()
        job = index.writing[0]
        left = job.done()
        if not left:  # the old way: let it run on, as it did, to see what it logs
            await asyncio.wait({job}, timeout=5)
        assert left, "a job of the indexer still ran after close()"
        assert job.cancelled()
        # Written ahead: the job waits in the outbox for any replica's drain.
        waiting = await store.outbox_due(2**62, 10)
        assert [json.loads(m)[3] for m in waiting] == [turn.interaction_id]
    finally:
        await redis.aclose()
    lines = [r for r in caplog.records if r.name.startswith("gensearch")]
    assert not [r for r in lines if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage() for r in lines
    ]
