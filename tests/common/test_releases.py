"""A slot's release (services/common/releases.py) runs in its caller's own task while
nothing cancels it, and apart from it (a shielded task ``settle`` awaits) once a cancel
reaches it. Before, every release was a task of its own with a shield: one more task for
every quota-admitted call, for the rare one cancelled.

Pure asyncio: the releases here are coroutines that wait where the test says. The Redis
ones, through a relay that holds their command, are in test_quota_releases.py."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.common.releases import Releases
from tests.support.tasks_made import tasks_made


class _Release:
    """A release that records the task each run of it ran in, and ends when let go."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.let_go = asyncio.Event()
        self.ran_in: list[asyncio.Task[object] | None] = []
        self.ended = 0

    async def __call__(self) -> None:
        self.ran_in.append(asyncio.current_task())
        self.started.set()
        await self.let_go.wait()
        self.ended += 1


async def test_a_release_nothing_cancels_runs_in_its_callers_task_and_makes_none() -> None:
    releases, release = Releases(), _Release()
    release.let_go.set()
    with tasks_made() as made:
        await releases.run(release)
    assert made == [], "a release nothing cancelled was given a task of its own"
    assert release.ran_in == [asyncio.current_task()]
    assert release.ended == 1


async def test_a_cancel_that_interrupts_a_release_runs_it_again_apart_and_settle_awaits_it() -> (
    None
):
    releases, release = Releases(), _Release()
    caller = asyncio.create_task(releases.run(release))
    await asyncio.wait_for(release.started.wait(), 20)
    release.started.clear()
    caller.cancel()  # the client gave up while the call was releasing its slot
    with pytest.raises(asyncio.CancelledError):
        await caller  # at once: the release is not awaited by a cancelled caller
    await asyncio.wait_for(release.started.wait(), 20)  # run again, apart
    assert len(release.ran_in) == 2 and release.ran_in[1] not in (caller, None)
    settling = asyncio.create_task(releases.settle(30))
    await asyncio.sleep(0)  # settle's first step runs: it waits on the release
    assert not settling.done(), "settle did not wait for the release run apart"
    release.let_go.set()
    await settling
    assert release.ended == 1  # the second run: the first was cut by the cancel


async def test_a_caller_being_cancelled_releases_apart_and_a_second_cancel_loses_nothing() -> None:
    """A call cancelled once (the shutdown's cut) releases its slot in a shielded task at
    once; gRPC's second cancel at the end of the grace period ends the call, not the
    release, which ``settle`` still awaits."""
    releases, release = Releases(), _Release()

    async def call() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await releases.run(release)

    caller = asyncio.create_task(call())
    await asyncio.sleep(0)
    caller.cancel()  # the shutdown's cut
    await asyncio.wait_for(release.started.wait(), 20)
    assert release.ran_in[0] is not caller
    caller.cancel()  # gRPC's cancel at the end of the grace period
    with pytest.raises(asyncio.CancelledError):
        await caller
    settling = asyncio.create_task(releases.settle(30))
    await asyncio.sleep(0)
    assert not settling.done(), "settle did not wait for the release on its way"
    release.let_go.set()
    await settling
    assert release.ended == 1 and len(release.ran_in) == 1


async def test_a_cancel_the_release_swallows_still_cancels_its_caller() -> None:
    """Python 3.11 loses a cancel landing as a wait_for inside a Redis command completes
    (services/common/tasks.py). Run in the caller's task, such a release ended normally and
    the caller's cancel was gone; the caller is cancelled all the same, as it was when it
    waited on a shielded task (a guard: it held then)."""
    releases = Releases()
    started = asyncio.Event()

    async def swallowing() -> None:
        started.set()
        # As wait_for did with its inner result done: the cancel is gone.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    caller = asyncio.create_task(releases.run(swallowing))
    await asyncio.wait_for(started.wait(), 20)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await releases.settle(0)


async def test_a_release_a_cancel_interrupts_is_sent_again_as_again_says() -> None:
    """A provider's release gives tokens back: sent twice (the first may have reached
    Redis before the cancel), it would give them back twice. ``again`` is what goes out
    the second time (the release without the refund)."""
    releases, first, second = Releases(), _Release(), _Release()
    caller = asyncio.create_task(releases.run(first, again=second))
    await asyncio.wait_for(first.started.wait(), 20)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(second.started.wait(), 20)
    second.let_go.set()
    await releases.settle(30)
    assert (len(first.ran_in), first.ended) == (1, 0)  # cut by the cancel, never again
    assert (len(second.ran_in), second.ended) == (1, 1)
