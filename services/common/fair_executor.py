"""A one-thread worker that tenants take turns on.

The embedded engine (qdrant-edge) and the local embedding model each run every call on
one dedicated thread. Served first come, first served, one tenant's queue of calls was
every tenant's wait: 60 deep searches at once from one tenant (within its
concurrent-calls quota) took another tenant's 9 ms search to 1.2 s, since each waited
behind all 60. Here every tenant (``current_tenant()``, the caller of the RPC being
served) has its own FIFO queue and the thread takes one call from each tenant with calls
waiting, in turn: a tenant's call waits behind at most one call of each other busy
tenant, however many that tenant has queued. Calls of one tenant keep their order (a
write, then a read of it, run in that order); calls of different tenants touch different
collections, so their order never mattered.

A call cancelled while it waits is dropped unrun; one already running finishes on the
thread and its result is dropped, as ``loop.run_in_executor`` did.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from services.common.auth import current_tenant

T = TypeVar("T")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: asyncio.Future[Any]
    # The caller's context, which the thread runs ``fn`` in (as ``asyncio.to_thread``
    # does): what it logs is redacted of the keys of the call it serves.
    context: contextvars.Context


class FairExecutor:
    """``run(fn, *args)`` runs ``fn(*args)`` on one worker thread, tenants served in turn."""

    def __init__(self, thread_name_prefix: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name_prefix)
        # Tenant -> its calls waiting; the first key is the tenant served next.
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._running: _Job | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, loop.create_future(), contextvars.copy_context())
        tenant = current_tenant()
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
        queue.append(job)
        self._start_next(loop)
        result: T = await job.done
        return result

    def queued(self, tenant: str) -> int:
        """How many of ``tenant``'s calls wait for the thread (not counting one running)."""
        queue = self._queues.get(tenant)
        return sum(not job.done.done() for job in queue) if queue else 0

    async def drain(self) -> None:
        """Waits until every call queued or running has been answered (their failures are
        their callers'). A call whose caller went away may still be on the thread: what
        ``run`` is given next waits for it all the same."""
        while pending := [
            job.done
            for job in [*(j for queue in self._queues.values() for j in queue), self._running]
            if job is not None and not job.done.done()
        ]:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """For a server's ``on_stop``: calls still waiting are dropped, the thread let go."""
        self.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for queue in self._queues.values():
                for job in queue:
                    job.done.cancel()
            self._queues.clear()
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _start_next(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._running is None and self._queues:
            tenant, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(tenant)  # its next call waits for the others' turns
            else:
                del self._queues[tenant]
            if job.done.done():
                continue  # cancelled while it waited: never run
            self._running = job
            try:
                running = self._executor.submit(job.context.run, job.fn, *job.args)
            except RuntimeError as err:  # shut down
                self._running = None
                job.done.set_exception(err)
                continue
            running.add_done_callback(functools.partial(self._on_thread_done, loop, job))

    def _on_thread_done(self, loop: asyncio.AbstractEventLoop, job: _Job, ran: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._finished, loop, job, ran)

    def _finished(self, loop: asyncio.AbstractEventLoop, job: _Job, ran: Future[Any]) -> None:
        self._running = None
        if not job.done.done():
            if ran.cancelled():
                job.done.cancel()
            elif (err := ran.exception()) is not None:
                job.done.set_exception(err)
            else:
                job.done.set_result(ran.result())
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._start_next(loop)
