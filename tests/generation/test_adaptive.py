"""Units of the provider limits: the AIMD controller on a fake clock, the bucket shapes,
the in-process buckets, and the queue's faults and order."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from prometheus_client import REGISTRY

from services.common.auth import Identity, Role, set_current_identity
from services.common.redis_client import connect
from services.common.upstream_retry import Deadline
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from services.generation.adaptive import AdaptiveLimit
from services.generation.admission import ProviderLimiter
from services.generation.rate_buckets import (
    FLIGHT_FULL,
    Bucket,
    DeclaredLimits,
    LocalLimits,
    RedisLimits,
    scope_of,
)
from services.generation.settings import GenerationSettings
from services.generation.upstream import UpstreamFault, to_service_error
from tests.generation.conftest import unreached_provider


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_no_ceiling_means_no_limit_until_the_provider_pushes_back() -> None:
    limiter = ProviderLimiter(unreached_provider(), "p", None)
    assert limiter.limit.limit == math.inf
    # Every call is admitted at once: with any limit the last ones would wait and time out.
    permits = [await limiter.acquire(limiter.ticket(), 1, Deadline(0.1)) for _ in range(1000)]
    await permits.pop().release(outcome="overloaded")
    assert limiter.limit.limit == 500  # halved from what was running, not from infinity
    with pytest.raises(UpstreamFault) as caught:
        await limiter.acquire(limiter.ticket(), 1, Deadline(0.1))  # 999 run, 500 may
    assert to_service_error(caught.value, "p", "m").reason == "PROVIDER_QUEUE_TIMEOUT"
    for permit in permits:
        await permit.release(outcome="failed")


def test_429s_halve_once_per_cooldown_and_successes_grow_it_back() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, clock=clock)
    assert limit.limit == 32
    limit.overloaded(in_flight=32)
    limit.overloaded(in_flight=32)  # the same wave of 429s: one decrease
    assert limit.limit == 16
    clock.now += 1
    limit.overloaded(in_flight=16)
    assert limit.limit == 8
    for _ in range(5):
        limit.succeeded(0.2, in_flight=8)
    assert limit.limit == 13
    for _ in range(100):
        limit.succeeded(0.2, in_flight=8)
    assert limit.limit == 32  # never past the ceiling
    for _ in range(10):
        clock.now += 1
        limit.overloaded(in_flight=1)
    assert limit.limit == 1  # never below one


def test_rising_latency_shrinks_the_limit() -> None:
    clock = Clock()
    limit = AdaptiveLimit(100, latency_factor=3.0, clock=clock)
    for _ in range(10):
        limit.succeeded(0.1, in_flight=50)
    assert limit.limit == 100
    for _ in range(10):
        clock.now += 1
        limit.succeeded(1.0, in_flight=50)
    assert limit.limit < 50
    ignoring = AdaptiveLimit(100, latency_factor=None, clock=clock)
    for latency in (0.1, 1.0, 5.0, 10.0):
        clock.now += 1
        ignoring.succeeded(latency, in_flight=50)
    assert ignoring.limit == 100


def test_the_local_models_batching_slowdown_keeps_every_slot() -> None:
    """llama-server decodes its slots' sequences together, so ten at once each take
    several times one alone: with latency as a signal, the next fan-out got fewer slots
    (measured: a 10-hit fan-out from 5.3-6.0 s to up to 8.5 s)."""
    local = GenerationSettings().provider_configs()["local"]
    assert local.adaptive  # 429s and timeouts still count
    clock = Clock()
    limit = AdaptiveLimit(local.max_concurrency, latency_factor=local.latency_factor, clock=clock)
    for _ in range(10):  # ten sequential calls, one in flight
        clock.now += 1
        limit.succeeded(1.0, in_flight=1)
    for in_flight in range(10, 0, -1):  # then a fan-out of ten, each ~6 s
        clock.now += 0.1
        limit.succeeded(6.0, in_flight=in_flight)
    assert limit.limit == local.max_concurrency


async def test_the_local_preset_queue_keeps_every_slot_after_a_batched_fan_out() -> None:
    """The same through the local preset's own queue, on real time: ten sequential calls
    of 10 ms, then two fan-outs of ten whose answers each take six times as long (batched
    decoding). Both fan-outs run all ten at once, and the published limit stays at the
    preset's ceiling."""
    local = GenerationSettings().provider_configs()["local"]
    limiter = ProviderLimiter(local, scope_of(local.name, None), None)

    async def call(seconds: float) -> int:
        permit = await limiter.acquire(limiter.ticket(), 1, Deadline(10))
        running = limiter.in_flight
        await asyncio.sleep(seconds)
        await permit.release(outcome="ok")
        return running

    for _ in range(10):
        await call(0.01)
    for _ in range(2):
        running = await asyncio.gather(*(call(0.06) for _ in range(10)))
        assert max(running) == 10
    assert limiter.limit.limit == local.concurrency_cap
    gauge = REGISTRY.get_sample_value("gensearch_llm_concurrency_limit", {"provider": "local"})
    assert gauge == local.concurrency_cap


def test_a_provider_that_stays_slower_gets_its_limit_back() -> None:
    """Latency that rose for good (longer answers, a bigger model) is absorbed: the limit
    shrinks while the rise outruns the recent average, then grows back to the ceiling."""
    clock = Clock()
    limit = AdaptiveLimit(40, latency_factor=3.0, recovery=None, clock=clock)
    for _ in range(20):
        limit.succeeded(0.05, in_flight=40)
    lowest = limit.limit
    for _ in range(200):
        clock.now += 0.1
        limit.succeeded(2.0, in_flight=40)
        lowest = min(lowest, limit.limit)
    assert lowest < 40  # the rise was read as overload while it was one
    assert limit.limit == 40  # and the new latency, once usual, is no signal


def test_a_rise_with_one_call_in_flight_is_no_signal() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, latency_factor=3.0, clock=clock)
    for _ in range(20):
        limit.succeeded(0.05, in_flight=1)
    for _ in range(10):
        clock.now += 5
        limit.succeeded(5.0, in_flight=1)
    assert limit.limit == 4


def test_a_limit_left_alone_doubles_each_recovery_period() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, recovery=10.0, clock=clock)
    limit.overloaded(in_flight=2)
    assert limit.limit == 1
    clock.now += 9.9
    assert limit.limit == 1
    clock.now += 0.1
    assert limit.limit == 2
    clock.now += 25  # two more periods
    assert limit.limit == 8
    clock.now += 1000
    assert limit.limit == 32  # never past the ceiling
    limit.overloaded(in_flight=32)
    assert limit.limit == 16  # the recovery clock starts again at a decrease
    clock.now += 9
    assert limit.limit == 16
    unbounded = AdaptiveLimit(None, recovery=10.0, clock=clock)
    unbounded.overloaded(in_flight=10)
    clock.now += 30
    assert unbounded.limit == 40
    never = AdaptiveLimit(32, recovery=None, clock=clock)
    never.overloaded(in_flight=2)
    clock.now += 1000
    assert never.limit == 1


async def test_a_queued_call_is_admitted_when_the_limit_recovers_by_itself() -> None:
    """The limit fell to 1 and one long call holds it: the next call starts once the
    recovery period has passed, not when the long call ends."""
    limiter = ProviderLimiter(unreached_provider(adaptive_recovery=0.3), "p", None)
    first = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
    second = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
    await second.release(outcome="overloaded")  # halved from the 2 in flight: 1
    assert limiter.limit.limit == 1
    started = asyncio.get_running_loop().time()
    third = await asyncio.wait_for(limiter.acquire(limiter.ticket(), 1, Deadline(5)), 2)
    assert 0.2 <= asyncio.get_running_loop().time() - started < 2
    assert limiter.in_flight == 2  # the long call still runs
    await third.release(outcome="ok")
    await first.release(outcome="ok")


async def test_slower_answers_after_fast_ones_keep_every_slot() -> None:
    """External check of issue 13 (finding A): a provider declaring 4 in flight answered
    fast, then took seconds per answer; the limit fell to 1 and never grew back, so 12
    hits ran one at a time. Every round of 4 must run at once."""
    limiter = ProviderLimiter(unreached_provider(max_in_flight=4), "p", None)
    for _ in range(20):
        permit = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
        await permit.release(outcome="ok")
    most = 0

    async def call() -> None:
        nonlocal most
        permit = await limiter.acquire(limiter.ticket(), 1, Deadline(30))
        most = max(most, limiter.in_flight)
        await asyncio.sleep(0.3)
        await permit.release(outcome="ok")

    for _ in range(3):
        most = 0
        await asyncio.gather(*(call() for _ in range(4)))
        assert most == 4
    assert limiter.limit.limit == 4


@pytest.mark.parametrize(
    ("per_minute", "window", "burst", "capacity", "per_second"),
    [(600, 10, 0.1, 10, 9.0), (60, 60, 0.1, 6, 0.9), (300, 1, 0.2, 1, 4.0), (60, 1, 0.1, 1, 1.0)],
)
def test_a_bucket_never_admits_more_than_the_limit_in_a_window(
    per_minute: float, window: float, burst: float, capacity: float, per_second: float
) -> None:
    bucket = Bucket.of(per_minute, window, burst)
    assert bucket == Bucket(capacity, pytest.approx(per_second))
    allowance = per_minute * window / 60
    assert bucket.capacity + bucket.per_second * window <= max(allowance, 2)


async def test_token_estimates_are_corrected_with_the_real_usage() -> None:
    limits = LocalLimits(
        DeclaredLimits.of(unreached_provider(tokens_per_minute=6000, rate_burst=0.5))
    )
    # 3000 at once, 50 a second after that.
    assert (await limits.admit("s", "a", 3000, 10)).wait == 0
    assert (await limits.admit("s", "b", 1000, 10)).wait > 0
    await limits.release("s", "a", refund=2000)  # it used 1000 of the 3000 estimated
    assert (await limits.admit("s", "b", 1000, 10)).wait == 0


async def test_a_call_dearer_than_the_bucket_is_corrected_to_what_it_used() -> None:
    # 3000 at once, 50 a second; a provider counting what calls use.
    config = unreached_provider(tokens_per_minute=6000, rate_burst=0.5, tokens_counted="used")
    limits = LocalLimits(DeclaredLimits.of(config))
    limiter = ProviderLimiter(config, "p", limits)
    # Estimated at 5000, charged the whole bucket (3000), and it used 4000: the bucket owes
    # 1000, which takes 20 s to refill. Corrected from the estimate it got 1000 back.
    permit = await limiter.acquire(limiter.ticket(), 5000, Deadline(5))
    await permit.release(outcome="ok", tokens=4000)
    admission = await limits.admit("p", "next", 1, 10)
    assert admission.wait == pytest.approx(1001 / 50, abs=0.5)


@pytest.mark.parametrize("counted", ["reserved", "used"])
async def test_what_a_call_did_not_use_comes_back_only_when_counted_as_used(
    counted: str,
) -> None:
    config = unreached_provider(tokens_per_minute=6000, rate_burst=0.5, tokens_counted=counted)
    limits = LocalLimits(DeclaredLimits.of(config))
    limiter = ProviderLimiter(config, "p", limits)
    # Estimated at 3000 (the whole bucket), used 1000: counted as used, 2000 come back and
    # the next call of 1000 starts at once; counted as reserved (as the provider keeps
    # them), it waits for 1000 to refill (20 s).
    permit = await limiter.acquire(limiter.ticket(), 3000, Deadline(5))
    await permit.release(outcome="ok", tokens=1000)
    admission = await limits.admit("p", "next", 1000, 10)
    if counted == "used":
        assert admission.wait == 0
    else:
        assert admission.wait == pytest.approx(1000 / 50, abs=0.5)


@pytest.mark.parametrize("outcome", ["failed", "overloaded"])
async def test_counted_as_reserved_a_failed_call_keeps_its_charge(outcome: str) -> None:
    config = unreached_provider(tokens_per_minute=6000, rate_burst=0.5)  # reserved: the default
    limits = LocalLimits(DeclaredLimits.of(config))
    limiter = ProviderLimiter(config, "p", limits)
    permit = await limiter.acquire(limiter.ticket(), 3000, Deadline(5))
    # As _Turns.failed releases a 429 (0 tokens) and another failure (its prompt).
    await permit.release(outcome=outcome, tokens=0 if outcome == "overloaded" else 100)
    assert (await limits.admit("p", "next", 1000, 10)).wait == pytest.approx(20, abs=0.5)


async def test_counted_as_reserved_a_call_dearer_than_the_bucket_is_charged_all_it_costs() -> None:
    config = unreached_provider(tokens_per_minute=6000, rate_burst=0.5)  # 3000 at once, 50 a second
    limits = LocalLimits(DeclaredLimits.of(config))
    limiter = ProviderLimiter(config, "p", limits)
    # Estimated at 5000: it starts on a full bucket and owes 2000 at once, before it ends
    # (the provider counted all 5000 when it arrived); using less gives nothing back, and
    # using more than charged is charged on top.
    permit = await limiter.acquire(limiter.ticket(), 5000, Deadline(5))
    assert (await limits.admit("p", "during", 1, 10)).wait == pytest.approx(2001 / 50, abs=0.5)
    await permit.release(outcome="ok", tokens=1000)
    assert (await limits.admit("p", "next", 1, 10)).wait == pytest.approx(2001 / 50, abs=0.5)
    limits = LocalLimits(DeclaredLimits.of(config))
    limiter = ProviderLimiter(config, "p", limits)
    permit = await limiter.acquire(limiter.ticket(), 1000, Deadline(5))
    await permit.release(outcome="ok", tokens=1500)  # 500 more than charged: 1500 left
    assert (await limits.admit("p", "last", 2000, 10)).wait == pytest.approx(500 / 50, abs=0.5)


async def test_the_in_flight_limit_holds_until_a_call_ends() -> None:
    limits = LocalLimits(DeclaredLimits.of(unreached_provider(max_in_flight=1)))
    assert (await limits.admit("s", "a", 1, 10)).wait == 0
    assert (await limits.admit("s", "b", 1, 10)).wait == FLIGHT_FULL
    await limits.release("s", "a", refund=0)
    assert (await limits.admit("s", "b", 1, 10)).wait == 0


async def test_a_deadline_passing_in_the_queue_is_deadline_exceeded() -> None:
    config = unreached_provider(max_in_flight=1)
    limiter = ProviderLimiter(config, "p", LocalLimits(DeclaredLimits.of(config)))
    first = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
    with pytest.raises(UpstreamFault) as caught:
        await limiter.acquire(limiter.ticket(), 1, Deadline(0.1))
    error = to_service_error(caught.value, "p", "m")
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.reason == "PROVIDER_QUEUE_TIMEOUT"
    await first.release(outcome="ok")
    second = await limiter.acquire(limiter.ticket(), 1, Deadline(1))  # the queue moved on
    await second.release(outcome="ok")


async def test_a_pause_longer_than_the_deadline_fails_at_once() -> None:
    limiter = ProviderLimiter(unreached_provider(), "p", None)
    await limiter.pause(30)
    with pytest.raises(UpstreamFault) as caught:
        await asyncio.wait_for(limiter.acquire(limiter.ticket(), 1, Deadline(5)), 1)
    error = to_service_error(caught.value, "p", "m")
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "PROVIDER_LIMIT_WAIT"


async def test_waiters_are_admitted_by_first_arrival() -> None:
    limiter = ProviderLimiter(unreached_provider(max_concurrency=1), "p", None)
    held = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
    early, late = limiter.ticket(), limiter.ticket()
    order: list[str] = []

    async def take(name: str, ticket: object) -> None:
        permit = await limiter.acquire(ticket, 1, Deadline(5))  # type: ignore[arg-type]
        order.append(name)
        await permit.release(outcome="ok")

    # The later ticket queues first; the earlier one (a retried call) still goes first.
    tasks = [asyncio.create_task(take("late", late))]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(take("early", early)))
    await asyncio.sleep(0.01)
    await held.release(outcome="ok")
    await asyncio.gather(*tasks)
    assert order == ["early", "late"]


async def test_tenants_take_turns_and_each_keeps_its_own_order() -> None:
    limiter = ProviderLimiter(unreached_provider(max_concurrency=1), "p", None)
    held = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
    order: list[str] = []

    async def take(tenant: str, name: str) -> None:
        # The identity the chassis sets for an RPC; a task has its own copy of it.
        set_current_identity(Identity("u", tenant, Role.READER))
        permit = await limiter.acquire(limiter.ticket(), 1, Deadline(5))
        order.append(name)
        await permit.release(outcome="ok")

    tasks = []
    for tenant, name in [("acme", "a1"), ("acme", "a2"), ("acme", "a3"), ("beta", "b1")]:
        tasks.append(asyncio.create_task(take(tenant, name)))
        await asyncio.sleep(0.01)
    await held.release(outcome="ok")
    tasks.append(asyncio.create_task(take("beta", "b2")))
    await asyncio.gather(*tasks)
    # First come first served would be a1 a2 a3 b1 b2.
    assert order == ["a1", "b1", "a2", "b2", "a3"]


async def test_tokens_are_corrected_in_redis_too(redis_server: RedisProcess) -> None:
    declared = DeclaredLimits.of(unreached_provider(tokens_per_minute=6000, rate_burst=0.5))
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    try:
        limits = RedisLimits(redis, declared, key_prefix="t")
        assert (await limits.admit("p:p", "a", 3000, 10)).wait == 0
        assert (await limits.admit("p:p", "b", 1000, 10)).wait > 0
        await limits.release("p:p", "a", refund=2000)
        assert (await limits.admit("p:p", "b", 1000, 10)).wait == 0
        assert await redis.exists("t:limits:{p:p}:tokens")
    finally:
        await redis.aclose()


async def test_a_debt_in_redis_outlives_the_buckets_usual_ttl(redis_server: RedisProcess) -> None:
    declared = DeclaredLimits.of(unreached_provider(tokens_per_minute=6000, rate_burst=0.5))
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    try:
        limits = RedisLimits(redis, declared, key_prefix="debt")
        # 6000 on a bucket of 3000 refilled 50 a second: 3000 owed, full again in 120 s.
        assert (await limits.admit("p:p", "a", 6000, 10)).wait == 0
        assert (await limits.admit("p:p", "b", 1, 10)).wait == pytest.approx(60, abs=1)
        # The key lives until the bucket is full again (the idle ttl is ~61 s): gone with
        # the debt, it would be a full bucket.
        assert declared.ttl < 62
        assert await redis.pttl("debt:limits:{p:p}:tokens") > 119_000
        await limits.release("p:p", "a", refund=-1000)  # a debt taken at release, too
        assert await redis.pttl("debt:limits:{p:p}:tokens") > 139_000
    finally:
        await redis.aclose()


async def test_a_redis_that_fails_does_not_fail_calls() -> None:
    declared = DeclaredLimits.of(unreached_provider(requests_per_minute=60, max_in_flight=1))
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    redis = connect(url, cluster=False, socket_timeout=0.2, connect_timeout=0.2)
    try:
        limits = RedisLimits(redis, declared, key_prefix="t")
        # Counted in memory instead: the limits still hold, in this process.
        assert (await limits.admit("p:p", "a", 1, 10)).wait == 0
        assert (await limits.admit("p:p", "b", 1, 10)).wait == FLIGHT_FULL
        await limits.release("p:p", "a", refund=0)
        assert (await limits.admit("p:p", "b", 1, 10)).wait == 0
    finally:
        await redis.aclose()


async def test_the_provider_gauges_add_up_every_api_keys_limiter() -> None:
    config = unreached_provider("gauged", max_concurrency=4)

    def sample(metric: str) -> float | None:
        return REGISTRY.get_sample_value(metric, {"provider": "gauged"})

    operator = ProviderLimiter(config, scope_of("gauged", None), None)
    mine = await operator.acquire(operator.ticket(), 1, Deadline(5))
    # A caller's own key gets a limiter of its own: it must not reset the count.
    callers = ProviderLimiter(config, scope_of("gauged", "a caller's key"), None)
    theirs = await callers.acquire(callers.ticket(), 1, Deadline(5))
    assert sample("gensearch_llm_in_flight") == 2
    assert sample("gensearch_llm_concurrency_limit") == 4
    await theirs.release(outcome="ok")
    assert sample("gensearch_llm_in_flight") == 1
    await mine.release(outcome="ok")
    assert sample("gensearch_llm_in_flight") == 0
