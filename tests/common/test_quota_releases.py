"""A concurrent-call slot's release outlives its call: cancelled again while the release
is on its way (gRPC cancels a call still running at the end of the grace period), the
call no longer takes the release down with it; and a release still on its way at
shutdown ends before the Redis client is closed (``Quotas.settle``). Before, either way
the slot stayed taken, for every replica, until its lease ended. A call nothing cancels
releases in its own task: a task per call's release, for the rare one cancelled, was CPU
spent on every call.

A relay in front of a real Redis holds the release where the test needs it: while its
connection is being made (the client's other connection busy), or on its way."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.common.auth import Identity, Role, set_current_identity
from services.common.quotas import Quotas
from services.common.redis_client import RedisClient, connect
from services.devlaunch.redis_server import RedisProcess
from tests.support.redis_relay import relaying
from tests.support.tasks_made import tasks_made
from tests.support.waiting import until


class _Context:
    """What ``admit`` reads of a call: its remaining time."""

    def time_remaining(self) -> float | None:
        return None


def _quotas(url: str, *, socket_timeout: bool = True) -> tuple[Quotas, RedisClient]:
    redis = (
        connect(url, cluster=False, socket_timeout=30, connect_timeout=30)
        if socket_timeout
        else Redis.from_url(url)  # redis-py's default: no socket timeout
    )
    quotas = Quotas(
        redis,
        key_prefix="test",
        concurrent_calls=1,
        llm_calls_per_minute=0,
        lease=60.0,
        lease_slack=0.0,
    )
    return quotas, redis


async def _slots_taken(direct: RedisClient) -> int:
    keys = await direct.keys("test:quota:*:calls")
    return sum([await direct.zcard(key) for key in keys])


async def _inside(quotas: Quotas, inside: asyncio.Event) -> None:
    set_current_identity(Identity("judy", "judy", Role.ADMIN))
    async with quotas.admit("/x/Y", _Context()):  # type: ignore[arg-type]
        inside.set()
        await asyncio.Event().wait()


async def _admitted(quotas: Quotas) -> asyncio.Task[None]:
    """A call that holds its slot until cancelled, returned once it holds it."""
    inside = asyncio.Event()
    call = asyncio.create_task(_inside(quotas, inside))
    await asyncio.wait_for(inside.wait(), 20)
    return call


async def test_a_call_nothing_cancels_frees_its_slot_in_its_own_task(
    redis_server: RedisProcess,
) -> None:
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    # No socket timeout: with one, redis-py sends each command through asyncio.wait_for,
    # a task of its own on Python 3.11, the client's and not the release's.
    quotas, redis = _quotas(redis_server.url, socket_timeout=False)
    try:
        set_current_identity(Identity("judy", "judy", Role.ADMIN))
        with tasks_made() as made:
            async with quotas.admit("/x/Y", _Context()):  # type: ignore[arg-type]
                assert await _slots_taken(direct) == 1
                # The count sees the call's tasks (its lease's renewal, made as it entered).
                assert "Quotas._renew_while_running" in made
                made.clear()
            released = list(made)
        assert released == [], "the release of a call nothing cancelled made a task"
        assert await _slots_taken(direct) == 0, "the slot was not freed as the call ended"
        await quotas.settle(0)  # nothing left on its way
    finally:
        await redis.aclose()
        await direct.aclose()


async def test_a_release_a_cancel_cuts_short_in_the_call_is_sent_again_apart(
    redis_server: RedisProcess,
) -> None:
    """A call that ended normally is cancelled while it releases its slot in its own task
    (the client gave up just then): the release is sent again in a task of its own, which
    ``settle`` awaits. The first ZREM never reaches Redis here (the relay keeps it): only
    the one sent again frees the slot."""
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    first_held, let_first = asyncio.Event(), asyncio.Event()
    again, let_again = asyncio.Event(), asyncio.Event()

    async def before(args: list[bytes]) -> None:
        if args[:1] != [b"ZREM"]:
            return
        if not first_held.is_set():
            first_held.set()
            await let_first.wait()  # not before the test has read Redis
        else:
            again.set()
            await let_again.wait()

    leave = asyncio.Event()

    async def call(quotas: Quotas) -> None:
        set_current_identity(Identity("judy", "judy", Role.ADMIN))
        async with quotas.admit("/x/Y", _Context()):  # type: ignore[arg-type]
            await leave.wait()

    try:
        async with relaying(redis_server.url, before) as url:
            quotas, redis = _quotas(url)
            try:
                running = asyncio.create_task(call(quotas))

                async def holds() -> bool:
                    return await _slots_taken(direct) == 1

                await until(holds, "took the call's slot")
                leave.set()  # the call ends: nothing cancels it, it releases in its task
                await asyncio.wait_for(first_held.wait(), 20)
                running.cancel()  # ... and is cancelled with its ZREM on its way
                with pytest.raises(asyncio.CancelledError):
                    await running
                await asyncio.wait_for(again.wait(), 20)
                settling = asyncio.create_task(quotas.settle(30))
                await asyncio.sleep(0)  # settle's first step runs: it waits on the release
                assert not settling.done(), "settle did not wait for the release sent again"
                let_again.set()
                await settling
                assert await _slots_taken(direct) == 0, "the release sent again did not free it"
            finally:
                let_first.set()
                let_again.set()
                await redis.aclose()
    finally:
        await direct.aclose()


async def test_a_call_cancelled_again_while_its_slot_is_released_still_frees_it(
    redis_server: RedisProcess,
) -> None:
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    holding, let_get = asyncio.Event(), asyncio.Event()
    connecting, let_connect = asyncio.Event(), asyncio.Event()
    hold_connects = False

    async def before(args: list[bytes]) -> None:
        if args[:2] == [b"GET", b"hold"]:
            holding.set()
            await let_get.wait()
        elif hold_connects and args[:2] == [b"CLIENT", b"SETINFO"] and not connecting.is_set():
            connecting.set()  # a new connection: the release's, its first command held
            await let_connect.wait()

    try:
        async with relaying(redis_server.url, before) as url:
            quotas, redis = _quotas(url)
            try:
                call = await _admitted(quotas)
                assert await _slots_taken(direct) == 1
                # The client's one connection busy: the release has to make another.
                holder = asyncio.create_task(redis.get("hold"))
                await asyncio.wait_for(holding.wait(), 20)
                hold_connects = True
                call.cancel()  # the shutdown's cut: the call ends, its slot is released
                await asyncio.wait_for(connecting.wait(), 20)
                call.cancel()  # gRPC's cancel at the end of the grace period
                with pytest.raises(asyncio.CancelledError):
                    await call
                let_connect.set()
                let_get.set()
                await holder

                async def free() -> bool:
                    return await _slots_taken(direct) == 0

                await until(free, "freed the cancelled call's slot")
            finally:
                await redis.aclose()
    finally:
        await direct.aclose()


async def test_a_release_on_its_way_at_shutdown_ends_before_the_client_closes(
    redis_server: RedisProcess,
) -> None:
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    releasing, let_release = asyncio.Event(), asyncio.Event()

    async def before(args: list[bytes]) -> None:
        if args[:1] == [b"ZREM"]:
            releasing.set()
            # Held until the stop has begun settling. A fixed delay (0.5 s) assumed the
            # stop came sooner: on a loaded machine the release could end first, and the
            # test then passed without a release on its way at the stop.
            await let_release.wait()

    try:
        async with relaying(redis_server.url, before) as url:
            quotas, redis = _quotas(url)
            call = await _admitted(quotas)
            call.cancel()  # the shutdown's cut
            await asyncio.wait_for(releasing.wait(), 20)
            call.cancel()  # gRPC's cancel at the end of the grace period
            with pytest.raises(asyncio.CancelledError):
                await call
            # The gateway's stop: settle (bounded by settle_wait), then close.
            settling = asyncio.create_task(quotas.settle(30))
            await asyncio.sleep(0)  # settle's first step runs: it waits on the release
            assert not settling.done(), "settle did not wait for the release on its way"
            let_release.set()
            await settling
            await redis.aclose()
            assert await _slots_taken(direct) == 0, "the slot stayed taken past the close"
    finally:
        await direct.aclose()


def _releases_running() -> list[asyncio.Task[object]]:
    """The quota releases still running on this loop (their coroutine ``Quotas._release``)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "Quotas._release"
    ]


async def test_a_release_still_pending_when_settle_gives_up_is_ended_not_left_running(
    redis_server: RedisProcess,
) -> None:
    """Redis stops answering at close: ``settle`` gives up after its bound, and the release
    it gave up on is ended then (cancelled), not left running against the client closed
    right after, a task nobody awaits past the service's close (before, it was)."""
    answer = asyncio.Event()  # never set while the test looks: this Redis does not answer
    releasing = asyncio.Event()

    async def before(args: list[bytes]) -> None:
        if args[:1] == [b"ZREM"]:
            releasing.set()
            await answer.wait()

    async with relaying(redis_server.url, before) as url:
        quotas, redis = _quotas(url)
        try:
            call = await _admitted(quotas)
            call.cancel()  # the shutdown's cut: the release goes to a Redis that hangs
            await asyncio.wait_for(releasing.wait(), 20)
            call.cancel()  # gRPC's cancel at the end of the grace period
            with pytest.raises(asyncio.CancelledError):
                await call
            assert len(_releases_running()) == 1
            await quotas.settle(0.1)  # a settle_wait that ends with the release on its way
            assert _releases_running() == [], "the release was left running past settle"
        finally:
            answer.set()
            await redis.aclose()
