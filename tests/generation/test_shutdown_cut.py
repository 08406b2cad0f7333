"""A call still running as its server's grace period ends gets UNAVAILABLE /
SHUTTING_DOWN from the chassis, with ErrorInfo, not gRPC core's bare "Cancelling all
calls" (services/common/shutdown_cut.py). A real generation server behind a loopback fake
LLM that holds its answer back; real gRPC clients."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info, failure_of, stopped_mid_stream

GRACE = 1.0


async def test_a_generate_call_running_at_the_end_of_the_grace_period_is_shutting_down(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.hang())
    call = service.stub.Generate(pb.GenerateRequest(messages=[user("x")]))
    await fake.wait_for_requests(1)
    stopping = asyncio.create_task(service.server.stop(GRACE))
    err = await failure_of(call)
    await stopping
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.domain == "gensearch"
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_GRACE_PERIOD"
    assert info.metadata["grace_period_seconds"] == "1"
    assert "sent_count" not in info.metadata
    assert "shutting down" in (err.details() or "")
    assert "retried" in (err.details() or "")


async def test_a_stream_running_at_the_end_of_the_grace_period_says_what_it_sent(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = "a b c d e f g h"
    # The first chunk at once, the next an hour later.
    fake.enqueue(Behaviour.slow_stream(chunk_delay=3600))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]))
    messages, err = await stopped_mid_stream(call, lambda: service.server.stop(GRACE))
    assert [m.delta for m in messages] == ["a"]
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["sent_count"] == "1"
    assert "after 1 messages of its stream were sent" in (err.details() or "")


async def test_calls_that_finish_within_the_grace_period_are_answered(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.ok("done", latency=0.2))
    call = service.stub.Generate(pb.GenerateRequest(messages=[user("x")]))
    await fake.wait_for_requests(1)
    stopping = asyncio.create_task(service.server.stop(30))
    reply = await call
    await stopping
    assert reply.text == "done"
