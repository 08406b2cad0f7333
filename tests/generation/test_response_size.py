"""An upstream answer's body is read at most GENSEARCH_GENERATION_MAX_RESPONSE_BYTES bytes,
decoded: a huge JSON body, a gzip bomb, an endless event-stream line are each that hit's
BAD_UPSTREAM_RESPONSE, never read whole (real HTTP to the scripted fake server)."""

from __future__ import annotations

import gzip
import json
import zlib

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

LIMIT = 64 * 1024
JSON = {"Content-Type": "application/json"}


def completion(text: str) -> dict[str, object]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


def bomb(inflated: int) -> bytes:
    """A valid JSON answer of ``inflated`` bytes (spaces before its last brace), gzipped:
    about a thousandth of that on the wire."""
    body = json.dumps(completion("ok")).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(body[:-1])]
    spaces = b" " * (1 << 20)
    parts += [packer.compress(spaces) for _ in range(inflated >> 20)]
    parts += [packer.compress(b"}"), packer.flush()]
    return b"".join(parts)


@pytest.fixture
async def service(fake: FakeOpenAI, start_service: StartService) -> Service:
    return await start_service([fake_provider(fake)], max_response_bytes=LIMIT)


def ask() -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[user("hi")])


async def failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                pass
        else:
            await call  # type: ignore[misc]
    return caught.value


async def test_a_json_body_past_the_limit_is_a_bad_response_not_retried(
    service: Service, fake: FakeOpenAI
) -> None:
    # Before: read whole by the SDK (a 1.5 GB body took 4.5 GB of memory, then INTERNAL).
    fake.enqueue(Behaviour.error(200, json.dumps(completion("x" * (4 * LIMIT))), JSON))
    err = await failure(service.stub.Generate(ask(), timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "BAD_UPSTREAM_RESPONSE"
    assert f"larger than {LIMIT} bytes" in (err.details() or "")
    assert "GENSEARCH_GENERATION_MAX_RESPONSE_BYTES" in (err.details() or "")
    assert len(fake.chat_requests) == 1


async def test_a_gzip_bomb_is_refused_before_it_inflates(
    service: Service, fake: FakeOpenAI
) -> None:
    # 64 MiB once inflated, 64 KB on the wire: httpx inflated it whole.
    headers = {**JSON, "Content-Encoding": "gzip"}
    fake.enqueue(Behaviour.error(200, bomb(64 << 20), headers))
    err = await failure(service.stub.Generate(ask(), timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "BAD_UPSTREAM_RESPONSE"
    assert f"larger than {LIMIT} bytes" in (err.details() or "")


async def test_a_gzip_answer_within_the_limit_is_read(service: Service, fake: FakeOpenAI) -> None:
    body = gzip.compress(json.dumps(completion("small and compressed")).encode())
    fake.enqueue(Behaviour.error(200, body, {**JSON, "Content-Encoding": "gzip"}))
    reply = await service.stub.Generate(ask(), timeout=10)
    assert reply.text == "small and compressed"
    # Only codings it can bound are asked for.
    assert fake.chat_requests[-1].headers["Accept-Encoding"] == "gzip, deflate"


async def test_a_coding_not_asked_for_is_a_bad_response(service: Service, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.error(200, b"\x00" * 100, {**JSON, "Content-Encoding": "br"}))
    err = await failure(service.stub.Generate(ask(), timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "BAD_UPSTREAM_RESPONSE"


async def test_an_event_stream_line_past_the_limit_is_a_bad_response(
    service: Service, fake: FakeOpenAI
) -> None:
    # The SDK's SSE decoder kept a line whole until its newline: 400 MB of one line held
    # 400 MB of memory.
    stream = "data: " + "x" * (4 * LIMIT) + "\n\ndata: [DONE]\n\n"
    fake.enqueue(Behaviour.error(200, stream, {"Content-Type": "text/event-stream"}))
    err = await failure(
        service.stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]), timeout=10)
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "BAD_UPSTREAM_RESPONSE"
    assert "a line of the event stream is larger" in (err.details() or "")


async def test_a_long_stream_of_short_lines_is_not_bounded_as_a_whole(
    service: Service, fake: FakeOpenAI
) -> None:
    # Only each line is: an answer of many chunks may be far larger than the limit.
    fake.reply = " ".join(["word"] * 20_000)  # ~100 bytes of SSE per word: ~2 MB in all
    chunks = [
        chunk.delta
        async for chunk in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("x")]), timeout=30
        )
    ]
    assert "".join(chunks) == fake.reply
