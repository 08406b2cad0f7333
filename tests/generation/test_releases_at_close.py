"""A slot in flight released by a call cut short (``ProviderLimiter._forget_shared``) is
freed in Redis before the registry closes its Redis client at shutdown: before, the
release was a task nobody awaited, the client was closed under it (and the process went
away), and the slot stayed taken for every replica until its lease ended.

A relay holds the admission until the call is cancelled, and makes the release slow (it
is on its way as the service stops); the call is cancelled again meanwhile, as gRPC
cancels a call still running at the end of the grace period."""

from __future__ import annotations

import asyncio

import pytest

from services.common.openai_api import OpenAIClients
from services.common.redis_client import RedisClient, connect
from services.common.releases import Releases
from services.common.upstream_retry import Deadline
from services.devlaunch.redis_server import RedisProcess
from services.generation.rate_buckets import DeclaredLimits, RedisLimits, scope_of
from services.generation.registry import ProviderRegistry
from tests.generation.conftest import provider_on_shared_limits, script_sha, unreached_provider
from tests.support.redis_relay import relaying
from tests.support.waiting import until


async def test_a_release_on_its_way_at_close_frees_the_slot_before_redis_closes(
    redis_server: RedisProcess, limits_redis: RedisClient
) -> None:
    config = unreached_provider(max_in_flight=1, requests_per_minute=6000)
    probe = RedisLimits(limits_redis, DeclaredLimits.of(config), key_prefix="gensearch")
    # A provider's queue for the operator's key.
    requests_key, _, flight_key, _ = probe.keys(scope_of("p", None))
    admitting, let_admit, releasing = asyncio.Event(), asyncio.Event(), asyncio.Event()
    settling, let_release = asyncio.Event(), asyncio.Event()
    taken_after_settle: list[int] = []

    async def before(args: list[bytes]) -> None:
        if args[:2] == [b"EVALSHA", script_sha("provider_admit")] and not admitting.is_set():
            admitting.set()
            await let_admit.wait()
        elif args[:2] == [b"EVALSHA", script_sha("provider_release")]:
            # As on one connection: the admission, sent first, has run by then.
            await until(lambda: limits_redis.exists(requests_key), "ran the held admission")
            releasing.set()
            # Held until the close settles the releases. A fixed delay (0.5 s) assumed the
            # close came sooner: on a loaded machine the release could end first, and the
            # test passed without a release on its way at the close.
            await let_release.wait()

    async with relaying(redis_server.url, before) as url:
        client = connect(url, cluster=False, socket_timeout=5, connect_timeout=5)
        releases = Releases()
        settle = releases.settle

        async def settle_seen(timeout: float) -> None:
            settling.set()
            await settle(timeout)
            # Read as settle ends, before the close goes on: the relay forwards the
            # held release once let go, whether or not its client is still there.
            taken_after_settle.append(await limits_redis.zcard(flight_key))

        releases.settle = settle_seen  # type: ignore[method-assign]
        clients = OpenAIClients()
        provider = provider_on_shared_limits(config, client, releases, clients)
        registry = ProviderRegistry(
            {"p": provider}, "p", clients, redis=client, releases=releases, close_wait=30
        )
        limiter = provider.limiters.get(None)
        call = asyncio.create_task(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
        await asyncio.wait_for(admitting.wait(), 20)
        call.cancel()  # the client gave up, or the shutdown's cut
        let_admit.set()
        await asyncio.wait_for(releasing.wait(), 20)
        call.cancel()  # gRPC's cancel at the end of the grace period
        with pytest.raises(asyncio.CancelledError):
            await call
        closing = asyncio.create_task(registry.close())
        # A bound, not a timing: the close reaches the releases' settle.
        await asyncio.wait_for(settling.wait(), 20)
        let_release.set()
        await closing
        assert taken_after_settle == [0], "the close did not wait for the release"
        assert await limits_redis.zcard(flight_key) == 0, "the slot stayed taken past the close"
