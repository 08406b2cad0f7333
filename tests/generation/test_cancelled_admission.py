"""A call cancelled while its admission under a provider's shared limits is on its way to
Redis (its client gave up, the gateway's fan-out was cancelled) leaves no call in flight
there: Redis may run the admission all the same, and the slot it took would count against
every replica until its lease ended (the call's deadline, plus slack), with a provider's
``max_in_flight`` of 1 holding that provider back for every tenant meanwhile.

A relay holds the admission's script until the call is cancelled, then lets it reach
Redis: the cancelled call's release must take the slot back (it waits until the admission
has run, as a command sent before the release does on a real connection)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from services.common.quotas import lua_script
from services.common.redis_client import connect
from services.common.upstream_retry import Deadline
from services.devlaunch.redis_server import RedisProcess
from services.generation.admission import ProviderLimiter
from services.generation.rate_buckets import DeclaredLimits, RedisLimits
from tests.generation.conftest import unreached_provider
from tests.support.redis_relay import relaying

SCOPE = "p"


def _sha(name: str) -> bytes:
    return hashlib.sha1(lua_script(name).encode()).hexdigest().encode()


async def _until(check: object, what: str) -> None:
    end = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < end:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {what}")


async def test_a_call_cancelled_during_its_shared_admission_leaves_no_call_in_flight(
    redis_server: RedisProcess,
) -> None:
    config = unreached_provider(max_in_flight=1, requests_per_minute=6000)
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    # Loaded up front: the held EVALSHA then runs as it is (no NOSCRIPT round trip).
    await direct.script_load(lua_script("provider_admit"))
    await direct.script_load(lua_script("provider_release"))
    admitting, let_through = asyncio.Event(), asyncio.Event()
    probe = RedisLimits(direct, DeclaredLimits.of(config), key_prefix="gensearch")
    requests_key, _, flight_key, _ = probe.keys(SCOPE)

    async def admission_ran() -> bool:
        # The admission refills the requests bucket: its key is there once it ran.
        return bool(await direct.exists(requests_key))

    async def before(args: list[bytes]) -> None:
        if args[:2] == [b"EVALSHA", _sha("provider_admit")] and not admitting.is_set():
            admitting.set()
            await let_through.wait()
        elif args[:2] == [b"EVALSHA", _sha("provider_release")]:
            # As on one connection: the admission, sent first, has run by then.
            await _until(admission_ran, "ran the held admission")

    try:
        async with relaying(redis_server.url, before) as url:
            client = connect(url, cluster=False, socket_timeout=5, connect_timeout=5)
            try:
                limits = RedisLimits(client, DeclaredLimits.of(config), key_prefix="gensearch")
                limiter = ProviderLimiter(config, SCOPE, limits)
                call = asyncio.create_task(limiter.acquire(limiter.ticket(), 1, Deadline(60)))
                await asyncio.wait_for(admitting.wait(), 20)
                call.cancel()
                let_through.set()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await _until(admission_ran, "ran the held admission")
                assert await direct.zcard(flight_key) == 0, "the cancelled call kept its slot"
                assert limiter.in_flight == 0
                # The next call is admitted at once, not after the cancelled one's lease.
                permit = await asyncio.wait_for(
                    limiter.acquire(limiter.ticket(), 1, Deadline(2)), 5
                )
                await permit.release(outcome="ok", tokens=1)
            finally:
                await client.aclose()
    finally:
        await direct.aclose()
