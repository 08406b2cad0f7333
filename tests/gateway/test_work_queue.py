"""The gateway's background work queue (Ask's semantic-cache writes, summary folds) stops
when the gateway stops, also when a job under way loses the cancel that ends it (on
Python 3.11 redis-py's ``wait_for`` loses one that lands as a reply comes in:
services/common/tasks.py); before, its worker then waited for the next job forever and
the gateway's shutdown with it."""

from __future__ import annotations

import asyncio
import contextvars
import json

from services.common.logs import REDACTED, hide_in_this_call
from services.gateway.background import WorkQueue
from tests.support.log_lines import formatted_lines


async def test_drain_ends_a_worker_whose_job_lost_its_cancel() -> None:
    running = asyncio.Event()
    lost: list[str] = []

    async def job(name: str) -> None:
        running.set()
        try:
            await asyncio.sleep(60)  # a call under way when the gateway stops
        except asyncio.CancelledError:
            lost.append(name)  # lost: the job ends as if its call had answered

    queue: WorkQueue[str] = WorkQueue(
        job, name="test", size=4, per_tenant=4, workers=1, drain_timeout=0.1
    )
    assert queue.submit("t", "slow")
    await asyncio.wait_for(running.wait(), 10)
    # Waited for without cancelling it: a timeout's cancel would reach the worker too.
    draining = asyncio.create_task(queue.drain())
    await asyncio.wait({draining}, timeout=10)
    assert draining.done(), "drain() still waits for its worker"
    assert lost == ["slow"]
    assert not queue.submit("t", "late")  # a drained queue takes no more jobs


async def test_drain_runs_the_queued_jobs_first() -> None:
    done: list[int] = []

    async def job(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    queue: WorkQueue[int] = WorkQueue(
        job, name="test", size=8, per_tenant=8, workers=2, drain_timeout=30
    )
    for n in range(5):
        assert queue.submit("t", n)
    await queue.drain()
    assert sorted(done) == [0, 1, 2, 3, 4]


async def test_a_tenant_flooding_the_queue_leaves_room_and_turns_to_the_others() -> None:
    """Tenant A fills its share of the queue while the one worker is held: its next job
    is refused, tenant B's is still taken, and B's runs before A's backlog (the tenants'
    jobs take turns). Before, A's flood filled the whole queue and B's job was dropped."""
    held = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    async def job(name: str) -> None:
        if name == "a0":
            held.set()
            await release.wait()
        ran.append(name)

    queue: WorkQueue[str] = WorkQueue(
        job, name="test", size=8, per_tenant=3, workers=1, drain_timeout=30
    )
    assert queue.submit("a", "a0")
    await asyncio.wait_for(held.wait(), 10)  # the worker holds a0: the rest waits
    accepted = [queue.submit("a", f"a{n}") for n in range(1, 6)]
    assert accepted == [True, True, True, False, False]  # A's share is 3 waiting jobs
    assert queue.submit("b", "b0")
    assert queue.waiting() == 4
    release.set()
    await queue.idle()
    assert ran == ["a0", "a1", "b0", "a2", "a3"]
    await queue.drain()


async def test_a_jobs_failure_is_logged_redacted_of_its_own_calls_keys_alone() -> None:
    """Each job's failure line hides the keys of the call that queued it, and no other's:
    the workers, started by the first call's job, once logged every job's failure in that
    call's context (its keys hidden from every later job's line, the later call's own key
    shown)."""

    async def job(message: str) -> None:
        raise RuntimeError(message)

    queue: WorkQueue[str] = WorkQueue(
        job, name="test", size=4, per_tenant=4, workers=1, drain_timeout=1
    )

    def from_call(key: str, message: str) -> None:
        hide_in_this_call(key)
        assert queue.submit("t", message)

    first, second = "first-callers-key-0123", "second-callers-key-4567"
    with formatted_lines() as logs:
        contextvars.copy_context().run(from_call, first, f"refused {first}")
        await queue.idle()
        contextvars.copy_context().run(from_call, second, f"refused {second}; {first}")
        await queue.idle()
        await queue.drain()
    failures = [json.loads(line) for line in logs.lines if "background job failed" in line]
    assert [line["exc_info"].splitlines()[-1] for line in failures] == [
        f"RuntimeError: refused {REDACTED}",
        f"RuntimeError: refused {REDACTED}; {first}",
    ]


async def test_a_job_requeued_by_a_running_job_runs_in_the_drain_within_the_bounds() -> None:
    """A running job queues the job held back behind it after the drain began: ``submit``
    refuses it (the gateway is stopping), ``requeue`` takes it, within the queue's size,
    and the drain runs it before it returns (the running job was not done yet)."""
    running = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []
    taken: list[bool] = []

    async def job(name: str) -> None:
        ran.append(name)
        if name == "running":
            running.set()
            await release.wait()
            taken.append(queue.submit("t", "submitted"))
            taken.append(queue.requeue("t", "held back"))
            taken.append(queue.requeue("t", "past the size"))

    queue: WorkQueue[str] = WorkQueue(
        job, name="test", size=1, per_tenant=1, workers=1, drain_timeout=30
    )
    assert queue.submit("t", "running")
    await asyncio.wait_for(running.wait(), 10)
    # Released once the drain below has begun (it closes the queue before it waits).
    asyncio.get_running_loop().call_soon(release.set)
    await queue.drain()
    assert taken == [False, True, False]
    assert ran == ["running", "held back"]
