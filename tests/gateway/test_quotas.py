"""Per-tenant quotas counted in Redis hold across gateway replicas (issue 12).

Two gateways share one real Redis and the same downstream services; a tenant over its
quota on either gets RESOURCE_EXHAUSTED with ErrorInfo (QUOTA_EXCEEDED, the quota named)
and RetryInfo, while other tenants go on.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import GrpcServer
from services.devlaunch.redis_server import RedisProcess
from services.gateway.__main__ import build_server as build_gateway
from tests.gateway.conftest import ALICE, BOB, DIM, Stack, StackFactory, create_books
from tests.support.rpc import error_info, retry_delay


def _search(**generate: Any) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=3,
        generate=gw_pb.Generate(**generate),
    )


class Replicas:
    """Two gateways in front of one stack, counting quotas in one Redis."""

    def __init__(self, stack: Stack, second: GrpcServer, channel: grpc.aio.Channel) -> None:
        self.stack = stack
        self.second = second
        self.channel = channel
        self.a = stack.stub
        self.b: Any = gw_grpc.GatewayServiceStub(channel)


@pytest.fixture
async def replicas_factory(stack_factory: StackFactory, shared_redis: RedisProcess) -> Any:
    made: list[Replicas] = []

    async def make(**quotas: Any) -> Replicas:
        stack = await stack_factory(
            redis_url=shared_redis.url, quota_key_prefix=f"q-{uuid.uuid4().hex[:8]}", **quotas
        )
        # alice and bob are each alone in a tenant of their own: each gets the collection.
        await create_books(stack)
        await create_books(stack, metadata=BOB)
        second = await build_gateway(stack.gateway.settings.model_copy(), port=0)  # type: ignore[arg-type]
        port = await second.start()
        replicas = Replicas(stack, second, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        made.append(replicas)
        return replicas

    yield make
    for replicas in made:
        await replicas.channel.close()
        await replicas.second.stop(0)


async def test_concurrent_calls_quota_holds_across_replicas(replicas_factory: Any) -> None:
    r = await replicas_factory(quota_concurrent_calls=2)
    r.stack.fake.latency = 1.0
    request = _search(single_prompt="{title}")
    # Alice's two slow calls on replica A fill her quota ...
    slow = [asyncio.ensure_future(r.a.GenerativeSearch(request, metadata=ALICE)) for _ in "ab"]
    await r.stack.fake.wait_for_requests(1)
    # ... so replica B refuses her third, before it reaches any service.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.b.GenerativeSearch(request, metadata=ALICE, timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.metadata["quota"] == "concurrent_calls"
    assert info.metadata["limit"] == "2"
    assert 0 < retry_delay(caught.value) <= 5
    # Bob is another tenant: his quota is his own.
    r.stack.fake.latency = 0.0
    assert len((await r.b.GenerativeSearch(request, metadata=BOB, timeout=5)).hits) == 3
    # Health is never counted, even for a tenant at its quota.
    health = health_pb2_grpc.HealthStub(r.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for done in await asyncio.gather(*slow):
        assert all(not h.generation.error.status for h in done.hits)
    # Finished calls gave their slots back.
    assert len((await r.b.GenerativeSearch(request, metadata=ALICE, timeout=5)).hits) == 3


async def test_llm_calls_per_minute_quota_holds_across_replicas(replicas_factory: Any) -> None:
    r = await replicas_factory(quota_llm_calls_per_minute=4)
    # Three hits and a grouped call: four LLM calls, all within the quota (replica A).
    first = await r.a.GenerativeSearch(
        _search(single_prompt="{title}", grouped_task="Compare"), metadata=ALICE, timeout=10
    )
    assert all(not h.generation.error.status for h in first.hits)
    assert not first.grouped.error.status
    # The same minute on replica B: every LLM call is refused, each hit saying why.
    second = await r.b.GenerativeSearch(
        _search(single_prompt="{title}", grouped_task="Compare"), metadata=ALICE, timeout=10
    )
    errors = [h.generation.error for h in second.hits] + [second.grouped.error]
    assert {e.status for e in errors} == {"RESOURCE_EXHAUSTED"}
    assert {e.reason for e in errors} == {"QUOTA_EXCEEDED"}
    assert len(r.stack.fake.chat_requests) == 4
    # Bob's minute is his own.
    third = await r.b.GenerativeSearch(_search(single_prompt="{title}"), metadata=BOB, timeout=10)
    assert all(not h.generation.error.status for h in third.hits)


async def test_an_llm_call_over_quota_carries_retry_info(replicas_factory: Any) -> None:
    r = await replicas_factory(quota_llm_calls_per_minute=1)
    stream = r.b.StreamGenerativeSearch(
        gw_pb.StreamGenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=2,
            generate=gw_pb.Generate(grouped_task="Compare"),
        ),
        metadata=ALICE,
        timeout=10,
    )
    assert [event async for event in stream]
    # The quota is used: Ask's answer is refused as a whole, with when to try again.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.a.Ask(
            gw_pb.AskRequest(llm_question="Which book?", collection="Books"),
            metadata=ALICE,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).metadata["quota"] == "llm_calls_per_minute"
    assert 0 < retry_delay(caught.value) <= 60
