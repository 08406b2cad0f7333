"""The gateway's background work queue (Ask's semantic-cache writes, summary folds) stops
when the gateway stops, also when a job under way loses the cancel that ends it (on
Python 3.11 redis-py's ``wait_for`` loses one that lands as a reply comes in:
services/common/tasks.py); before, its worker then waited for the next job forever and
the gateway's shutdown with it."""

from __future__ import annotations

import asyncio

from services.gateway.background import WorkQueue


async def test_drain_ends_a_worker_whose_job_lost_its_cancel() -> None:
    running = asyncio.Event()
    lost: list[str] = []

    async def job(name: str) -> None:
        running.set()
        try:
            await asyncio.sleep(60)  # a call under way when the gateway stops
        except asyncio.CancelledError:
            lost.append(name)  # lost: the job ends as if its call had answered

    queue: WorkQueue[str] = WorkQueue(job, name="test", size=4, workers=1, drain_timeout=0.1)
    assert queue.submit("slow")
    await asyncio.wait_for(running.wait(), 10)
    # Waited for without cancelling it: a timeout's cancel would reach the worker too.
    draining = asyncio.create_task(queue.drain())
    await asyncio.wait({draining}, timeout=10)
    assert draining.done(), "drain() still waits for its worker"
    assert lost == ["slow"]
    assert not queue.submit("late")  # a drained queue takes no more jobs


async def test_drain_runs_the_queued_jobs_first() -> None:
    done: list[int] = []

    async def job(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    queue: WorkQueue[int] = WorkQueue(job, name="test", size=8, workers=2, drain_timeout=30)
    for n in range(5):
        assert queue.submit(n)
    await queue.drain()
    assert sorted(done) == [0, 1, 2, 3, 4]
