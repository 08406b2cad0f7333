"""A slot a cancelled call frees is held (the provider's ``cancel_hold``) before a queued
call takes it, so that cancellations still on their way reach the queued calls first;
a call that ends any other way hands its slot on at once, and a held slot always comes
back (admission.py). The storm itself, through real gRPC, is
tests/gateway/test_cancel_storm_sends_nothing.py."""

from __future__ import annotations

import asyncio

from services.common.upstream_retry import Deadline
from services.generation.admission import ProviderLimiter
from tests.generation.conftest import unreached_provider


def _limiter(hold: float) -> ProviderLimiter:
    return ProviderLimiter(
        unreached_provider(max_concurrency=1, adaptive=False, cancel_hold=hold), "p", None
    )


async def test_a_call_that_ends_hands_its_slot_on_at_once_whatever_the_hold() -> None:
    limiter = _limiter(hold=60)
    first = await limiter.acquire(limiter.ticket(), 1, Deadline(60))
    queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
    await asyncio.sleep(0.05)
    assert not queued.done()  # the one slot is taken
    for outcome in ("ok", "failed", "overloaded"):
        await first.release(outcome=outcome)
        first = await asyncio.wait_for(queued, 30)  # not held for a minute
        queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
        await asyncio.sleep(0.05)
        assert not queued.done()
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    await first.release(outcome="ok")
    assert limiter.idle


async def test_a_cancelled_calls_slot_is_held_from_the_queue_then_comes_back() -> None:
    limiter = _limiter(hold=60)
    first = await limiter.acquire(limiter.ticket(), 1, Deadline(60))
    queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
    await asyncio.sleep(0.05)
    await first.release(outcome="cancelled")
    await asyncio.sleep(0.2)
    assert not queued.done()  # held: the queue does not move
    assert limiter.in_flight == 1
    queued.cancel()  # its own cancellation arrives within the hold: it leaves unsent

    short = _limiter(hold=0.05)
    first = await short.acquire(short.ticket(), 1, Deadline(60))
    queued = asyncio.ensure_future(short.acquire(short.ticket(), 1, Deadline(60)))
    await asyncio.sleep(0.05)
    await first.release(outcome="cancelled")
    second = await asyncio.wait_for(queued, 30)  # the hold ended: the slot is back
    await second.release(outcome="ok")
    assert short.idle and short.in_flight == 0


async def test_with_nobody_waiting_a_cancelled_calls_slot_is_free_at_once() -> None:
    limiter = _limiter(hold=60)
    first = await limiter.acquire(limiter.ticket(), 1, Deadline(60))
    await first.release(outcome="cancelled")
    assert limiter.idle  # a call arriving now is wanted: nothing to wait for
    again = await asyncio.wait_for(limiter.acquire(limiter.ticket(), 1, Deadline(60)), 30)
    await again.release(outcome="ok")
