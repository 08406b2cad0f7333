"""Tenants waiting on the same provider take turns, and a call the provider's limits cannot
serve within its deadline fails with our status before the caller's deadline passes.

Real gRPC, real Redis (the declared limits counted there), and a loopback provider
(enforcing the rate it declares, in the first test). Assertions are on order and on
statuses, not on tight timings: the machine may be busy."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from pydantic import SecretStr

from services.devlaunch.redis_server import RedisProcess
from tests.generation.conftest import Service, StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.forwarded import forwarded
from tests.support.rpc import error_info

TOKEN = "generation-fair-share-internal-token"
# The fake takes LIMIT requests per WINDOW seconds and the provider declares the same:
# one at once, then one every WINDOW / (LIMIT - 1) s (a third of a second).
LIMIT = 4
WINDOW = 1.0
DECLARED = {
    "requests_per_minute": LIMIT * 60 / WINDOW,
    "rate_window": WINDOW,
    "rate_burst": 0.25,
}
FLOOD = 30  # about ten seconds of the provider's allowance


def as_(user_name: str, tenant: str) -> tuple[tuple[str, str], ...]:
    return forwarded(TOKEN, user_name, tenant, "reader")


ALICE = as_("alice", "acme")
BOB = as_("bob", "beta")


def ask(text: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[user(text)])


async def generate(service: Service, text: str, **kw: Any) -> pb.GenerateResponse:
    reply: pb.GenerateResponse = await service.stub.Generate(ask(text), **kw)
    return reply


def prompt_of(body: object) -> str:
    assert isinstance(body, dict)
    return str(body["messages"][-1]["content"])


async def test_one_tenants_flood_does_not_starve_another_tenants_call(
    redis_server: RedisProcess, start_service: StartService
) -> None:
    async with FakeOpenAI(rate_limit=LIMIT, rate_window=WINDOW) as fake:
        service = await start_service(
            [fake_provider(fake, max_concurrency=None, **DECLARED)],
            redis_url=redis_server.url,
            internal_token=SecretStr(TOKEN),
        )
        flood = [
            asyncio.create_task(generate(service, f"acme {i}", metadata=ALICE, timeout=60))
            for i in range(FLOOD)
        ]
        try:
            # By the third answer every call of the flood is long queued.
            await fake.wait_for_requests(3, timeout=30)
            sent_at = len(fake.chat_requests)
            reply = await generate(service, "beta", metadata=BOB, timeout=60)
            # Read at beta's answer: the acme calls not answered yet.
            flood_waiting = sum(not task.done() for task in flood)
            prompts = [prompt_of(r.json) for r in fake.chat_requests]
        finally:
            for task in flood:
                task.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
    assert reply.text == "beta"
    # First-come first-served would send every queued acme call first (some 25); taking
    # turns, at most the acme call at the head of the queue (and one already on its way)
    # goes before it: about one refill interval.
    went_before = prompts.index("beta") - sent_at
    assert went_before <= 3, prompts
    # Answered ahead of the flood, not after it: half the flood still waits (first-come
    # first-served answers every queued acme call first; the half leaves room for ~3 s of
    # acme answers, at 4 a second, before the test reads the tasks on a loaded machine).
    assert flood_waiting >= FLOOD // 2, (flood_waiting, sent_at)
    assert fake.rate_limited == 0  # the provider's limit was kept all along


async def test_a_call_the_queue_cannot_serve_in_time_fails_with_a_reason_before_its_deadline(
    redis_server: RedisProcess, fake: FakeOpenAI, start_service: StartService
) -> None:
    service = await start_service(
        [fake_provider(fake, max_concurrency=None, max_in_flight=1)],
        redis_url=redis_server.url,
    )
    fake.enqueue(Behaviour.hang(30))
    holder = asyncio.create_task(generate(service, "holds the slot", timeout=60))
    try:
        await fake.wait_for_requests(1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(service, "queued", timeout=3)
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await holder
    # Our status, sent while the caller still listened: a bare client-side
    # DEADLINE_EXCEEDED would carry no ErrorInfo.
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(caught.value)
    assert info.reason == "PROVIDER_QUEUE_TIMEOUT"
    assert info.metadata["provider"] == "fake"
    assert info.metadata["attempts"] == "0"
    assert len(fake.chat_requests) == 1  # the queued call was never sent


async def test_a_tenant_holding_its_share_leaves_the_other_slots_to_other_tenants(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """Turns between waiting tenants never bounded what one tenant holds: its long calls
    took every slot of the provider (here 2, as a local server's) while nobody else
    waited, and another tenant's call then waited for one of them to end, failing
    PROVIDER_QUEUE_TIMEOUT. With ``max_in_flight_per_tenant`` its further calls wait for
    its own, and the slot left serves the other tenant at once."""
    service = await start_service(
        [fake_provider(fake, max_concurrency=2, max_in_flight_per_tenant=1, adaptive=False)],
        internal_token=SecretStr(TOKEN),
    )
    fake.by_model["slow-model"] = Behaviour.hang(30)
    slow = pb.GenerateRequest(model="slow-model", messages=[user("acme")])

    async def hog() -> None:
        await service.stub.Generate(slow, metadata=ALICE, timeout=60)

    hogs = [asyncio.create_task(hog()) for _ in range(2)]
    try:
        await fake.wait_for_requests(1)
        reply = await generate(service, "beta", metadata=BOB, timeout=5)
        sent = [r.json["model"] for r in fake.chat_requests]
    finally:
        for task in hogs:
            task.cancel()
        await asyncio.gather(*hogs, return_exceptions=True)
    assert reply.text == "beta"
    assert sent == ["slow-model", "fake-model"]  # Alice's second call waits for her first
