"""The gateway process dies mid-stream and comes back: the Python client's stream ends
with UnavailableError (UNAVAILABLE) as soon as the connection drops, not at its deadline,
a call while it is down fails the same way, and the same client object works again once
the gateway is back. The gateway is a real ``python -m services.gateway`` process
(SIGKILLed), in front of the services of tests/gateway's stack."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gensearch.client import AsyncGensearch, errors, types

from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.gateway_process import SLOW, GatewayProcess, until_disconnected

# Far beyond the test: an error before it is the dropped connection's, not the deadline's.
TIMEOUT = 600


async def until_serving(client: AsyncGensearch) -> None:
    """Polls (up to 60 s) until the client's own channel reaches the gateway again: gRPC
    reconnects after a backoff (1 s, growing while the gateway stays away), and until
    then a call fails at once with UNAVAILABLE (docs/python-client.md#errors)."""
    end = asyncio.get_running_loop().time() + 60
    while True:
        try:
            assert await client.health() == "SERVING"
            return
        except errors.UnavailableError:
            assert asyncio.get_running_loop().time() < end, "the client never reconnected"
            await asyncio.sleep(0.1)


@pytest.mark.slow  # starts the gateway process twice
async def test_a_gateway_killed_mid_stream_is_unavailable_then_back(
    gateway_process: GatewayProcess, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.ok(text=SLOW, chunk_delay=0.5))
    async with AsyncGensearch(
        gateway_process.address, api_key="key-alice-123", timeout=TIMEOUT
    ) as client:
        stream = client.generate_stream.complete("streamed while the gateway dies")
        first = await anext(stream)
        assert isinstance(first, types.CompletionDelta)
        await gateway_process.kill()
        with pytest.raises(errors.UnavailableError) as died:
            await asyncio.wait_for(anext(stream), 60)
        assert died.value.code == grpc.StatusCode.UNAVAILABLE
        await until_disconnected(fake)  # the generation service dropped the LLM request
        with pytest.raises(errors.UnavailableError):  # down: refused at once, not hung
            await asyncio.wait_for(client.generate.complete("while down"), 60)

        await gateway_process.start()
        await until_serving(client)
        fake.enqueue(Behaviour.ok(text="back again"))
        answer = await client.generate.complete("after the restart")
        assert answer.text == "back again"
