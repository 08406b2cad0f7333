"""A slot a cancelled call frees is held (the provider's ``cancel_hold``) before a queued
call takes it, so that cancellations still on their way reach the queued calls first;
a call that ends any other way hands its slot on at once, and a held slot always comes
back (admission.py): when the hold ends, when the queue empties, when the limiter
closes. It is held in the limits every replica shares too. The storm itself, through
real gRPC, is tests/gateway/test_cancel_storm_sends_nothing.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.common.openai_api import OpenAIClients
from services.common.redis_client import connect
from services.common.releases import Releases
from services.common.upstream_retry import Deadline, RetryPolicy
from services.devlaunch.redis_server import RedisProcess
from services.generation.admission import Permit, ProviderLimiter
from services.generation.providers import make_provider
from services.generation.providers.base import ChatMessage, CompletionRequest, StreamChunk
from services.generation.rate_buckets import DeclaredLimits, RedisLimits, scope_of
from services.generation.settings import ProviderConfig
from tests.generation.conftest import FAKE_KEY_ENV, fake_provider, unreached_provider
from tests.support.fake_openai import FakeOpenAI


def _limiter(hold: float) -> ProviderLimiter:
    return ProviderLimiter(
        unreached_provider(max_concurrency=1, adaptive=False, cancel_hold=hold), "p", None
    )


async def _one_running_one_queued(
    limiter: ProviderLimiter,
) -> tuple[Permit, asyncio.Future[Permit]]:
    """The one slot taken, and a call queued behind it (given the time to join the queue)."""
    running = await limiter.acquire(limiter.ticket(), 1, Deadline(60))
    queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
    await asyncio.sleep(0.05)
    return running, queued


async def test_a_call_that_ends_hands_its_slot_on_at_once_whatever_the_hold() -> None:
    limiter = _limiter(hold=10)
    first, queued = await _one_running_one_queued(limiter)
    assert not queued.done()  # the one slot is taken
    for outcome in ("ok", "failed", "overloaded"):
        await first.release(outcome=outcome)
        first = await asyncio.wait_for(queued, 5)  # not held for the 10 s
        queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
        await asyncio.sleep(0.05)
        assert not queued.done()
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    await first.release(outcome="ok")
    assert limiter.idle


async def test_a_cancelled_calls_slot_is_held_from_the_queue_then_comes_back() -> None:
    limiter = _limiter(hold=10)
    first, queued = await _one_running_one_queued(limiter)
    await first.release(outcome="cancelled")
    # The queued call's own cancellation arrives a moment later, within the hold: a loop
    # timer, so whatever the release woke runs first (a slot handed on at once is taken
    # before it), and due long before the 10 s hold's. It must find the call still
    # queued and take it out unsent.
    asyncio.get_running_loop().call_later(0.1, queued.cancel)
    (ended,) = await asyncio.gather(queued, return_exceptions=True)
    assert isinstance(ended, asyncio.CancelledError), f"the held slot went to it: {ended!r}"
    # Nobody waits any more: the hold ended with the queue.
    assert limiter.in_flight == 0 and limiter.idle

    short = _limiter(hold=0.05)
    first, queued = await _one_running_one_queued(short)
    await first.release(outcome="cancelled")
    second = await asyncio.wait_for(queued, 30)  # the hold ended: the slot is back
    await second.release(outcome="ok")
    assert short.idle and short.in_flight == 0


async def test_with_nobody_waiting_a_cancelled_calls_slot_is_free_at_once() -> None:
    limiter = _limiter(hold=10)
    first = await limiter.acquire(limiter.ticket(), 1, Deadline(60))
    await first.release(outcome="cancelled")
    assert limiter.idle  # a call arriving now is wanted: nothing to wait for
    again = await asyncio.wait_for(limiter.acquire(limiter.ticket(), 1, Deadline(60)), 30)
    await again.release(outcome="ok")


async def test_a_held_slot_comes_back_at_once_when_nobody_waits_any_more() -> None:
    """The queued call the hold waited for cancels itself: nobody waits, so a new call
    gets the slot at once, not after the hold (before, it waited the whole hold)."""
    limiter = _limiter(hold=10)
    first, queued = await _one_running_one_queued(limiter)
    await first.release(outcome="cancelled")
    assert limiter.in_flight == 1  # held: a call waits
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    assert limiter.in_flight == 0 and limiter.idle
    again = await asyncio.wait_for(limiter.acquire(limiter.ticket(), 1, Deadline(60)), 5)
    await again.release(outcome="ok")


async def test_the_adaptive_limit_is_told_of_the_calls_running_not_the_held_slots() -> None:
    """A call that answers beside held slots counts only the calls that ran: a held slot
    ran nothing. With 3 of 4 slots held, a 429 counts 1 call in flight (the limit drops
    to 1), not 4 (before: 2, half of the 4)."""
    config = unreached_provider(max_concurrency=4, adaptive=True, cancel_hold=10)
    limiter = ProviderLimiter(config, "p", None)
    permits = [await limiter.acquire(limiter.ticket(), 1, Deadline(60)) for _ in range(4)]
    queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
    await asyncio.sleep(0.05)
    for permit in permits[:3]:
        await permit.release(outcome="cancelled")
    assert limiter.in_flight == 4  # three held
    await permits[3].release(outcome="overloaded")
    assert limiter.limit.limit == 1
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    assert limiter.in_flight == 0


async def test_closing_ends_the_holds_at_once() -> None:
    # (Ending a hold cancels its timer: a closed limiter's timer never fires to publish
    # the gauges of a closed service. Not read here: the loop's timers are private.)
    limiter = _limiter(hold=10)
    first, queued = await _one_running_one_queued(limiter)
    await first.release(outcome="cancelled")
    assert limiter.in_flight == 1
    limiter.close()
    assert limiter.in_flight == 0  # back at once
    second = await asyncio.wait_for(queued, 30)
    # A call cancelled after the close (the stop's last calls) holds nothing either.
    queued = asyncio.ensure_future(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
    await asyncio.sleep(0.05)
    await second.release(outcome="cancelled")
    assert limiter.in_flight == 0
    third = await asyncio.wait_for(queued, 30)
    await third.release(outcome="ok")


@dataclass
class _Replicas:
    """``count`` replicas' queues of one provider sharing its declared limits in Redis,
    the releases the registry's close awaits, and what Redis counts in flight."""

    queues: list[ProviderLimiter]
    releases: Releases
    redis: Any
    flight_key: str

    async def in_flight(self) -> set[str]:
        """The ids of the calls the shared limits count in flight now."""
        members = await self.redis.zrange(self.flight_key, 0, -1)
        return {m.decode() if isinstance(m, bytes) else m for m in members}


@contextlib.asynccontextmanager
async def _replicas(
    redis_server: RedisProcess, config: ProviderConfig, count: int
) -> AsyncIterator[_Replicas]:
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    releases = Releases()
    scope = scope_of(config.name, None)
    limits = [
        RedisLimits(redis, DeclaredLimits.of(config), key_prefix="hold", releases=releases)
        for _ in range(count)
    ]
    try:
        yield _Replicas(
            [ProviderLimiter(config, scope, shared) for shared in limits],
            releases,
            redis,
            limits[0].keys(scope)[2],
        )
    finally:
        await releases.settle(10)
        await redis.aclose()


async def _queue_one_each(
    replicas: list[ProviderLimiter],
) -> tuple[list[Permit], list[asyncio.Task[Permit]]]:
    running = [await r.acquire(r.ticket(), 1, Deadline(60)) for r in replicas]
    queued = [asyncio.create_task(r.acquire(r.ticket(), 1, Deadline(60))) for r in replicas]
    await asyncio.sleep(0.2)
    assert not any(q.done() for q in queued)  # max_in_flight is taken
    return running, queued


async def test_a_held_slot_stays_taken_in_the_limits_every_replica_shares(
    redis_server: RedisProcess,
) -> None:
    """Two replicas, max_in_flight 2 shared in Redis, each replica's own cap the whole 2:
    a cancelled call's slot is held from both queues (before, it went back to Redis at
    once, and replica 1's own queued call took it within 0.5 s). When the hold ends, it
    comes back to one of them, and only then."""
    config = unreached_provider(max_concurrency=2, max_in_flight=2, adaptive=False, cancel_hold=1.5)
    async with _replicas(redis_server, config, 2) as shared:
        replicas = shared.queues
        running, queued = await _queue_one_each(replicas)
        loop = asyncio.get_running_loop()
        granted_at: list[float] = []
        for task in queued:
            task.add_done_callback(lambda _: granted_at.append(loop.time()))
        released_at = loop.time()
        await running[0].release(outcome="cancelled")
        # Held here and in the limits every replica shares (before, Redis had it back by
        # now).
        assert replicas[0].in_flight == 1
        assert running[0].call_id in await shared.in_flight()
        done, pending = await asyncio.wait(queued, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # the hold ended: the slot is back, for one call
        # Not before the hold's end: a lower bound the hold's own timer guarantees (a
        # loaded machine only makes the grant later; a slot handed on was taken within
        # a poll of the shared limits, 50 ms).
        assert granted_at[0] >= released_at + config.cancel_hold - 0.01, (
            "a held slot went to a queued call"
        )
        assert running[0].call_id not in await shared.in_flight()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await running[1].release(outcome="ok")
        await done.pop().result().release(outcome="ok")


async def test_a_replica_closing_gives_its_held_slots_back_to_every_replica(
    redis_server: RedisProcess,
) -> None:
    config = unreached_provider(max_concurrency=2, max_in_flight=2, adaptive=False, cancel_hold=10)
    async with _replicas(redis_server, config, 2) as shared:
        replicas = shared.queues
        running, queued = await _queue_one_each(replicas)
        await running[0].release(outcome="cancelled")
        replicas[0].close()  # its hold ends: the slot back here and in Redis
        assert replicas[0].in_flight == 0
        await shared.releases.settle(10)  # what the registry's close awaits
        # A queued call gets the slot now, not when the 10 s hold would have ended.
        done, pending = await asyncio.wait(queued, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await done.pop().result().release(outcome="ok")
        await running[1].release(outcome="ok")


def _admissions(provider: str) -> float:
    """The attempts the provider's limits admitted in this process (each observes its
    queue wait once)."""
    count = REGISTRY.get_sample_value(
        "gensearch_llm_queue_wait_seconds_count", {"provider": provider}
    )
    return count or 0.0


async def _read_one_chunk_then_block(
    stream: AsyncIterator[StreamChunk], got: asyncio.Event
) -> None:
    """A reader that takes the first chunk, then blocks handing it on (a slow client)."""
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for _ in stream:
            got.set()
            await asyncio.Event().wait()


async def test_a_stream_cut_while_its_reader_is_blocked_holds_its_slot(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader cancelled while it blocks after the first chunk closes the stream: the
    provider sees GeneratorExit at its ``yield``, not CancelledError, and released the
    slot as failed (handed on at once) rather than cancelled (held)."""
    monkeypatch.setenv(FAKE_KEY_ENV, "k")
    config = ProviderConfig(
        **fake_provider(fake, max_concurrency=1, adaptive=False, cancel_hold=10)
    )
    provider = make_provider(
        config, clients=OpenAIClients(), retry=RetryPolicy(), connect_timeout=5, read_timeout=5
    )
    request = CompletionRequest(model="fake-model", messages=[ChatMessage("user", "hi")])
    got = asyncio.Event()
    reader = asyncio.create_task(
        _read_one_chunk_then_block(provider.stream(request, Deadline(60)), got)
    )
    await asyncio.wait_for(got.wait(), 30)

    async def drain() -> None:
        async for _ in provider.stream(request, Deadline(60)):
            pass

    queued = asyncio.create_task(drain())
    await asyncio.sleep(0.1)
    limiter = provider.limiters.get(None)  # type: ignore[attr-defined]
    assert limiter.in_flight == 1 and not limiter.idle  # the second call waits
    admitted = _admissions(config.name)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    # Whatever the cut's release woke has run by now (a slot handed on is taken before the
    # reader's end reaches this test). The queued call's own cancellation arrives: it
    # must find the call still queued, never admitted.
    queued.cancel()
    (ended,) = await asyncio.gather(queued, return_exceptions=True)
    assert isinstance(ended, asyncio.CancelledError), ended
    assert _admissions(config.name) == admitted, "the cut stream's slot went to the queued call"
    assert len(fake.chat_requests) == 1
    assert limiter.in_flight == 0 and limiter.idle  # the hold ended with the queue
    await provider.close()
