"""Calls through the gateway while a service stops: a call still running as the
generation service's grace period ends, or the gateway's own, gets UNAVAILABLE /
SHUTTING_DOWN with ErrorInfo (retryable), not gRPC core's bare "Cancelling all calls"
(services/common/shutdown_cut.py). The whole stack on loopback, a fake LLM that holds its
answer back."""

from __future__ import annotations

import asyncio

import grpc

from tests.gateway.conftest import ALICE, Stack, books_ask, books_stream_ask, create_books
from tests.support.fake_openai import Behaviour
from tests.support.rpc import error_info, failure_of, stopped_mid_stream

GRACE = 1.0


async def test_an_ask_whose_generation_service_stops_is_unavailable_shutting_down(
    stack: Stack,
) -> None:
    await create_books(stack)
    stack.fake.enqueue(Behaviour.hang())
    call = stack.stub.Ask(books_ask(), metadata=ALICE, timeout=60)
    await stack.fake.wait_for_requests(1, timeout=30)
    stopping = asyncio.create_task(stack.servers["generation"].stop(GRACE))
    err = await failure_of(call)
    await stopping
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_GRACE_PERIOD"
    assert "shutting down" in (err.details() or "")


async def test_a_stream_ask_on_a_stopping_gateway_says_what_it_sent(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = "sand dunes everywhere"
    # The first chunk at once, the next an hour later.
    stack.fake.enqueue(Behaviour.slow_stream(chunk_delay=3600))
    call = stack.stub.StreamAsk(books_stream_ask(), metadata=ALICE, timeout=60)
    events, err = await stopped_mid_stream(
        call, lambda: stack.gateway.stop(GRACE), at=lambda event: event.HasField("delta")
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_GRACE_PERIOD"
    assert info.metadata["sent_count"] == str(len(events))
