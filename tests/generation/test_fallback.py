"""Fallback chains on the generation service alone, against loopback fakes: a pair that
fails with a 5xx, a timeout or exhausted retries gives way to the next, and the answer
names the pair that answered; a 4xx does not fall back. With a next pair, a 5xx, a
timeout or a reset moves on at once, unretried; the last pair keeps its retries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from prometheus_client import REGISTRY

from tests.generation.conftest import StartService, answer, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def providers(fake: FakeOpenAI, fake2: FakeOpenAI) -> list[dict[str, object]]:
    return [fake_provider(fake), fake_provider(fake2, name="backup", default_model="b-model")]


def models_called(fake: FakeOpenAI) -> list[str]:
    return [r.json["model"] for r in fake.chat_requests]


async def test_a_5xx_falls_back_to_the_next_pair_which_is_named(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service(providers(fake, fake2), retry_max_attempts=2)
    fake.by_model["primary"] = Behaviour.error(503)
    fake.by_model["also-down"] = Behaviour.error(500)
    fake2.reply = "from the backup"
    reply = await svc.stub.Generate(
        pb.GenerateRequest(
            messages=[user("hi")],
            model="primary",
            fallback=[
                pb.ModelChoice(provider="fake", model="also-down"),
                pb.ModelChoice(provider="backup"),
            ],
        ),
        timeout=10,
    )
    assert reply.text == "from the backup"
    assert (reply.provider, reply.model, reply.fallback_index) == ("backup", "b-model", 2)
    # Each failing pair with a next one was called once (a 5xx moves on at once), then
    # the next pair in turn.
    assert models_called(fake) == ["primary", "also-down"]
    assert models_called(fake2) == ["b-model"]
    assert (reply.attempts, reply.upstream_calls) == (1, 3)


# What the next pair takes over at once (issue 13: "a hit ... that gets a 5xx or a
# timeout moves to the next"), each once: a retry on the primary would be answered.
AT_ONCE: dict[str, tuple[Callable[[], Behaviour], dict[str, Any], str]] = {
    "500": (lambda: Behaviour.error(500), {}, "UNAVAILABLE"),
    "first-byte-timeout": (
        lambda: Behaviour.hang(30),
        {"first_byte_timeout": 0.5},
        "DEADLINE_EXCEEDED",
    ),
    "reset": (Behaviour.reset, {}, "UNAVAILABLE"),
}


def _fallbacks_counted(status: str) -> float:
    labels = {"provider": "fake", "status": status}
    return REGISTRY.get_sample_value("gensearch_llm_fallbacks_total", labels) or 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("fault", AT_ONCE)
async def test_a_5xx_timeout_or_reset_moves_to_the_next_pair_without_a_retry(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService, fault: str, stream: bool
) -> None:
    behaviour, fields, status = AT_ONCE[fault]
    svc = await start_service(
        [
            fake_provider(fake, **fields),
            fake_provider(fake2, name="backup", default_model="b-model"),
        ]
    )
    fake.enqueue_for_model("fake-model", behaviour())
    fake2.reply = "from the backup"
    counted = _fallbacks_counted(status)
    text, reply = await answer(
        svc, stream, messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]
    )
    assert text == "from the backup"
    assert (reply.provider, reply.model, reply.fallback_index) == ("backup", "b-model", 1)
    # Called once, not retried (RETRY_MAX_ATTEMPTS is 4 here).
    assert models_called(fake) == ["fake-model"]
    assert models_called(fake2) == ["b-model"]
    # attempts: the answering pair's; upstream_calls: every pair's.
    assert (reply.attempts, reply.upstream_calls) == (1, 2)
    assert _fallbacks_counted(status) == counted + 1


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_the_last_pair_of_a_chain_keeps_its_retries(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService, stream: bool
) -> None:
    svc = await start_service(providers(fake, fake2))
    fake.enqueue_for_model("fake-model", Behaviour.error(500))
    fake2.enqueue_for_model("b-model", Behaviour.error(502))
    fake2.reply = "from the backup"
    text, reply = await answer(
        svc, stream, messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]
    )
    assert text == "from the backup"
    assert (reply.provider, reply.fallback_index) == ("backup", 1)
    assert models_called(fake) == ["fake-model"]
    assert models_called(fake2) == ["b-model", "b-model"]
    assert (reply.attempts, reply.upstream_calls) == (2, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_without_a_chain_a_5xx_is_retried_on_the_same_provider(
    fake: FakeOpenAI, start_service: StartService, stream: bool
) -> None:
    svc = await start_service([fake_provider(fake)])
    fake.enqueue(Behaviour.error(500))
    fake.reply = "after a retry"
    text, reply = await answer(svc, stream, messages=[user("hi")])
    assert text == "after a retry"
    assert (reply.provider, reply.fallback_index) == ("fake", 0)
    assert models_called(fake) == ["fake-model", "fake-model"]
    assert (reply.attempts, reply.upstream_calls) == (2, 2)


async def test_exhausted_429_retries_fall_back(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service(
        providers(fake, fake2),
        retry_max_attempts=2,
        retry_base_backoff=0.25,
        retry_max_backoff=1.0,
    )
    fake.by_model["fake-model"] = Behaviour.rate_limited(retry_after="0")
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]),
        timeout=4,
    )
    assert reply.provider == "backup" and reply.fallback_index == 1
    # A 429 is retried while the primary's share of the deadline lasts (never fewer than
    # retry_max_attempts), each wait at least the backoff: the primary is not hammered.
    assert 2 <= len(models_called(fake)) <= 30


async def test_a_timeout_falls_back_within_the_same_deadline(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    # Half of the time left goes to the primary: its hang still leaves time for the backup.
    svc = await start_service(providers(fake, fake2), fallback_time_share=0.5)
    fake.by_model["fake-model"] = Behaviour.hang(60)
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]),
        timeout=4,
    )
    assert reply.provider == "backup"
    assert fake.chat_requests and fake2.chat_requests


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_do_not_fall_back(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService, status: int
) -> None:
    svc = await start_service(providers(fake, fake2))
    fake.by_model["fake-model"] = Behaviour.error(status)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]),
            timeout=5,
        )
    assert caught.value.code() not in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert fake2.chat_requests == []


async def test_the_last_pairs_error_is_returned_when_all_fail(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service(providers(fake, fake2), retry_max_attempts=1)
    fake.by_model["fake-model"] = Behaviour.error(503)
    fake2.by_model["b-model"] = Behaviour.error(502)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).metadata["provider"] == "backup"
    # Nothing was skipped: the error names no skipped pair (skipped_fallbacks).
    assert "skipped_fallbacks" not in error_info(caught.value).metadata


async def test_stream_falls_back_before_the_first_token(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service(providers(fake, fake2), retry_max_attempts=1)
    fake.by_model["fake-model"] = Behaviour.error(503)
    fake2.reply = "streamed from the backup"
    events = [
        e
        async for e in svc.stub.StreamGenerate(
            pb.StreamGenerateRequest(
                messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]
            ),
            timeout=5,
        )
    ]
    assert "".join(e.delta for e in events) == "streamed from the backup"
    final = events[-1]
    assert (final.provider, final.model, final.fallback_index) == ("backup", "b-model", 1)


async def test_stream_does_not_fall_back_after_a_token_was_sent(
    fake: FakeOpenAI, fake2: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service(providers(fake, fake2), retry_max_attempts=1)
    fake.reply = "one two three four five"
    fake.by_model["fake-model"] = Behaviour.cut_stream(after_chunks=2)
    deltas: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in svc.stub.StreamGenerate(
            pb.StreamGenerateRequest(
                messages=[user("hi")], fallback=[pb.ModelChoice(provider="backup")]
            ),
            timeout=5,
        ):
            deltas.append(event.delta)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "".join(deltas) == "one two"
    assert fake2.chat_requests == []


@pytest.mark.parametrize(
    ("fallback", "field"),
    [
        (
            [pb.ModelChoice(provider="backup"), pb.ModelChoice(provider="nope")],
            "fallback[1].provider",
        ),
        ([pb.ModelChoice(provider="")], "fallback[0].provider"),
        ([pb.ModelChoice(provider="anyscale", model="gpt-4")], "fallback[0].model"),
        ([pb.ModelChoice(provider="backup")] * 5, "fallback"),
    ],
)
async def test_bad_chains_are_refused_naming_the_field(
    fake: FakeOpenAI,
    fake2: FakeOpenAI,
    start_service: StartService,
    fallback: list[pb.ModelChoice],
    field: str,
) -> None:
    svc = await start_service(providers(fake, fake2), max_fallbacks=4)
    for call, message in (
        (svc.stub.Generate, pb.GenerateRequest),
        (svc.stub.StreamGenerate, pb.StreamGenerateRequest),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(message(messages=[user("hi")], fallback=fallback), timeout=5)
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).metadata["field"] == field
    assert fake.chat_requests == [] and fake2.chat_requests == []
