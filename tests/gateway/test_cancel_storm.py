"""A tenant's storm of streaming calls, from outside: past its concurrent-calls quota the
rest are refused RESOURCE_EXHAUSTED with ErrorInfo and RetryInfo; another tenant's small
call still answers while the storm holds its share of the provider; and once the storm's
clients cancel mid-flight, every slot comes back: the quota's Redis slots, the in-flight
gauges of the gateway, the generation service and the provider, the gateway's queue, the
renewal tasks. Guard tests: all of this held when written (abuser5's probe)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import grpc

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import (
    ALICE,
    BOB,
    StackFactory,
    books_search,
    books_stream_search,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.metrics import gauge
from tests.support.rpc import error_info, retry_delay, stream_end
from tests.support.waiting import until

QUOTA = 24  # alice's concurrent calls
STORM = 32  # her streams: 8 refused
SHARE = 16  # her generation calls in flight at the provider; her others queue there


def _held() -> dict[str, float]:
    """What calls hold in this process: gRPC calls in flight (gateway and generation),
    the provider's calls in flight, the gateway's generation calls waiting, and the
    quota leases' renewal tasks."""
    return {
        "gateway": gauge("gensearch_grpc_server_in_flight", server="gateway"),
        "generation": gauge("gensearch_grpc_server_in_flight", server="generation"),
        "provider": gauge("gensearch_llm_in_flight", provider="fake"),
        "waiting": gauge("gensearch_gateway_generation_waiting"),
        "renewals": float(
            sum(t.get_name().startswith("quota-renewal-") for t in asyncio.all_tasks())
        ),
    }


async def _outcome(call: Any) -> str:
    """``stream_end``'s, a refusal checked and named ``refused``."""
    end = await stream_end(call)
    if isinstance(end, str):
        return end
    info = error_info(end)
    assert end.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, end.details()
    assert (info.reason, info.metadata["quota"]) == ("QUOTA_EXCEEDED", "concurrent_calls")
    assert info.metadata["limit"] == str(QUOTA)
    assert 0 < retry_delay(end) <= 5
    return "refused"


async def test_a_cancelled_storm_gives_every_slot_back_and_spares_other_tenants(
    stack_factory: StackFactory, shared_redis: RedisProcess, fake: FakeOpenAI
) -> None:
    prefix = f"q-{uuid.uuid4().hex[:8]}"
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
        quota_concurrent_calls=QUOTA,
        provider=fake_provider(fake, max_in_flight_per_tenant=SHARE),
    )
    await create_books(stack)
    await create_books(stack, metadata=BOB)
    before = _held()
    # Alice's answers never come (her model hangs); bob's come at once.
    fake.by_model["slow"] = Behaviour.hang(600)
    request = books_stream_search(limit=3, single_prompt="{title}", model="slow")
    calls = [
        stack.stub.StreamGenerativeSearch(request, metadata=ALICE, timeout=120)
        for _ in range(STORM)
    ]
    outcomes = [asyncio.ensure_future(_outcome(call)) for call in calls]
    # Her share of the provider is taken, the rest of her hits queue behind it ...
    await fake.wait_for_requests(SHARE, timeout=60)
    # ... yet bob's call is answered: his hits pass hers at the provider.
    reply = await stack.stub.GenerativeSearch(
        books_search(limit=2, single_prompt="{title}"), metadata=BOB, timeout=60
    )
    assert [hit.generation.error.reason for hit in reply.hits] == ["", ""]
    assert len(fake.chat_requests) == SHARE + 2  # none of alice's queued hits got through

    async def refusals_ended() -> bool:  # before any cancel: refused, not cut
        return sum(task.done() for task in outcomes) == STORM - QUOTA

    await until(refusals_ended, "the refusals", timeout=60)
    redis = connect(shared_redis.url, cluster=False, socket_timeout=5, connect_timeout=5)
    try:

        async def quota_slots() -> int:
            keys = [k async for k in redis.scan_iter(f"{prefix}:quota:*:calls")]
            return sum([await redis.zcard(key) for key in keys])

        async def no_quota_slots() -> bool:
            return await quota_slots() == 0

        async def nothing_held() -> bool:
            return _held() == before

        assert await quota_slots() == QUOTA  # her running streams' slots, counted here
        for call in calls:
            call.cancel()
        counted = Counter(await asyncio.gather(*outcomes))
        assert counted == {"refused": STORM - QUOTA, "cancelled": QUOTA}
        await until(no_quota_slots, "alice's concurrent-call slots back", timeout=60)
        await until(nothing_held, "calls in flight, waiting, or renewal tasks back", timeout=60)
        assert _held() == before
        # Each admitted hit is charged its one LLM call (docs: a call the caller abandoned
        # counts the one admitted), never more: hits of refused streams are not charged.
        charged = 0
        async for key in redis.scan_iter(f"{prefix}:quota:*:llm"):
            charged += int(await redis.hget(key, "n") or 0)
        assert charged <= QUOTA * 3 + 2
    finally:
        await redis.aclose()
    # Her slots are hers again: a new call of hers runs (her model answers again).
    fake.by_model.pop("slow")
    again = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            books_stream_search(limit=1, single_prompt="{title}"), metadata=ALICE, timeout=60
        )
    ]
    assert again
