"""Work done after an answer, off its path: jobs on a bounded in-process queue, run by a
few worker tasks the queue keeps (rolling-summary folds: ``summarizer``; semantic answer
cache stores: ``ask_cache``).

Bounded so that a flood of calls cannot pile work up in a replica: a job that finds the
queue full is refused, and its submitter counts and logs the drop. A job's own errors are
its runner's to handle; anything else it raises is logged here and the worker goes on,
since the answer it followed has gone out already. Stopping the gateway drains the queue
within a timeout, then cancels the workers.

A job runs in the context it was submitted from (``contextvars``), so its spans and log
lines belong to the call it follows, not to whichever call happened to start the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from services.common.tasks import cancel_and_wait

log = logging.getLogger("gensearch.gateway.background")

J = TypeVar("J")


class WorkQueue(Generic[J]):
    def __init__(
        self,
        run: Callable[[J], Coroutine[Any, Any, None]],
        *,
        name: str,
        size: int,
        workers: int,
        drain_timeout: float,
    ) -> None:
        """``run`` does one job; ``name`` says whose jobs in the log."""
        self._run = run
        self._name = name
        self._queue: asyncio.Queue[tuple[J, contextvars.Context]] = asyncio.Queue(size)
        self._worker_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self._drain_timeout = drain_timeout
        self.closed = False

    def submit(self, job: J) -> bool:
        """Queues ``job``; False (the job will not run) when the queue is full or the
        gateway is stopping."""
        if self.closed:
            return False
        try:
            self._queue.put_nowait((job, contextvars.copy_context()))
        except asyncio.QueueFull:
            return False
        if not self._workers:  # started by the first job: they need a running loop
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._worker_count)]
        return True

    def waiting(self) -> int:
        """Jobs queued and not yet started."""
        return self._queue.qsize()

    async def idle(self) -> None:
        """Returns once no job waits or runs (every job queued so far has run)."""
        await self._queue.join()

    async def drain(self) -> None:
        """Stop taking jobs, finish the queued ones within the drain timeout, stop."""
        self.closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), self._drain_timeout)
        for worker in self._workers:
            await cancel_and_wait(worker)

    async def _work(self) -> None:
        while True:
            job, context = await self._queue.get()
            try:
                await asyncio.create_task(self._run(job), context=context)
            except Exception:  # a worker must outlive any one job
                log.exception("background job failed", extra={"queue": self._name})
            finally:
                self._queue.task_done()
