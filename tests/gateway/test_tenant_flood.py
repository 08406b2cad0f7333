"""One tenant's flood of slow calls through the gateway does not starve another tenant
(docs/operations.md#limits, MAX_CONCURRENT_RPCS_PER_TENANT): with the gateway's calls at
once at 4 and a tenant's share at 2, alice's twelve Generate calls, each held at the LLM,
get two answered and ten RESOURCE_EXHAUSTED naming the share, while bob's calls made
during the flood are all answered. Before the share, alice's calls took all four slots
and bob's were refused TOO_MANY_CONCURRENT_RPCS. Real gateway, generation, retrieval
and memory over gRPC, the loopback fake LLM holding its answers."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import ALICE, BOB, StackFactory
from tests.support.rpc import error_info
from tests.support.waiting import until

LIMIT, SHARE, FLOOD = 4, 2, 12
SETTING = "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS_PER_TENANT"


def _hello() -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(
        provider="fake", messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hello")]
    )


async def test_a_tenants_flood_leaves_the_other_tenant_served(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(max_concurrent_rpcs=LIMIT, max_concurrent_rpcs_per_tenant=SHARE)
    stack.fake.gate = asyncio.Event()  # every LLM answer waits here
    generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[no-untyped-call]
    flood = [
        asyncio.ensure_future(generation.Generate(_hello(), metadata=ALICE, timeout=60))
        for _ in range(FLOOD)
    ]

    async def settled() -> bool:
        return stack.fake.gated == SHARE and sum(c.done() for c in flood) == FLOOD - SHARE

    await until(settled, "alice's share held at the LLM and the rest of her calls answered")
    for call in flood:
        if call.done():
            err = call.exception()
            assert isinstance(err, grpc.aio.AioRpcError), err
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            info = error_info(err)
            assert info.reason == "TOO_MANY_CONCURRENT_RPCS"
            assert dict(info.metadata) == {
                "limit": str(SHARE),
                "setting": SETTING,
                "scope": "tenant",
            }
    # Bob, during the flood: every slot alice does not hold answers him.
    answers = await asyncio.gather(
        *(
            stack.retrieval.ListCollections(
                ret_pb.ListCollectionsRequest(), metadata=BOB, timeout=30
            )
            for _ in range(LIMIT - SHARE)
        )
    )
    assert len(answers) == LIMIT - SHARE
    stack.fake.gate.set()
    held = [await call for call in flood if not call.done() or call.exception() is None]
    assert len(held) == SHARE and all(reply.text for reply in held)
    assert stack.gateway.call_slots.in_flight == 0
