"""The in-flight slot of a generation call cancelled while its LLM request runs (the
client gave up, or the shutdown's cut) is freed in Redis before the service closes its
Redis client at stop. Its release went out as a bare ``asyncio.shield`` task the close
never heard of (only an admission cut short used the tracked releases), so the close
closed the client under it and the slot stayed taken, for every replica, until its lease
ended: the path test_releases_at_close.py covers for the admission, here for the call.

A relay in front of the real Redis holds the release until the stop is settling; a stop
that never waits for it ends with the release still held."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.redis_client import RedisClient
from services.devlaunch.redis_server import RedisProcess
from services.generation.rate_buckets import DeclaredLimits, RedisLimits, scope_of
from services.generation.settings import ProviderConfig
from tests.generation.conftest import StartService, fake_provider, script_sha, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.redis_relay import relaying
from tests.support.settling import slots_left_after_settling


async def test_a_cancelled_calls_slot_is_freed_before_the_stop_closes_redis(
    fake: FakeOpenAI,
    start_service: StartService,
    redis_server: RedisProcess,
    limits_redis: RedisClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gensearch.releases")
    config = ProviderConfig(
        name="fake", base_url=fake.base_url, default_model="fake-model", max_in_flight=1
    )
    _, _, flight_key, _ = RedisLimits(
        limits_redis, DeclaredLimits.of(config), key_prefix="gensearch"
    ).keys(scope_of("fake", None))
    releasing, let_release = asyncio.Event(), asyncio.Event()

    async def before(args: list[bytes]) -> None:
        if args[:2] == [b"EVALSHA", script_sha("provider_release")]:
            releasing.set()
            await let_release.wait()

    try:
        async with relaying(redis_server.url, before) as url:
            service = await start_service([fake_provider(fake, max_in_flight=1)], redis_url=url)
            fake.enqueue(Behaviour.hang())
            call = service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=60)
            await fake.wait_for_requests(1, timeout=30)
            assert await limits_redis.zcard(flight_key) == 1  # the call holds its slot
            call.cancel()  # the client gives up: its release goes out, held
            await asyncio.wait_for(releasing.wait(), 30)
            stopping = asyncio.create_task(service.server.stop(0))
            taken = await slots_left_after_settling(
                stopping, caplog, let_release, lambda: limits_redis.zcard(flight_key)
            )
            assert taken == 0, "the stop ended with the cancelled call's slot still taken"
            assert call.cancelled() or call.code() == grpc.StatusCode.CANCELLED
    finally:
        let_release.set()
