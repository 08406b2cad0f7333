"""Finishes deletions that were interrupted.

DeleteConversation deletes a long conversation in batches (``store.delete_conversation``):
the first removes the conversation, so it is NOT_FOUND at once; later ones its turns. A
call that failed in between and was never retried left those turns stored, read by no
one, for good. A call marks its deletion in Redis before each batch that may leave turns
to a later one (a conversation deleted in one batch needs no mark) and unmarks it when
done; this loop, in every replica, finishes the deletions whose mark outlived
GENSEARCH_MEMORY_DELETE_RESUME_SECONDS (``store.resume_deletions``). Two replicas
finishing one deletion at once is harmless: each batch deletes what is still listed.
Each deletion finished here has its search index drop job written to the outbox before
it runs, as the calls' own (``Indexer.dropping``): a replica killed while it resumes one
leaves the job to the next drain. It was sent from memory after the deletion before, and
lost with a replica killed in between: the interrupted call's own job may have been
drained already (taken out while the conversation was still there, or run before the
later batches), and the entries stayed in the index until the sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from services.common.errors import ServiceError
from services.common.tasks import cancel_and_wait
from services.memory.metrics import DELETIONS_PENDING, DELETIONS_RESUMED
from services.memory.store import MemoryStore, Owner

if TYPE_CHECKING:  # the indexer's module costs seconds of start-up: imported when on
    from services.memory.indexer import Indexer

log = logging.getLogger("gensearch.memory.deletions")


class DeletionResumer:
    def __init__(
        self,
        store: MemoryStore,
        every_seconds: float,
        indexer: Indexer | None = None,
    ) -> None:
        self._store = store
        self._every = every_seconds
        self._indexer = indexer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                finished = await self._store.resume_deletions(around=self._around)
            except Exception as err:  # Redis down (the store logged it): next period
                log.warning(
                    "interrupted deletions not finished yet",
                    extra={"error": (str(err) or type(err).__name__)[:300]},
                )
                finished = 0
            if finished:
                log.info("interrupted deletions finished", extra={"finished": finished})
            await self._count_pending()

    async def _around(
        self, owner: Owner, cid: str, deletion: Callable[[], Awaitable[bool]]
    ) -> object:
        """One deletion, its drop job written ahead when there is a search index, counted
        once finished."""
        done: object
        if self._indexer is None:
            done = await deletion()
        else:
            done = await self._indexer.dropping(owner, deletion, cid=cid)
        if done:
            # Counted one by one: a round that fails past some owners finished the others.
            DELETIONS_RESUMED.inc()
        return done

    async def _count_pending(self) -> None:
        """Sets the gauge of marked deletions (one ZCARD a period): one that stays up, or
        keeps rising, is deletions the resume cannot finish (the owner's node down)."""
        try:
            DELETIONS_PENDING.set(await self._store.deletions_pending())
        except ServiceError:  # Redis down (the store logged it): the last value stands
            return
