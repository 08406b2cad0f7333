"""cancel_and_wait ends a task whose cancel was lost. On Python 3.11 ``asyncio.wait_for``
loses a cancel that lands as its inner awaitable completes (CPython gh-86296), and
redis-py sends every command through ``wait_for``: the loop below loses its cancel that
way, with nothing faked."""

from __future__ import annotations

import asyncio

import pytest

from services.common.tasks import cancel_and_wait


async def test_a_task_whose_cancel_is_lost_in_wait_for_is_ended() -> None:
    rounds = 0
    losing = asyncio.Event()

    async def reply() -> None:
        if rounds == 3:  # the cancel lands as the awaited reply completes
            worker.cancel()
            losing.set()

    async def loop_forever() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await asyncio.wait_for(reply(), 5)
            await asyncio.sleep(0.01)

    worker = asyncio.create_task(loop_forever())
    await asyncio.wait_for(losing.wait(), 10)
    async with asyncio.timeout(10):
        await cancel_and_wait(worker)
    assert worker.cancelled()


async def test_the_tasks_own_error_is_raised() -> None:
    async def fail_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fail_when_cancelled())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_a_task_already_done_is_left_as_it_is() -> None:
    async def answer() -> int:
        return 42

    task = asyncio.create_task(answer())
    await task
    await cancel_and_wait(task)
    assert task.result() == 42
