"""A provider's declared limits against a loopback provider that enforces them: bursts
larger than the limit all succeed, replicas sharing one Redis (standalone or Cluster) keep
to the limit together, a 429's Retry-After holds every call back and retried calls keep
their place, and a deadline too short to wait fails that call with a clear status."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.devlaunch.redis_server import RedisProcess
from tests.generation.conftest import Service, StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.redis_cluster import LocalCluster
from tests.support.rpc import error_info

# The fake takes LIMIT requests per WINDOW seconds; the provider declares the same.
LIMIT = 5
WINDOW = 1.0
DECLARED = {
    "requests_per_minute": LIMIT * 60 / WINDOW,
    "rate_window": WINDOW,
    "rate_burst": 0.2,  # 1 at once, 4 more spread over each second
}


def ask(text: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[user(text)])


def wait_seconds(reply: pb.GenerateResponse) -> float:
    return reply.wait_time.ToNanoseconds() / 1e9


async def burst(stubs: list[Any], count: int, timeout: float = 30) -> list[pb.GenerateResponse]:
    return list(
        await asyncio.gather(
            *(
                stubs[i % len(stubs)].Generate(ask(f"hit {i}"), timeout=timeout)
                for i in range(count)
            )
        )
    )


@pytest.fixture
async def limited() -> Any:
    async with FakeOpenAI(rate_limit=LIMIT, rate_window=WINDOW) as server:
        yield server


async def test_a_burst_larger_than_the_limit_all_succeeds_within_it(
    limited: FakeOpenAI, start_service: StartService
) -> None:
    service = await start_service([fake_provider(limited, max_concurrency=None, **DECLARED)])
    replies = await burst([service.stub], 3 * LIMIT)
    assert [r.text for r in replies] == [f"hit {i}" for i in range(3 * LIMIT)]
    assert limited.rate_limited == 0
    assert limited.max_per_window <= LIMIT
    assert all(r.attempts == 1 for r in replies)
    # Most waited their turn in the queue, and say so.
    assert sum(wait_seconds(r) > 0 for r in replies) >= 2 * LIMIT


async def test_without_declared_limits_the_same_burst_is_refused_then_retried(
    limited: FakeOpenAI, start_service: StartService
) -> None:
    """The control for the test above: the fake does refuse what is over its limit, and a
    429 does not fail a call that may still wait."""
    service = await start_service([fake_provider(limited, max_concurrency=None)])
    replies = await burst([service.stub], 3 * LIMIT)
    assert [r.text for r in replies] == [f"hit {i}" for i in range(3 * LIMIT)]
    assert limited.rate_limited > 0
    retried = [r for r in replies if r.attempts > 1]
    assert retried and all(wait_seconds(r) > 0 for r in retried)


async def _two_replicas(
    start_service: StartService, fake: FakeOpenAI, redis_url: str, *, cluster: bool = False
) -> list[Service]:
    provider = fake_provider(fake, max_concurrency=None, **DECLARED)
    return [
        await start_service([provider], redis_url=redis_url, redis_cluster=cluster)
        for _ in range(2)
    ]


async def test_two_replicas_sharing_one_redis_never_exceed_the_limit_together(
    limited: FakeOpenAI, start_service: StartService, redis_server: RedisProcess
) -> None:
    services = await _two_replicas(start_service, limited, redis_server.url)
    replies = await burst([s.stub for s in services], 3 * LIMIT)
    assert len(replies) == 3 * LIMIT
    assert limited.rate_limited == 0
    assert limited.max_per_window <= LIMIT


async def test_two_replicas_without_redis_each_keep_only_their_own_count(
    limited: FakeOpenAI, start_service: StartService
) -> None:
    """The control: the same burst over two replicas counting alone goes over the limit."""
    provider = fake_provider(limited, max_concurrency=None, **DECLARED)
    services = [await start_service([provider]) for _ in range(2)]
    replies = await burst([s.stub for s in services], 3 * LIMIT)
    assert len(replies) == 3 * LIMIT
    assert limited.max_per_window > LIMIT


@pytest.mark.slow
async def test_the_shared_limits_work_on_a_redis_cluster(
    limited: FakeOpenAI, start_service: StartService, tmp_path: Path
) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        services = await _two_replicas(start_service, limited, cluster.url, cluster=True)
        replies = await burst([s.stub for s in services], 3 * LIMIT)
        assert len(replies) == 3 * LIMIT
        assert limited.rate_limited == 0
        assert limited.max_per_window <= LIMIT
        # The provider's three keys share one slot (one hash tag), on one node.
        keys: list[bytes] = []
        for node in cluster.nodes:
            async with node.client() as client:
                keys += await client.keys("gensearch:limits:*")
        assert keys and {k.split(b"}")[0] for k in keys} == {b"gensearch:limits:{p:fake"}
    finally:
        cluster.stop()


async def test_retry_after_holds_every_call_back(start_service: StartService) -> None:
    async with FakeOpenAI(rate_limit=3, rate_window=1.0, latency=0.05) as fake:
        service = await start_service([fake_provider(fake, max_concurrency=None)])

        async def hit(name: str) -> pb.GenerateResponse:
            reply: pb.GenerateResponse = await service.stub.Generate(ask(name), timeout=30)
            return reply

        # Start right after a window begins, so that the first calls share one window.
        await asyncio.sleep(1.0 - time.monotonic() % 1.0 + 0.01)
        first = [asyncio.create_task(hit(f"first {i}")) for i in range(6)]
        async with asyncio.timeout(10):
            await fake.refused.wait()
        # Calls that arrive during the pause wait for it too.
        later = [asyncio.create_task(hit(f"later {i}")) for i in range(3)]
        replies = await asyncio.gather(*first, *later)
    assert [r.text for r in replies] == [f"first {i}" for i in range(6)] + [
        f"later {i}" for i in range(3)
    ]
    retried = [r for r in replies if r.attempts > 1]
    assert retried and all(wait_seconds(r) > 0 for r in retried)
    assert all(wait_seconds(r) > 0 for r in replies[6:])
    # Honoured: each call was refused at most once in all (retries with the test's 10-50 ms
    # backoff instead would be refused a dozen times each while the window lasts).
    assert sum(r.attempts - 1 for r in replies) == fake.rate_limited <= len(replies)


async def test_a_deadline_too_short_for_the_rate_limit_is_resource_exhausted(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    # 12 per minute: 6 at once, then one every 10 s. (At 60 per minute, one every ~1.1 s,
    # a burst that took a loaded machine over half a second refilled enough of the bucket
    # for the next call to wait out its 0.5 s deadline and be sent.)
    provider = fake_provider(fake, requests_per_minute=12, rate_burst=0.5)
    service = await start_service([provider])
    await burst([service.stub], 6)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask("one too many"), timeout=2)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "PROVIDER_LIMIT_WAIT"
    assert info.metadata["provider"] == "fake"
    assert info.metadata["attempts"] == "0"
    assert "deadline" in caught.value.details()
    assert len(fake.chat_requests) == 6  # never sent


async def test_a_deadline_passing_in_the_queue_is_deadline_exceeded(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    service = await start_service([fake_provider(fake, max_concurrency=None, max_in_flight=1)])
    fake.enqueue(Behaviour.hang(3))

    async def slow_call() -> None:
        await service.stub.Generate(ask("slow"), timeout=10)

    slow = asyncio.create_task(slow_call())
    await fake.wait_for_requests(1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask("queued"), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    slow.cancel()
    assert len(fake.chat_requests) == 1  # the queued call was never sent


async def test_a_call_that_waited_in_the_queue_then_fails_says_how_long_it_waited(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """Only the head of the queue asks the buckets, so a call behind another learns that
    its wait would pass its deadline only when its turn comes: by then it has waited. Its
    ErrorInfo ``wait_ms`` (the gateway's per-hit ``wait_time``) said 0: the time queued
    was counted for a call that got through, never for one that failed."""
    # 6 a window of 6 s, one at once: a token every 1.2 s.
    provider = fake_provider(fake, requests_per_minute=60, rate_window=6, rate_burst=0.1)
    service = await start_service([provider])
    await service.stub.Generate(ask("takes the token"), timeout=10)

    async def first_in_line() -> pb.GenerateResponse:
        return await service.stub.Generate(ask("waits 1.2 s"), timeout=5)

    head = asyncio.create_task(first_in_line())
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask("queued behind it"), timeout=2)
    assert (await head).text == "waits 1.2 s"
    info = error_info(caught.value)
    assert info.reason == "PROVIDER_LIMIT_WAIT", caught.value.details()
    assert info.metadata["attempts"] == "0"
    assert int(info.metadata["wait_ms"]) >= 800  # queued ~1 s behind the head
    assert len(fake.chat_requests) == 2  # never sent
