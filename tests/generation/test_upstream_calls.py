"""Every request sent upstream for one answer is counted and reported (issue 13, the
per-tenant LLM quota): the attempts of each fallback pair, retries included, and the
corrective retry of a JSON schema, on the reply, on a stream's last message, and on the
error of an answer that failed (ErrorInfo metadata ``upstream_calls``). The count is
checked against the requests the loopback fakes received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from google.protobuf import json_format, struct_pb2

from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}},
    "required": ["title"],
}
CHAIN = [pb.ModelChoice(provider="backup")]


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def _schema() -> pb.ResponseFormat:
    schema = struct_pb2.Struct()
    schema.update(SCHEMA)
    return pb.ResponseFormat(json_schema=schema)


def _received(*fakes: FakeOpenAI) -> int:
    return sum(len(f.chat_requests) for f in fakes)


async def _service(fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService) -> Any:
    providers = [fake_provider(fake), fake_provider(fake2, name="backup", default_model="b")]
    # Two attempts for the last pair (a 5xx retried once); the primary, with a next pair,
    # moves on at its first 5xx.
    return await start_service(providers, retry_max_attempts=2)


async def test_a_fallback_and_a_corrective_retry_are_all_counted(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await _service(fake, fake2, start_service)
    fake.by_model["fake-model"] = Behaviour.error(503)
    fake2.enqueue(
        Behaviour.error(502),
        Behaviour.ok(text='{"title": 7}'),
        Behaviour.ok(text='{"title": "Dune"}'),
    )
    reply = await svc.stub.Generate(
        pb.GenerateRequest(
            messages=[user("hi")], fallback=CHAIN, response_format=_schema(), debug=True
        ),
        timeout=10,
    )
    assert json_format.MessageToDict(reply.structured) == {"title": "Dune"}
    assert (reply.provider, reply.fallback_index, reply.corrected) == ("backup", 1, True)
    # The primary's one attempt; the backup's 502, its retry's answer and the correction.
    assert (len(fake.chat_requests), len(fake2.chat_requests)) == (1, 3)
    assert reply.upstream_calls == _received(fake, fake2) == 4
    # `attempts` is the answering pair's alone (its two and the correction); the
    # deprecated Debug.attempts repeats it.
    assert reply.attempts == reply.debug.attempts == 3


async def test_a_plain_answer_is_one_call(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await _service(fake, fake2, start_service)
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], fallback=CHAIN), timeout=10
    )
    assert reply.upstream_calls == _received(fake, fake2) == 1


async def test_a_stream_counts_on_its_last_message(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await _service(fake, fake2, start_service)
    fake.by_model["fake-model"] = Behaviour.error(502)
    fake2.enqueue(
        Behaviour.error(503),
        Behaviour.ok(text="not json"),
        Behaviour.ok(text='{"title": "Emma"}'),
    )
    events = [
        e
        async for e in svc.stub.StreamGenerate(
            pb.StreamGenerateRequest(
                messages=[user("hi")], fallback=CHAIN, response_format=_schema()
            ),
            timeout=10,
        )
    ]
    assert any(e.restart for e in events)
    assert [e.upstream_calls for e in events[:-1]] == [0] * (len(events) - 1)
    assert events[-1].upstream_calls == _received(fake, fake2) == 4


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_failed_answer_says_what_it_spent(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService, streamed: bool
) -> None:
    svc = await _service(fake, fake2, start_service)
    fake.by_model["fake-model"] = Behaviour.error(503)
    fake2.reply = "never JSON"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streamed:
            request = pb.StreamGenerateRequest(
                messages=[user("hi")], fallback=CHAIN, response_format=_schema()
            )
            async for _ in svc.stub.StreamGenerate(request, timeout=10):
                pass
        else:
            await svc.stub.Generate(
                pb.GenerateRequest(
                    messages=[user("hi")], fallback=CHAIN, response_format=_schema()
                ),
                timeout=10,
            )
    info = error_info(caught.value)
    assert info.reason == "INVALID_OUTPUT"
    # The primary's one attempt, the backup's answer and its corrective retry.
    assert info.metadata["upstream_calls"] == str(_received(fake, fake2)) == "3"
    # Like any failed call, the answering pair's attempts (its answer and the corrective
    # retry) and its wait, which the gateway reports on the failed hit.
    assert info.metadata["attempts"] == "2"
    assert int(info.metadata["wait_ms"]) >= 0


async def test_every_pair_failing_counts_every_attempt(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await _service(fake, fake2, start_service)
    fake.by_model["fake-model"] = Behaviour.error(503)
    fake2.by_model["b"] = Behaviour.error(500)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], fallback=CHAIN), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # The primary once (a next pair exists), the last pair with its retry.
    assert error_info(caught.value).metadata["upstream_calls"] == "3"
    assert (len(fake.chat_requests), len(fake2.chat_requests)) == (1, 2)
