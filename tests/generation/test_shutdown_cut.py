"""A call still running as its server's grace period ends gets UNAVAILABLE /
SHUTTING_DOWN from the chassis, with ErrorInfo, not gRPC core's bare "Cancelling all
calls" (services/common/shutdown_cut.py). A real generation server behind a loopback fake
LLM that holds its answer back; real gRPC clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from google.protobuf import struct_pb2

from tests.generation.conftest import Service, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info, failure_of, stopped_mid_stream

# The grace period the server stops with: its calls are cut a tenth of it (shutdown_cut.
# margin) before gRPC cancels what is left. 1 s left 0.1 s for a cut status to leave, and
# gRPC's cancel (its own thread, not the event loop) won on a loaded CI: the call failed
# without SHUTTING_DOWN. 5 s leaves half a second.
GRACE = 5.0


async def _cut(
    service: Service, fake: FakeOpenAI, request: pb.GenerateRequest, requests: int
) -> grpc.aio.AioRpcError:
    """A Generate of ``request`` cut by the server's stop once the fake LLM has had
    ``requests`` requests (the last held): its failure, the stop ended."""
    call = service.stub.Generate(request)
    await fake.wait_for_requests(requests)
    stopping = asyncio.create_task(service.server.stop(GRACE))
    err = await failure_of(call)
    await stopping
    return err


async def test_a_generate_call_running_at_the_end_of_the_grace_period_is_shutting_down(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.hang())
    err = await _cut(service, fake, pb.GenerateRequest(messages=[user("x")]), requests=1)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.domain == "gensearch"
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_GRACE_PERIOD"
    assert info.metadata["grace_period_seconds"] == "5"
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


def _schema() -> pb.ResponseFormat:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]})
    return pb.ResponseFormat(json_schema=schema)


async def _cut_schema_stream(
    service: Service, at: Callable[[pb.StreamGenerateResponse], bool]
) -> tuple[list[pb.StreamGenerateResponse], grpc.aio.AioRpcError]:
    """A StreamGenerate asking for JSON of ``_schema()``, cut by the server's stop at the
    first message ``at`` accepts: the messages read, and its failure."""
    request = pb.StreamGenerateRequest(messages=[user("x")], response_format=_schema())
    return await stopped_mid_stream(
        service.stub.StreamGenerate(request), lambda: service.server.stop(GRACE), at=at
    )


def _upstream_calls_of_the_cut(err: grpc.aio.AioRpcError) -> str:
    """The LLM requests a cut call's SHUTTING_DOWN status says it made."""
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    return info.metadata["upstream_calls"]


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_a_cut_call_says_how_many_llm_requests_it_made(
    service: Service, fake: FakeOpenAI, streaming: bool
) -> None:
    """The requests made before the cut are on its status (``upstream_calls``), as on any
    failed call's, so the gateway charges them to the tenant's quota: the answer (not
    valid for the schema) came, the corrective retry was on its way as the server
    stopped. Before, the cut's status had no count and the request went uncounted. A
    stream the same, cut once it said it restarts."""
    fake.enqueue(Behaviour.ok(text="not json"), Behaviour.hang())
    if streaming:
        messages, err = await _cut_schema_stream(service, at=lambda m: m.restart)
        assert messages[-1].restart
    else:
        request = pb.GenerateRequest(messages=[user("x")], response_format=_schema())
        err = await _cut(service, fake, request, requests=2)
    assert _upstream_calls_of_the_cut(err) == "1"


async def test_a_stream_cut_while_its_answer_streams_counts_that_request(
    service: Service, fake: FakeOpenAI
) -> None:
    """The stream's answer was invalid, and its corrective retry was streaming (its first
    delta had come, the next was slow) as the server stopped: that request surely reached
    the provider, so the cut's ``upstream_calls`` counts it with the first. Before, a
    stream's request was counted only at its final chunk, and the cut said 1."""
    fake.enqueue(Behaviour.ok(text="not json"), Behaviour.ok(text="a b c d", chunk_delay=30))
    restarted = False

    def retry_streaming(message: pb.StreamGenerateResponse) -> bool:
        nonlocal restarted
        restarted = restarted or message.restart
        return restarted and bool(message.delta)

    messages, err = await _cut_schema_stream(service, at=retry_streaming)
    assert any(m.restart for m in messages) and messages[-1].delta
    assert _upstream_calls_of_the_cut(err) == "2"


async def test_a_stream_cut_while_a_message_is_written_counts_its_llm_requests(
    service: Service, fake: FakeOpenAI
) -> None:
    """The cut lands while the stream's message is being written (the client reads
    nothing, so the large first delta waits on flow control): the call is in no step, and
    the next step is refused SHUTTING_DOWN at its start. That status carries the LLM
    request under way (its text had begun to come) as a cut inside a step does. Before,
    it had no ``upstream_calls``, and the gateway charged only the request it admitted."""
    big = "x" * 3_000_000
    fake.enqueue(Behaviour.ok(text=f"{big} b", chunk_delay=3600))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]))
    await fake.wait_for_requests(1)
    draining = service.server.draining
    for _ in range(3000):  # the step ends as the delta goes out, into the held write
        if not draining.running:
            break
        await asyncio.sleep(0.01)
    assert draining.end_calls() == 0  # the cut, between steps: no step to cancel
    messages = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for message in call:
            messages.append(message)
    assert len(messages) == 1 and messages[0].delta.startswith("x")
    info = error_info(raised.value)
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["sent_count"] == "1"
    assert info.metadata["upstream_calls"] == "1"
