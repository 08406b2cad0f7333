"""A provider's release that a cancel interrupts in its call (the call ended, then its
client gave up as the release was on its way) is sent again apart from the call without
its refund: the first may have reached Redis and given the tokens back already, and
tokens given back twice would let calls past the declared tokens_per_minute."""

from __future__ import annotations

import asyncio

import pytest

from services.common.redis_client import connect
from services.common.releases import Releases
from services.common.upstream_retry import Deadline
from services.devlaunch.redis_server import RedisProcess
from tests.generation.conftest import provider_on_shared_limits, script_sha, unreached_provider
from tests.support.redis_relay import relaying


@pytest.mark.usefixtures("limits_redis")  # its scripts loaded: the release is an EVALSHA
async def test_a_release_cut_in_its_call_is_sent_again_without_its_refund(
    redis_server: RedisProcess,
) -> None:
    config = unreached_provider(
        max_in_flight=2,
        tokens_per_minute=60_000,
        tokens_counted="used",  # the estimate corrected to the usage: a refund
    )
    refunds: list[bytes] = []
    first_held, let_first = asyncio.Event(), asyncio.Event()

    async def before(args: list[bytes]) -> None:
        if args[:2] == [b"EVALSHA", script_sha("provider_release")]:
            # EVALSHA sha 2 tokens flight capacity per_ms refund call_id ttl
            refunds.append(args[7])
            if len(refunds) == 1:
                first_held.set()
                await let_first.wait()

    try:
        async with relaying(redis_server.url, before) as url:
            client = connect(url, cluster=False, socket_timeout=5, connect_timeout=5)
            releases = Releases()
            provider = provider_on_shared_limits(config, client, releases)
            limiter = provider.limiters.get(None)
            permit = await limiter.acquire(limiter.ticket(), 500, Deadline(60))
            # The call used 100 of the 500 tokens it was charged: 400 go back.
            call = asyncio.create_task(permit.release(outcome="ok", tokens=100))
            await asyncio.wait_for(first_held.wait(), 20)
            call.cancel()  # its client gave up with the release on its way
            with pytest.raises(asyncio.CancelledError):
                await call
            await releases.settle(30)
            let_first.set()
            assert len(refunds) == 2, refunds
            assert float(refunds[0]) == 400
            assert float(refunds[1]) == 0, "the release sent again gave the tokens back again"
            await client.aclose()
    finally:
        let_first.set()
