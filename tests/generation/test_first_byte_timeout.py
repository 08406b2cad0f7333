"""A hanging upstream call gives its concurrency slot back (issue 12).

Reproduced before: on the local provider (4 slots), 4 hanging hits held every slot for the
whole deadline, and 8 of 21 healthy hits behind them timed out. A provider's
``first_byte_timeout`` now bounds how long an attempt holding a slot may wait for the
upstream's first byte; then the slot is freed and the attempt fails (retryable).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import openai
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.upstream_retry import Deadline, RetryPolicy
from services.generation.providers.openai_compatible import OpenAICompatibleProvider
from tests.generation.conftest import StartService, fake_provider, unreached_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

SLOTS = 2


def ask(text: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[user(text)])


async def _stream(stub: object, text: str, timeout: float) -> str:
    call = stub.StreamGenerate(  # type: ignore[attr-defined]
        pb.StreamGenerateRequest(messages=[user(text)]), timeout=timeout
    )
    return "".join([chunk.delta async for chunk in call])


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_hanging_calls_free_their_slots(
    fake: FakeOpenAI, start_service: StartService, streaming: bool
) -> None:
    svc = await start_service(
        [fake_provider(fake, max_concurrency=SLOTS, first_byte_timeout=2)],
        retry_max_attempts=1,
    )
    fake.enqueue(*[Behaviour.hang(60)] * SLOTS)
    hanging = [
        asyncio.ensure_future(svc.stub.Generate(ask(f"hang {i}"), timeout=20)) for i in range(SLOTS)
    ]
    await fake.wait_for_requests(SLOTS)
    started = time.perf_counter()
    if streaming:
        healthy = await asyncio.gather(*[_stream(svc.stub, f"ok {i}", 15) for i in range(8)])
        assert healthy == [f"ok {i}" for i in range(8)]
    else:
        replies = await asyncio.gather(
            *[svc.stub.Generate(ask(f"ok {i}"), timeout=15) for i in range(8)]
        )
        assert [r.text for r in replies] == [f"ok {i}" for i in range(8)]
    # The healthy calls waited for the first-byte timeout (2 s), not the hanging calls'
    # 20 s deadline (before: every healthy call timed out after its own 15 s). The timeout
    # was 0.5 s: on a loaded machine a healthy call's own first byte could take longer, and
    # that call failed with UPSTREAM_FIRST_BYTE_TIMEOUT too.
    assert time.perf_counter() - started < 10
    for call in hanging:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_info(caught.value).reason == "UPSTREAM_FIRST_BYTE_TIMEOUT"
        # Not 'sent nothing': a unary answer may have begun, and is timed as a whole.
        assert "did not answer within its first-byte timeout" in caught.value.details()


async def test_a_hanging_first_chunk_is_retried_within_the_deadline(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    # 1 s, not 0.3 s: the second attempt's first byte comes well within it on a loaded
    # machine too (else it was cut and retried as well: three requests, not two).
    svc = await start_service([fake_provider(fake, first_byte_timeout=1)])
    fake.enqueue(Behaviour.hang(60))
    assert await _stream(svc.stub, "second try", 10) == "second try"
    assert len(fake.chat_requests) == 2


async def test_slow_but_steady_streams_are_not_cut(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    # Only the wait for the first byte is bounded: a long stream that started keeps going.
    svc = await start_service([fake_provider(fake, first_byte_timeout=0.3)])
    fake.enqueue(Behaviour.slow_stream(0.2))
    assert await _stream(svc.stub, "one two three four", 10) == "one two three four"


async def test_the_first_byte_timeout_is_named_in_full() -> None:
    """The fault says the timeout as every bound in seconds is said (``seconds_text``);
    with ``:g`` a 1234.5678 s timeout read "1234.57", less than it is."""
    config = unreached_provider(first_byte_timeout=1234.5678)
    client = openai.AsyncOpenAI(base_url=config.base_url, api_key="unused")
    provider = OpenAICompatibleProvider(config, client=client, retry=RetryPolicy())
    deadline = Deadline(2000)
    fault = provider._timeout(provider._first_byte_at(deadline), deadline)
    assert fault.kind == "first_byte_timeout"
    assert fault.detail == "no answer began within 1234.5678 s"
    await client.close()
