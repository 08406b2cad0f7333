"""Upstream faults become retries or clear statuses (real HTTP to a scripted fake server)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import FAKE_KEY_ENV, Service, StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info


def ask(text: str = "hi", **fields: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[user(text)], debug=True, **fields)  # type: ignore[arg-type]


async def collect(call: grpc.aio.UnaryStreamCall) -> list[pb.StreamGenerateResponse]:  # type: ignore[type-arg]
    return [chunk async for chunk in call]


async def test_429_with_retry_after_then_success(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.rate_limited(retry_after="1"))
    started = time.perf_counter()
    reply = await service.stub.Generate(ask(), timeout=10)
    elapsed = time.perf_counter() - started
    assert reply.text == "hi"
    assert reply.attempts == 2
    assert elapsed >= 0.95  # the server asked for one second, and got it
    gap = fake.chat_requests[1].received_at - fake.chat_requests[0].received_at
    assert gap >= 0.95


async def test_retry_after_as_http_date(service: Service, fake: FakeOpenAI) -> None:
    when = time.time() + 2
    fake.enqueue(
        Behaviour.rate_limited(
            retry_after=time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))
        )
    )
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.attempts == 2
    gap = fake.chat_requests[1].received_at - fake.chat_requests[0].received_at
    assert gap >= 0.9  # HTTP-dates have one-second resolution


async def test_500_then_success(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.error(500), Behaviour.error(502), Behaviour.error(503))
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.text == "hi"
    assert reply.attempts == 4
    assert len(fake.chat_requests) == 4


async def test_always_500_is_unavailable_after_retries(service: Service, fake: FakeOpenAI) -> None:
    fake.fail_next(10, Behaviour.error(500))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info.reason == "UPSTREAM_UNAVAILABLE"
    assert info.metadata["provider"] == "fake"
    assert info.metadata["attempts"] == "4"
    assert "'fake'" in (caught.value.details() or "")
    assert len(fake.chat_requests) == service.settings.retry_max_attempts == 4


async def test_429s_are_retried_past_max_attempts_while_the_deadline_allows(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.fail_next(10, Behaviour.rate_limited(retry_after="0"))
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.text == "hi"
    assert reply.attempts == 11 > service.settings.retry_max_attempts
    assert len(fake.chat_requests) == 11


async def test_429s_leave_every_retry_to_the_5xx_after_them(
    service: Service, fake: FakeOpenAI
) -> None:
    # Five 429s, then three 5xx: RETRY_MAX_ATTEMPTS (4) bounds the 5xx alone. Before, the
    # 429s counted among the attempts, so the first 503 after them was final (UNAVAILABLE).
    fake.fail_next(5, Behaviour.rate_limited(retry_after="0"))
    fake.enqueue(Behaviour.error(500), Behaviour.error(502), Behaviour.error(503))
    reply = await service.stub.Generate(ask(), timeout=30)
    assert reply.text == "hi"
    assert reply.attempts == len(fake.chat_requests) == 9


async def test_always_429_is_resource_exhausted_when_the_deadline_comes(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.fail_next(1000, Behaviour.rate_limited(retry_after=None, retry_after_ms="200"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=3)  # room for a loaded machine's retries
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "UPSTREAM_RATE_LIMITED"
    assert int(info.metadata["attempts"]) == len(fake.chat_requests) > 1
    assert info.metadata["retry_after_ms"] == "200"


async def test_retry_after_beyond_the_deadline_is_not_waited_for(
    service: Service, fake: FakeOpenAI
) -> None:
    # Refused at once: long before the 20 s deadline (let alone the 60 s asked for). With
    # a 2 s deadline and 'under 1 s', a loaded machine had little room for one call.
    fake.enqueue(Behaviour.rate_limited(retry_after="60"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=20)
    # Refused before the deadline: waiting it out would be DEADLINE_EXCEEDED.
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(fake.chat_requests) == 1


async def test_connection_reset_then_success(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.reset())
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.text == "hi"
    assert reply.attempts == 2


async def test_always_reset_is_unavailable(service: Service, fake: FakeOpenAI) -> None:
    fake.fail_next(10, Behaviour.reset())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_CONNECTION_FAILED"
    assert len(fake.chat_requests) == 4
    # Said in words, not only by the transport's exception name.
    assert "closed the connection" in (caught.value.details() or "") or "reset" in (
        caught.value.details() or ""
    )


async def test_connection_refused_is_unavailable(start_service: StartService) -> None:
    async with FakeOpenAI() as gone:
        url = gone.base_url
    svc = await start_service(
        [{"name": "fake", "base_url": url, "default_model": "m", "max_concurrency": 2}]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_CONNECTION_FAILED"
    assert "the connection was refused" in (caught.value.details() or "")


async def test_a_host_that_does_not_resolve_is_said_so(start_service: StartService) -> None:
    # Before: "could not reach provider 'fake' after 4 attempts: gaierror".
    svc = await start_service(
        [{"name": "fake", "base_url": "http://no-such-host.invalid/v1", "default_model": "m"}]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_CONNECTION_FAILED"
    assert "its host name did not resolve (gaierror)" in (caught.value.details() or "")


async def test_malformed_json_is_bad_upstream_response(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.malformed())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"
    assert len(fake.chat_requests) == 1


async def test_json_without_choices_is_bad_upstream_response(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.error(200, {"id": "x", "object": "chat.completion"}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"


# JSON nested deeper than Python's parser recurses: 100 KB of "[" made the SDK's json.loads
# raise RecursionError, which failed the call with INTERNAL (unary and streamed alike).
DEEP_JSON = "[" * 100_000


async def test_deeply_nested_json_body_is_bad_upstream_response(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.error(200, DEEP_JSON, {"Content-Type": "application/json"}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"
    assert len(fake.chat_requests) == 1


async def test_deeply_nested_sse_event_is_bad_upstream_response(
    service: Service, fake: FakeOpenAI
) -> None:
    sse = f"data: {DEEP_JSON}\n\ndata: [DONE]\n\n"
    fake.enqueue(Behaviour.error(200, sse, {"Content-Type": "text/event-stream"}))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"


@pytest.mark.parametrize("content", [5, {"text": "hi"}, [{"type": "text", "text": "hi"}]])
async def test_a_stream_delta_that_is_not_text_is_bad_upstream_response(
    service: Service, fake: FakeOpenAI, content: object
) -> None:
    # The unary answer refused it ('the message content is not text'); the stream dropped
    # it and ended OK, with text missing.
    events = [
        {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    fake.enqueue(Behaviour.error(200, sse, {"Content-Type": "text/event-stream"}))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"
    assert "not text" in caught.value.details()


SSE = {"Content-Type": "text/event-stream"}


async def test_a_stream_event_without_choices_carries_nothing_and_is_passed_over(
    service: Service, fake: FakeOpenAI
) -> None:
    # A keep-alive or vendor event ('data: {}', a provider's own fields) has no choices:
    # nothing to absorb. It failed the whole stream BAD_UPSTREAM_RESPONSE, while an event
    # with an empty choices list was passed over.
    events = [
        {},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"id": "x", "object": "ping"},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    fake.enqueue(Behaviour.error(200, sse, SSE))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    chunks = await collect(call)
    assert "".join(c.delta for c in chunks) == "Hello"
    assert chunks[-1].finish_reason == "stop"
    # A stream of nothing else never finishes: a broken answer, tried again.
    before = len(fake.chat_requests)
    fake.enqueue(Behaviour.error(200, "data: {}\n\ndata: [DONE]\n\n", SSE))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    chunks = await collect(call)
    assert len(fake.chat_requests) == before + 2 and chunks[-1].finish_reason == "stop"


async def test_malformed_sse_is_bad_upstream_response(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "one two three"
    fake.enqueue(Behaviour.malformed())
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk.delta)
    assert received == ["one"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"


async def test_sse_cut_half_way_is_bad_upstream_response(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = "one two three four five"
    fake.enqueue(Behaviour.cut_stream(after_chunks=2))
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk.delta)
    assert received == ["one", " two"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"
    assert len(fake.chat_requests) == 1  # text already reached the caller: no retry


async def test_stream_retries_before_the_first_delta(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "ok then"
    fake.enqueue(Behaviour.error(503), Behaviour.cut_stream(after_chunks=0))
    chunks = await collect(
        service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("x")], debug=True), timeout=10
        )
    )
    assert "".join(c.delta for c in chunks) == "ok then"
    # Debug.attempts is deprecated but still filled: the same count as the reply's own.
    assert chunks[-1].attempts == chunks[-1].debug.attempts == 3


async def test_slow_upstream_short_deadline(service: Service, fake: FakeOpenAI) -> None:
    fake.latency = 60
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=0.5)
    # Ended at the deadline, not by the upstream's answer 60 s later: the call failed with
    # the upstream request unanswered.
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The service gave up too: the upstream request was dropped, not left running (within
    # 10 s, not 2 s: a loaded machine may be slow to it; the request would run 60 s).
    await asyncio.wait_for(fake.disconnected.wait(), 10)
    assert fake.concurrent == 0
    # Every request it sent was hung up on, none answered after its 60 s.
    assert fake.chat_requests and all(r.client_disconnected for r in fake.chat_requests)


async def test_server_side_timeout_is_deadline_exceeded(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    # No client deadline: the service's default timeout bounds the exchange by itself.
    svc = await start_service([fake_provider(fake)], default_timeout=0.3)
    fake.latency = 30
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(ask())
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(caught.value).reason == "UPSTREAM_TIMEOUT"


async def test_retries_stop_at_the_deadline(fake: FakeOpenAI, start_service: StartService) -> None:
    svc = await start_service(
        [fake_provider(fake)],
        retry_max_attempts=1000,
        retry_base_backoff=0.05,
        retry_max_backoff=0.05,
    )
    fake.fail_next(10_000, Behaviour.error(503))
    # 2 s: room for at least two attempts on a loaded machine (0.6 s was tight), and still
    # at most ~40 attempts of 50 ms backoff, far from the 1000 allowed.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(ask(), timeout=2)
    # No wall-clock bound: the client's own 2 s deadline ends the call whatever the service
    # does. What the service decides is how many attempts it made in that time.
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert 2 <= len(fake.chat_requests) < 100


async def test_slow_stream_short_deadline(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "a b c d e f g h"
    # The first chunk at once, the next 30 s later; a 3 s deadline (0.5 s left a loaded
    # machine too little time for the first chunk itself).
    fake.enqueue(Behaviour.slow_stream(chunk_delay=30))
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("x")]), timeout=3
        ):
            received.append(chunk.delta)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Cut at the deadline with one chunk, not after the next one 30 s later.
    assert received == ["a"]
    await asyncio.wait_for(fake.disconnected.wait(), 10)


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (401, grpc.StatusCode.UNAUTHENTICATED, "UPSTREAM_UNAUTHENTICATED"),
        (403, grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_PERMISSION_DENIED"),
        (400, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
        (404, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_NOT_FOUND"),
        (422, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
        # A redirect is not followed (nor retried), for the operator's own provider too:
        # the endpoint is misconfigured, not unavailable.
        (307, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REDIRECT"),
    ],
)
async def test_client_errors_are_not_retried(
    service: Service, fake: FakeOpenAI, status: int, code: grpc.StatusCode, reason: str
) -> None:
    # (The redirect names the fake itself, which would answer: before, the SDK followed it.)
    fake.enqueue(Behaviour.error(status, headers={"Location": fake.base_url + "/chat/completions"}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == code
    info = error_info(caught.value)
    assert info.reason == reason
    assert info.metadata["upstream_status"] == str(status)
    assert "'fake'" in (caught.value.details() or "")  # names the provider
    assert len(fake.chat_requests) == 1


async def test_upstream_400_message_is_passed_on(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(
        Behaviour.error(
            400,
            {
                "error": {
                    "message": "max_tokens is too large: 99999",
                    "type": "invalid_request_error",
                }
            },
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert "max_tokens is too large" in (caught.value.details() or "")


OPERATOR_KEY = "opkey-" + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


async def test_a_plain_text_400_quoting_the_key_shows_none_of_it(
    fake: FakeOpenAI, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain-text error body was cut to 300 characters before it was redacted: the
    operator's key quoted across that cut was not found whole, and the part before the cut
    (here 19 characters, less than half: not a recognisable piece either) went to the
    caller. Now the message is redacted before it is cut."""
    monkeypatch.setenv(FAKE_KEY_ENV, OPERATOR_KEY)
    svc = await start_service([fake_provider(fake)])
    fake.enqueue(Behaviour.error(400, "x" * 280 + " " + OPERATOR_KEY + " may not do that"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(ask(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert OPERATOR_KEY[:12] not in (caught.value.details() or "")


async def test_a_huge_upstream_message_is_quoted_from_its_start_only(
    service: Service, fake: FakeOpenAI
) -> None:
    """An upstream error message is read to quote from it within a window (redacting a
    16 MB one held the event loop for seconds); one whose window is mostly blanks, so that
    its cut end would be shown, is not quoted at all."""
    fake.enqueue(Behaviour.error(400, {"error": {"message": "too big: " + "y" * 2_000_000}}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    details = caught.value.details() or ""
    assert "too big: yyy" in details and details.endswith("…")
    fake.enqueue(Behaviour.error(400, {"error": {"message": " " * 9000 + "the end"}}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(ask(), timeout=10)
    assert "(a message of 9007 characters, not shown)" in (caught.value.details() or "")


async def test_401_on_a_stream(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.unauthorized())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(
            service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=5)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "fake" in (caught.value.details() or "")
    assert len(fake.chat_requests) == 1


async def test_per_provider_concurrency_limit(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service([fake_provider(fake, max_concurrency=3)])
    fake.latency = 0.1
    calls = [svc.stub.Generate(ask(f"q{i}"), timeout=10) for i in range(12)]
    streams = [
        collect(svc.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("s")]), timeout=10))
        for _ in range(4)
    ]
    await asyncio.gather(*calls, *streams)
    assert len(fake.chat_requests) == 16
    assert fake.max_concurrent == 3


async def test_stream_cancel_cancels_upstream(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = " ".join(f"w{i}" for i in range(100))
    fake.chunk_delay = 0.05
    call = service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=30)
    first = await call.read()
    assert first.delta == "w0"
    call.cancel()
    await asyncio.wait_for(fake.disconnected.wait(), 2)
    record = fake.chat_requests[-1]
    assert record.client_disconnected
    assert record.finished_at is not None
    assert record.finished_at - record.received_at < 2  # far less than 100 chunks x 50 ms
    assert fake.concurrent == 0


async def test_unary_cancel_cancels_upstream(service: Service, fake: FakeOpenAI) -> None:
    fake.latency = 30
    call = service.stub.Generate(ask(), timeout=30)
    await fake.wait_for_requests(1)
    call.cancel()
    await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert fake.concurrent == 0


async def test_service_recovers_after_faults(service: Service, fake: FakeOpenAI) -> None:
    fake.fail_next(10, Behaviour.error(500))
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.Generate(ask(), timeout=10)
    fake.clear_queue()
    reply = await service.stub.Generate(ask("back"), timeout=10)
    assert reply.text == "back"


@pytest.mark.parametrize("status", [408, 409, 501])
async def test_timeouts_conflicts_and_every_5xx_are_retried(
    service: Service, fake: FakeOpenAI, status: int
) -> None:
    fake.enqueue(Behaviour.error(status))
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.attempts == 2


async def test_retry_after_ms_is_honoured(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.error(503, headers={"retry-after-ms": "400"}))
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.attempts == 2
    gap = fake.chat_requests[1].received_at - fake.chat_requests[0].received_at
    assert gap >= 0.38  # the server's wait, not our 10-50 ms test backoff


async def test_a_stream_that_stalls_past_the_read_timeout_says_so(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    # The answer began, then the provider went silent for longer than READ_TIMEOUT. Before,
    # the caller was told the provider "sent a malformed response: the stream broke off
    # (SocketTimeoutError)", naming neither the stall nor the setting to raise.
    service = await start_service([fake_provider(fake)], read_timeout=1.0)
    fake.reply = "a b c d"
    fake.enqueue(Behaviour.slow_stream(chunk_delay=5))
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("x")]), timeout=30
        ):
            received.append(chunk.delta)
    err = caught.value
    assert received == ["a"]
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # as before: retried, falls back
    info = error_info(err)
    assert info.reason == "UPSTREAM_READ_TIMEOUT"
    assert info.metadata["provider"] == "fake"
    details = err.details() or ""
    assert "GENSEARCH_GENERATION_READ_TIMEOUT" in details
    assert "malformed" not in details
    assert len(fake.chat_requests) == 1  # text already reached the caller: no retry


def _sse_chunk(text: str | None = None, finish: str | None = None) -> str:
    delta = {} if text is None else {"content": text}
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("body", "deltas", "finish"),
    [
        # No [DONE] after the finish reason: the answer is whole.
        (_sse_chunk("a") + _sse_chunk(" b") + _sse_chunk(finish="stop"), ["a", " b"], "stop"),
        # Events after [DONE] are not read.
        (_sse_chunk("a") + _sse_chunk(finish="stop") + DONE + _sse_chunk(" late"), ["a"], "stop"),
        # Lines that are not `data:` events are passed over.
        (
            "garbage\n\n: comment\n\n" + _sse_chunk("a") + _sse_chunk(finish="stop") + DONE,
            ["a"],
            "stop",
        ),
        # One enormous chunk: cut at MAX_ANSWER_CHARS (1,000,000), finish_reason "length".
        (
            _sse_chunk("z" * 3_000_000) + _sse_chunk(finish="stop") + DONE,
            ["z" * 1_000_000],
            "length",
        ),
    ],
    ids=["no-done", "data-after-done", "not-data-lines", "enormous-chunk"],
)
async def test_stream_edge_cases_that_still_answer(
    service: Service, fake: FakeOpenAI, body: str, deltas: list[str], finish: str
) -> None:
    fake.enqueue(Behaviour.error(200, body, headers={"Content-Type": "text/event-stream"}))
    chunks = await collect(
        service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=30)
    )
    assert [c.delta for c in chunks if c.delta] == deltas
    assert chunks[-1].finish_reason == finish
    assert len(fake.chat_requests) == 1


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("{not json", "a stream event is not JSON"),
        ("[1, 2, 3]", "a stream event is not a JSON object"),
    ],
)
async def test_a_bad_stream_event_after_text_is_bad_upstream_response(
    service: Service, fake: FakeOpenAI, event: str, message: str
) -> None:
    body = _sse_chunk("a") + f"data: {event}\n\n" + _sse_chunk(" b") + _sse_chunk(finish="stop")
    fake.enqueue(Behaviour.error(200, body, headers={"Content-Type": "text/event-stream"}))
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("x")]), timeout=30
        ):
            received.append(chunk.delta)
    assert received == ["a"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "BAD_UPSTREAM_RESPONSE"
    assert message in (caught.value.details() or "")
    assert len(fake.chat_requests) == 1
