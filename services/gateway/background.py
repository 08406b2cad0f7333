"""Work done after an answer, off its path: jobs on a bounded in-process queue, run by a
few worker tasks the queue keeps (rolling-summary folds: ``summarizer``; semantic answer
cache stores: ``ask_cache``).

Bounded so that a flood of calls cannot pile work up in a replica: a job that finds the
queue full is refused, and its submitter counts and logs the drop. Shared fairly by
tenants: one tenant holds at most ``per_tenant`` of the waiting jobs (its next is refused,
another tenant's still taken), and the workers take the tenants' jobs in turn (first come,
first served within a tenant, as ``common/fair_slots.py`` hands out slots), so a tenant
that floods the queue neither keeps another's job out nor makes it wait behind its own.
A job's own errors are its runner's to handle; anything else it raises is logged here and
the worker goes on, since the answer it followed has gone out already. Stopping the
gateway drains the queue within a timeout, then cancels the workers.

A job runs in the context it was submitted from (``contextvars``), less the call's
deadline (``call_deadline.context_past_the_call``), so its spans and log
lines belong to the call it follows, not to whichever call happened to start the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from services.common.call_deadline import context_past_the_call
from services.common.logs import context_of_no_call
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
        per_tenant: int,
        workers: int,
        drain_timeout: float,
    ) -> None:
        """``run`` does one job; ``name`` says whose jobs in the log; ``size`` jobs wait
        at most, ``per_tenant`` of them one tenant's."""
        self._run = run
        self._name = name
        self._size = size
        self._per_tenant = per_tenant
        # Tenant -> its waiting jobs; the first key is the tenant served next.
        self._jobs: OrderedDict[str, deque[tuple[J, contextvars.Context]]] = OrderedDict()
        # One token per job waiting (its size is their count: a worker takes a token and a
        # job in one step) and one more unfinished per job running: workers wait on it,
        # ``idle`` joins it.
        self._ready: asyncio.Queue[None] = asyncio.Queue()
        self._worker_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self._drain_timeout = drain_timeout
        self.closed = False
        # The drain has ended: no worker runs any more, so a job queued now never would.
        self.stopped = False

    def submit(self, tenant: str, job: J) -> bool:
        """Queues ``job`` of ``tenant``; False (the job will not run) when the queue is
        full, the tenant holds its share of it, or the gateway is stopping."""
        if self.closed:
            return False
        return self._put(tenant, job)

    def requeue(self, tenant: str, job: J) -> bool:
        """Queues ``job`` of ``tenant`` also once the gateway is stopping: for a job held
        back while another ran, called by that running job (its runner, before the job
        ends). A stopping queue still runs it: the running job is not done yet, so
        ``drain``'s wait for the queue to empty waits for this one too. Not once the
        drain's timeout has cut the running jobs (the runner's job is then being
        cancelled, see ``stopped``): no worker would run it. False when the queue is full
        or the tenant holds its share of it, as ``submit``."""
        return self._put(tenant, job)

    def _put(self, tenant: str, job: J) -> bool:
        if self.waiting() >= self._size:
            return False
        queue = self._jobs.get(tenant)
        if queue is not None and len(queue) >= self._per_tenant:
            return False
        # The job runs in its call's context (its lines hide that caller's key), less the
        # call's deadline: the job outlives the call, and no cutoff of its must bound it.
        self._jobs.setdefault(tenant, deque()).append((job, context_past_the_call()))
        self._ready.put_nowait(None)
        if not self._workers:  # started by the first job: they need a running loop
            # In a context of no call: a worker outlives the call that started it, and
            # serves every tenant's jobs (each runs in its own call's context, below).
            self._workers = [
                asyncio.create_task(self._work(), context=context_of_no_call())
                for _ in range(self._worker_count)
            ]
        return True

    def waiting(self) -> int:
        """Jobs queued and not yet started."""
        return self._ready.qsize()

    async def idle(self) -> None:
        """Returns once no job waits or runs (every job queued so far has run)."""
        await self._ready.join()

    async def drain(self) -> None:
        """Stop taking jobs, finish the queued ones within the drain timeout, stop."""
        self.closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.join(), self._drain_timeout)
        for worker in self._workers:
            await cancel_and_wait(worker)
        self.stopped = True

    def _next(self) -> tuple[J, contextvars.Context]:
        """The first waiting job of the tenant whose turn it is."""
        tenant, queue = next(iter(self._jobs.items()))
        got = queue.popleft()
        if queue:
            self._jobs.move_to_end(tenant)  # its next job waits for the other tenants'
        else:
            del self._jobs[tenant]
        return got

    async def _work(self) -> None:
        while True:
            await self._ready.get()
            job, context = self._next()  # no await between: the token and its job go together
            try:
                await asyncio.create_task(self._logged(job), context=context)
            finally:
                self._ready.task_done()

    async def _logged(self, job: J) -> None:
        """``job`` run, its failure logged in its own call's context: the line is redacted
        of that call's keys (logs.hide_in_this_call), which the error may quote."""
        try:
            await self._run(job)
        except Exception:  # a worker must outlive any one job
            log.exception("background job failed", extra={"queue": self._name})
