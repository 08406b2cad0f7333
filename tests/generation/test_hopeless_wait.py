"""A call that a 429's pause makes sure to miss its deadline is told so at once, wherever
it waits in the provider's queue (not only at its head), while calls that can wait for the
pause still get through: the loopback provider enforces its limit with 429s."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from google.rpc.error_details_pb2 import ErrorInfo
from prometheus_client import REGISTRY

from services.common.upstream_retry import Deadline
from services.devlaunch.redis_server import RedisProcess
from services.generation.admission import ProviderLimiter
from services.generation.upstream import UpstreamFault, to_service_error
from tests.generation.conftest import StartService, fake_provider, unreached_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

WINDOW = 3.0  # the fake takes one request per window and answers 429 until it ends


HURRIED = 1.5  # the deadline of a call the pause or the bucket's wait outlasts


def _assert_refused_before_its_deadline(info: ErrorInfo) -> None:
    """Refused early and never sent: its reported wait is less than its deadline (a wait
    up to the deadline is the old code's queue timeout), and no attempt was made."""
    assert info.reason == "PROVIDER_LIMIT_WAIT"
    assert info.metadata["provider"] == "fake"
    assert info.metadata["attempts"] == "0"
    assert int(info.metadata["wait_ms"]) < HURRIED * 1000
    # What the caller should wait before trying again: the rest of the pause (or of the
    # bucket's wait), which outlasts the deadline and ends with the window.
    assert 0 < int(info.metadata["retry_after_ms"]) <= WINDOW * 1000


def _retried_after_429() -> float:
    return (
        REGISTRY.get_sample_value(
            "gensearch_llm_retries_total", {"provider": "fake", "cause": "429"}
        )
        or 0.0
    )


def _refused_early() -> float:
    return (
        REGISTRY.get_sample_value(
            "gensearch_llm_requests_total", {"provider": "fake", "outcome": "limit_wait"}
        )
        or 0.0
    )


async def test_a_call_queued_behind_a_pause_it_cannot_outwait_fails_at_once(
    start_service: StartService,
) -> None:
    async with FakeOpenAI(rate_limit=1, rate_window=WINDOW) as fake:
        service = await start_service([fake_provider(fake, max_concurrency=None)])

        async def call(text: str, timeout: float) -> pb.GenerateResponse:
            request = pb.GenerateRequest(messages=[user(text)])
            reply: pb.GenerateResponse = await service.stub.Generate(request, timeout=timeout)
            return reply

        # Right after a window begins: the second call gets 429, Retry-After ~ the window.
        await asyncio.sleep(WINDOW - time.monotonic() % WINDOW + 0.05)
        assert (await call("first", 20)).text == "first"
        retried = _retried_after_429()
        second = asyncio.create_task(call("second", 20))
        await fake.wait_for_requests(2)
        # The 429 reached the service: its queue is paused (in the same step as the retry
        # is counted). Waited for, not slept: a fixed 0.1 s was not always enough on a
        # loaded machine, and 'hurried' then went out to the provider.
        async with asyncio.timeout(30):
            while _retried_after_429() < retried + 1:
                assert not second.done(), second
                await asyncio.sleep(0.01)
        assert fake.rate_limited == 1
        patient = asyncio.create_task(call("patient", 20))
        await asyncio.sleep(0.05)
        before = _refused_early()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call("hurried", HURRIED)

        # Refused while the paused head still waits: its retry has not gone out (the fake
        # saw only 'first' and the 429'd 'second') and nobody behind it got through. Old
        # code: it queued behind the paused head until its deadline (DEADLINE_EXCEEDED,
        # PROVIDER_QUEUE_TIMEOUT): its whole budget spent for nothing.
        assert len(fake.chat_requests) == 2
        assert not second.done() and not patient.done()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        _assert_refused_before_its_deadline(error_info(caught.value))
        assert _refused_early() == before + 1  # counted like a refusal at the head
        assert _refused_early() == before + 1  # counted like a refusal at the head

        # The calls that can wait for the pause still get their answers.
        assert (await second).text == "second"
        assert (await patient).text == "patient"
    assert "hurried" not in [r.json["messages"][-1]["content"] for r in fake.chat_requests]


async def test_a_pause_that_starts_while_calls_wait_refuses_those_it_outlasts() -> None:
    limiter = ProviderLimiter(unreached_provider(max_concurrency=1), "p", None)
    held = await limiter.acquire(limiter.ticket(), 1, Deadline(10))
    short = asyncio.create_task(limiter.acquire(limiter.ticket(), 1, Deadline(2)))
    long = asyncio.create_task(limiter.acquire(limiter.ticket(), 1, Deadline(10)))
    await asyncio.sleep(0.05)
    assert not short.done() and not long.done()  # both queued behind the held slot

    await limiter.pause(3)  # a 429: nothing starts for 3 s
    with pytest.raises(UpstreamFault) as caught:
        await short
    # Refused while the slot ahead is still held (the test releases it only below) and
    # the call behind still waits. Old code: 'short' waited at the head for that slot
    # until its deadline (queue_timeout); it could reach the pause's check only once the
    # slot came back.
    assert caught.value.kind == "limit_wait", caught.value
    assert not long.done()
    error = to_service_error(caught.value, "p", "m")
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "PROVIDER_LIMIT_WAIT"
    # Refused only if the pause outlasts its deadline: the pause ends ~1 s after it.
    assert 1000 < int(error.metadata["retry_after_ms"]) <= 3000

    await held.release(outcome="ok")
    permit = await long  # the one that can wait the pause out still gets through
    assert permit.waited >= 2.9
    await permit.release(outcome="ok")


@pytest.mark.parametrize("shared", [False, True], ids=["in-memory", "redis"])
async def test_a_call_behind_a_head_waiting_for_the_requests_bucket_fails_at_once(
    shared: bool, start_service: StartService, redis_server: RedisProcess
) -> None:
    """One request per 3 s, declared and enforced: a call queued behind a head that waits
    ~3 s for the bucket cannot start within 1.5 s whatever the head does."""
    async with FakeOpenAI(rate_limit=1, rate_window=WINDOW) as fake:
        declared = {"requests_per_minute": 60 / WINDOW, "rate_window": WINDOW}
        service = await start_service(
            [fake_provider(fake, max_concurrency=None, **declared)],
            **({"redis_url": redis_server.url} if shared else {}),
        )

        async def call(text: str, timeout: float) -> pb.GenerateResponse:
            request = pb.GenerateRequest(messages=[user(text)])
            reply: pb.GenerateResponse = await service.stub.Generate(request, timeout=timeout)
            return reply

        await asyncio.sleep(WINDOW - time.monotonic() % WINDOW + 0.05)
        assert (await call("first", 20)).text == "first"  # takes the one request
        head = asyncio.create_task(call("head", 20))  # asks the bucket: ~3 s to wait
        await asyncio.sleep(0.2)
        patient = asyncio.create_task(call("patient", 20))
        await asyncio.sleep(0.05)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call("hurried", HURRIED)
        # Refused while the head still waits for the bucket: only 'first' reached the fake.
        # Old code: queued behind the head until its deadline (PROVIDER_QUEUE_TIMEOUT).
        assert len(fake.chat_requests) == 1
        assert not head.done() and not patient.done()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        _assert_refused_before_its_deadline(error_info(caught.value))

        assert (await head).text == "head"
        assert (await patient).text == "patient"
    assert fake.rate_limited == 0
    assert "hurried" not in [r.json["messages"][-1]["content"] for r in fake.chat_requests]
