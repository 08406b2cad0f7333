"""A stopping gateway awaits the concurrent-call slot release still on its way before it
closes its Redis client (``server.on_stop(quotas.settle)`` in services/gateway/__main__.py):
the release of the call the stop cut frees the slot in Redis by the time the stop ends.
Without it the client closed under the release, and the slot stayed taken, for every
replica, until its lease ended. ``tests/common/test_quota_releases.py`` checks ``settle``
itself; this checks the gateway's stop is wired to it.

A relay in front of the real Redis holds the release (ZREM) until the stop is settling
(its line "waiting for releases of Redis slots", logged as the wait begins); if the stop
ends without ever settling, the release is still held when Redis is read."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import ALICE, StackFactory
from tests.support.fake_openai import Behaviour
from tests.support.redis_relay import relaying
from tests.support.rpc import failure_of
from tests.support.settling import slots_left_after_settling

GRACE = 1.0


async def test_a_stopping_gateway_frees_the_slot_whose_release_is_on_its_way(
    stack_factory: StackFactory, shared_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gensearch.releases")
    prefix = f"settle-{uuid.uuid4().hex[:8]}"
    direct = connect(shared_redis.url, cluster=False, socket_timeout=5, connect_timeout=5)
    releasing, let_release = asyncio.Event(), asyncio.Event()

    async def before(args: list[bytes]) -> None:
        if args[:1] == [b"ZREM"]:  # the slot's release (quotas.py's one plain ZREM)
            releasing.set()
            await let_release.wait()

    async def slots_taken() -> int:
        keys = await direct.keys(f"{prefix}:quota:*:calls")
        return sum([await direct.zcard(key) for key in keys])

    try:
        async with relaying(shared_redis.url, before) as url:
            stack = await stack_factory(
                redis_url=url, quota_key_prefix=prefix, quota_concurrent_calls=4
            )
            stack.fake.enqueue(Behaviour.hang())
            generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[arg-type]
            request = gen_pb.GenerateRequest(
                messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hello there")]
            )
            call = generation.Generate(request, metadata=ALICE, timeout=60)
            await stack.fake.wait_for_requests(1, timeout=30)
            assert await slots_taken() == 1  # the call holds its slot
            stopping = asyncio.create_task(stack.gateway.stop(GRACE))
            await failure_of(call)  # the stop cut it: its release goes out, held
            await asyncio.wait_for(releasing.wait(), 30)
            taken = await slots_left_after_settling(stopping, caplog, let_release, slots_taken)
            assert taken == 0, "the stop ended with the cut call's slot still taken"
    finally:
        let_release.set()
        await direct.aclose()
