"""An operator's view of a service the gateway cannot reach: one WARNING naming the service
and its address variable when the outage starts, not one per call (before: no line at all
but each call's access line), and one INFO line when it answers again (the whole stack on
loopback: real gateway, real memory on real Redis)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from services.memory.__main__ import build_server as build_memory
from tests.gateway.conftest import ALICE, StackFactory
from tests.support.rpc import error_info

CALLS = 3
LOGGER = "gensearch.gateway.downstream"


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_an_unreachable_service_is_one_warning_and_its_return_one_line(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await stack_factory(generation=False)
    caplog.set_level(logging.INFO, LOGGER)
    await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    memory = stack.servers["memory"]
    port = memory.port
    await stack.stop_service("memory")
    for _ in range(CALLS):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
        assert error_info(caught.value).reason == "DOWNSTREAM_UNAVAILABLE"
    down = _lines(caplog, logging.WARNING)
    assert len(down) == 1, down
    assert "memory" in down[0] and "GENSEARCH_GATEWAY_MEMORY_ADDR" in down[0]
    assert not _lines(caplog, logging.INFO)

    assert stack.memory_settings is not None
    again = await build_memory(stack.memory_settings, port=port)
    stack.servers["memory"] = again  # stopped with the stack
    await again.start()
    for _ in range(100):  # the gateway's channel reconnects after its backoff
        try:
            await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.2)
    else:
        raise AssertionError("the gateway never reached memory again")
    await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    back = _lines(caplog, logging.INFO)
    assert back == ["the memory service answers again"], back
