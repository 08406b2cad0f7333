"""An upstream answer longer than GENSEARCH_GENERATION_MAX_ANSWER_CHARS is cut there, as
max_tokens would cut it (real gRPC, a loopback fake provider that ignores max_tokens).

Before the cap a provider streaming without end was bounded only by the deadline, and a
100 MB answer held ~3 GB of the service's memory before gRPC refused to send it with a
bare RESOURCE_EXHAUSTED (no ErrorInfo)."""

from __future__ import annotations

import asyncio

from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import FakeOpenAI

LIMIT = 50
LONG = " ".join(f"w{i:03d}" for i in range(2000))  # 9,999 characters, 2,000 chunks


async def test_stream_is_cut_at_the_cap_and_upstream_closed(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    fake.reply = LONG
    fake.chunk_delay = 0.005  # ~10 s of stream unless it is closed early
    service = await start_service([fake_provider(fake)], max_answer_chars=LIMIT)
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("go on forever")]), timeout=30
        )
    ]
    text = "".join(c.delta for c in chunks)
    assert text == LONG[:LIMIT]
    assert chunks[-1].finish_reason == "length"
    # The upstream request was closed rather than read to its end.
    await asyncio.wait_for(fake.disconnected.wait(), 5)


async def test_unary_answer_is_cut_at_the_cap(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    fake.reply = LONG
    service = await start_service([fake_provider(fake)], max_answer_chars=LIMIT)
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=30)
    assert reply.text == LONG[:LIMIT]
    assert reply.finish_reason == "length"


async def test_an_answer_within_the_cap_is_untouched(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    fake.reply = LONG[:LIMIT]
    service = await start_service([fake_provider(fake)], max_answer_chars=LIMIT)
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=30
        )
    ]
    assert "".join(c.delta for c in chunks) == LONG[:LIMIT]
    assert chunks[-1].finish_reason == "stop"
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=30)
    assert (reply.text, reply.finish_reason) == (LONG[:LIMIT], "stop")
