"""The search indexer stops when its service stops, also when the cancel of its retry loop
is lost. On Python 3.11 redis-py's ``asyncio.wait_for`` around each command loses a cancel
that lands as the reply comes in (services/common/tasks.py); the retry loop then ran on
and the memory service's shutdown waited for it forever (a CI run hung 300 s in a test's
teardown). The store below loses the first cancel the same way, at the same place: the
retry loop's Redis read."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from services.common.redis_client import connect
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex
from services.memory.store import MemoryStore
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
