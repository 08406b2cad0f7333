"""The cap on calls a server serves at once (``max_concurrent_rpcs``, every service)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info


async def test_calls_over_the_cap_get_resource_exhausted(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service([fake_provider(fake)], max_concurrent_rpcs=2)
    fake.latency = 1.0
    busy = [
        asyncio.ensure_future(
            svc.stub.Generate(pb.GenerateRequest(messages=[user(f"q{i}")]), timeout=10)
        )
        for i in range(2)
    ]
    await fake.wait_for_requests(2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.ListModels(pb.ListModelsRequest(), timeout=5)
    # The chassis answers, with an ErrorInfo like every other refusal
    # (docs/operations.md#limits).
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "TOO_MANY_CONCURRENT_RPCS"
    assert dict(info.metadata) == {
        "limit": "2",
        "setting": "GENSEARCH_GENERATION_MAX_CONCURRENT_RPCS",
        "scope": "server",
    }
    assert [r.text for r in await asyncio.gather(*busy)] == ["q0", "q1"]
    # Below the cap again.
    assert (await svc.stub.ListModels(pb.ListModelsRequest(), timeout=5)).providers
