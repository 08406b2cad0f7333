"""The gateway test stack gives Redis time to answer (tests/support/redis_patience.py):
its quotas fail open on a late reply, so with the service's default 0.5 s socket timeout a
reply late on a loaded machine let a call through that a test expected refused. A relay
in front of the real Redis makes every quota script's reply late by more than that
default; the stack still counts, and a stack that opts out (as a Redis outage test does)
keeps the short default and lets the call through."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc

from services.devlaunch.redis_server import RedisProcess
from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import ALICE, StackFactory
from tests.support.redis_patience import PATIENT_REDIS
from tests.support.redis_relay import relaying

# Later than the gateway's default socket timeout, well within PATIENT_REDIS's.
LATE = 3 * GatewaySettings.model_fields["redis_socket_timeout"].default


async def _late_scripts(args: list[bytes]) -> None:
    if args[:1] in ([b"EVALSHA"], [b"EVAL"]):  # every quota check and charge is a script
        await asyncio.sleep(LATE)


async def _second_call(
    stack_factory: StackFactory, shared_redis: RedisProcess, **settings: bool
) -> grpc.StatusCode:
    """The status of a second LLM call under a quota of one a minute, each quota script's
    reply late by ``LATE``."""
    assert PATIENT_REDIS["redis_socket_timeout"] >= LATE * 2
    async with relaying(shared_redis.url, _late_scripts) as url:
        stack = await stack_factory(
            redis_url=url,
            quota_key_prefix=f"patience-{uuid.uuid4().hex[:8]}",
            quota_llm_calls_per_minute=1,
            quota_concurrent_calls=0,
            **settings,
        )
        generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[arg-type]
        request = gen_pb.GenerateRequest(
            messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hello there")]
        )
        await generation.Generate(request, metadata=ALICE, timeout=60)
        try:
            await generation.Generate(request, metadata=ALICE, timeout=60)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK


async def test_the_stack_counts_a_quota_whose_redis_answers_late(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    code = await _second_call(stack_factory, shared_redis)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_stack_keeping_the_default_timeouts_lets_the_late_quota_fail_open(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    # What an outage test opts out for: the short default, under which Redis is "down".
    code = await _second_call(stack_factory, shared_redis, production_redis_timeouts=True)
    assert code == grpc.StatusCode.OK
