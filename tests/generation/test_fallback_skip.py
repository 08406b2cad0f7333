"""A fallback pair whose limits cannot hold a call is skipped, not a reason to refuse the
call: the prompt is never sent to it, and a call that falls back goes to the next pair
that can hold it. The call is refused up front only when no pair of the chain (the
primary included) can, with the primary's refusal, as before. Before, one pair with a
small context window refused the whole call, even when the primary could answer it."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from tests.generation.conftest import Service, StartService, answer, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.fallback_fakes import big_fake_fixture, small_fake_fixture  # noqa: F401
from tests.support.rpc import error_info

# ~500 tokens by the shared estimate: past a window of 100 (with its 1.25 slack), well
# within one of 4096.
LONG = "w" * 2000


def _providers(
    fake: FakeOpenAI, small: FakeOpenAI, big: FakeOpenAI, primary_window: int = 4096
) -> list[dict[str, object]]:
    return [
        fake_provider(fake, context_window=primary_window),
        fake_provider(small, name="small", default_model="s-model", context_window=100),
        fake_provider(big, name="big", default_model="b-model", context_window=4096),
    ]


CHAIN = [pb.ModelChoice(provider="small"), pb.ModelChoice(provider="big")]


@pytest.fixture
async def small_primary(
    fake: FakeOpenAI, small: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> Service:
    """The service whose primary, like "small", has a window of 100 tokens: too small
    for ``LONG``."""
    return await start_service(_providers(fake, small, big, primary_window=100))


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_failing_primary_falls_back_past_a_pair_too_small_for_the_prompt(
    fake: FakeOpenAI,
    small: FakeOpenAI,
    big: FakeOpenAI,
    start_service: StartService,
    stream: bool,
) -> None:
    """Failed before: INVALID_ARGUMENT / CONTEXT_WINDOW_EXCEEDED for the whole call."""
    svc = await start_service(_providers(fake, small, big))
    fake.enqueue_for_model("fake-model", Behaviour.error(503))
    big.reply = "from the big one"
    text, reply = await answer(svc, stream, messages=[user(LONG)], fallback=CHAIN)
    assert text == "from the big one"
    assert (reply.provider, reply.model, reply.fallback_index) == ("big", "b-model", 2)
    assert small.chat_requests == []
    # The skipped pair sent nothing: the primary's failed request and the answer.
    assert (reply.attempts, reply.upstream_calls) == (1, 2)


async def test_a_pair_too_small_for_max_tokens_is_skipped(
    fake: FakeOpenAI, small: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> None:
    """max_tokens past a fallback pair's window (not the primary's): that pair is skipped.
    Failed before: INVALID_ARGUMENT naming max_tokens, metadata provider ``small``."""
    svc = await start_service(_providers(fake, small, big))
    fake.enqueue_for_model("fake-model", Behaviour.error(500))
    big.reply = "from the big one"
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], max_tokens=1000, fallback=CHAIN), timeout=10
    )
    assert (reply.text, reply.fallback_index) == ("from the big one", 2)
    assert small.chat_requests == []
    assert big.chat_requests[-1].json["max_tokens"] == 1000


async def test_a_primary_that_answers_is_not_refused_for_a_small_fallback(
    fake: FakeOpenAI, small: FakeOpenAI, start_service: StartService, big: FakeOpenAI
) -> None:
    svc = await start_service(_providers(fake, small, big))
    fake.reply = "from the primary"
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user(LONG)], fallback=[pb.ModelChoice(provider="small")]),
        timeout=10,
    )
    assert (reply.text, reply.provider, reply.fallback_index) == ("from the primary", "fake", 0)
    assert small.chat_requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_primary_too_small_for_the_prompt_goes_to_the_first_pair_that_holds_it(
    small_primary: Service, fake: FakeOpenAI, small: FakeOpenAI, big: FakeOpenAI, stream: bool
) -> None:
    """Decided: the call goes straight to the first pair that can hold it; the reply's
    provider, model and fallback_index name it. Failed before: the primary's refusal."""
    svc = small_primary
    big.reply = "from the big one"
    text, reply = await answer(svc, stream, messages=[user(LONG)], fallback=CHAIN)
    assert text == "from the big one"
    assert (reply.provider, reply.model, reply.fallback_index) == ("big", "b-model", 2)
    assert fake.chat_requests == [] and small.chat_requests == []
    assert (reply.attempts, reply.upstream_calls) == (1, 1)


async def test_the_last_pair_that_holds_the_prompt_keeps_its_retries(
    fake: FakeOpenAI, small: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> None:
    """With the pairs after it skipped, the primary is the chain's last: a 5xx is retried
    on it, as on a call with no chain, rather than ending it at once."""
    svc = await start_service(_providers(fake, small, big), retry_max_attempts=2)
    fake.enqueue_for_model("fake-model", Behaviour.error(503))
    fake.reply = "from the primary"
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user(LONG)], fallback=[pb.ModelChoice(provider="small")]),
        timeout=10,
    )
    assert (reply.text, reply.fallback_index, reply.attempts) == ("from the primary", 0, 2)
    assert small.chat_requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_no_pair_that_holds_the_prompt_is_the_primarys_refusal(
    small_primary: Service, fake: FakeOpenAI, small: FakeOpenAI, stream: bool
) -> None:
    """As before the skip: refused before any call, naming the prompt (the primary's)."""
    svc = small_primary
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(
            svc, stream, messages=[user(LONG)], fallback=[pb.ModelChoice(provider="small")]
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("CONTEXT_WINDOW_EXCEEDED", "messages")
    assert "provider 'fake'" in (caught.value.details() or "")
    assert fake.chat_requests == [] and small.chat_requests == []


async def _max_tokens_refused(svc: Service, max_tokens: int) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a Generate with ``max_tokens`` and a chain of "big", which must be
    refused INVALID_ARGUMENT."""
    request = pb.GenerateRequest(
        messages=[user("hi")], max_tokens=max_tokens, fallback=[pb.ModelChoice(provider="big")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return error_info(caught.value)


async def test_max_tokens_past_the_primarys_window_is_refused_whatever_the_chain(
    fake: FakeOpenAI, small: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> None:
    """Decided: the caller's own max_tokens is wrong for the model it named first, even
    when a fallback pair could take it (a guard: so it was before)."""
    svc = await start_service(_providers(fake, small, big, primary_window=512))
    info = await _max_tokens_refused(svc, 1000)
    assert (info.reason, info.metadata["field"]) == ("CONTEXT_WINDOW_EXCEEDED", "max_tokens")
    assert (info.metadata["provider"], info.metadata["context_window"]) == ("fake", "512")
    assert fake.chat_requests == [] and big.chat_requests == []


def _budget_primary(fake: FakeOpenAI, big: FakeOpenAI, **fields: Any) -> list[dict[str, object]]:
    """The primary with a token budget of 1000 a minute (counted reserved) and no window;
    "big" without one."""
    return [
        fake_provider(fake, tokens_per_minute=1000, **fields),
        fake_provider(big, name="big", default_model="b-model", context_window=8192),
    ]


async def test_max_tokens_past_the_primarys_token_budget_is_refused_whatever_the_chain(
    fake: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> None:
    """Decided: the caller's own max_tokens alone past the primary's token budget, as
    past its window, is the caller's argument. Failed before: the primary was skipped and
    "big" answered."""
    svc = await start_service(_budget_primary(fake, big))
    big.reply = "from the big one"
    info = await _max_tokens_refused(svc, 5000)
    assert (info.reason, info.metadata["field"]) == ("PROVIDER_TOKEN_LIMIT_EXCEEDED", "max_tokens")
    assert info.metadata["provider"] == "fake"
    assert fake.chat_requests == [] and big.chat_requests == []


async def test_a_long_prompt_past_the_primarys_budget_with_a_small_max_tokens_falls_back(
    fake: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> None:
    """A max_tokens within the primary's budget on its own, refused only with a long
    prompt (~1000 tokens + 300 past 1000 a minute): the prompt's length as much as the
    max_tokens, so the primary is skipped and "big" answers. Failed before: the whole call
    refused PROVIDER_TOKEN_LIMIT_EXCEEDED naming max_tokens, whatever the chain."""
    svc = await start_service(_budget_primary(fake, big))
    big.reply = "from the big one"
    reply = await svc.stub.Generate(
        pb.GenerateRequest(
            messages=[user("w" * 4000)], max_tokens=300, fallback=[pb.ModelChoice(provider="big")]
        ),
        timeout=10,
    )
    assert (reply.text, reply.provider, reply.fallback_index) == ("from the big one", "big", 1)
    assert fake.chat_requests == []
    assert big.chat_requests[-1].json["max_tokens"] == 300


async def test_a_primary_whose_own_default_max_tokens_breaks_its_budget_is_skipped(
    fake: FakeOpenAI, big: FakeOpenAI, start_service: StartService
) -> None:
    """The provider's own default max_tokens is no argument of the caller's: the primary
    is skipped for it, as for a prompt too long (a guard)."""
    svc = await start_service(_budget_primary(fake, big, max_tokens=5000))
    big.reply = "from the big one"
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], fallback=[pb.ModelChoice(provider="big")]),
        timeout=10,
    )
    assert (reply.text, reply.fallback_index) == ("from the big one", 1)
    assert fake.chat_requests == []


async def _last_pair_error(svc: Service, stream: bool, timeout: float) -> grpc.aio.AioRpcError:
    """The error of a call with a prompt too long for the chain's one pair ("small"), so
    the primary is the last pair kept, with ``fallback[0]`` skipped."""
    fields: dict[str, Any] = {
        "messages": [user(LONG)],
        "fallback": [pb.ModelChoice(provider="small")],
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if stream:
            call = svc.stub.StreamGenerate(pb.StreamGenerateRequest(**fields), timeout=timeout)
            _ = [e async for e in call]
        else:
            await svc.stub.Generate(pb.GenerateRequest(**fields), timeout=timeout)
    return caught.value


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    ("behaviour", "timeout", "code", "skipped"),
    [
        # A 5xx would have moved on: the caller is told its fallback pair was never tried
        # (its fallback_index). Failed before: a plain UNAVAILABLE.
        pytest.param(Behaviour.error(503), 10, grpc.StatusCode.UNAVAILABLE, "1", id="503"),
        # A 400 never moves on to a next pair: the skipped pair would not have been tried
        # either, so the error does not name it (docs/generation.md). Failed before:
        # ``skipped_fallbacks`` "1" on the 400.
        pytest.param(Behaviour.error(400), 10, grpc.StatusCode.INVALID_ARGUMENT, None, id="400"),
        # The call's own deadline ends any chain. Failed before: ``skipped_fallbacks`` "1"
        # on the deadline's DEADLINE_EXCEEDED.
        pytest.param(
            Behaviour.hang(60), 1.5, grpc.StatusCode.DEADLINE_EXCEEDED, None, id="deadline"
        ),
    ],
)
async def test_the_last_pair_kept_failing_names_the_skipped_pairs_that_would_have_been_tried(
    fake: FakeOpenAI,
    small: FakeOpenAI,
    big: FakeOpenAI,
    start_service: StartService,
    stream: bool,
    behaviour: Behaviour,
    timeout: float,
    code: grpc.StatusCode,
    skipped: str | None,
) -> None:
    """ErrorInfo metadata ``skipped_fallbacks`` names the pairs never tried, only when the
    last pair kept failed with an error that would have moved on to a next pair."""
    svc = await start_service(_providers(fake, small, big), retry_max_attempts=1)
    fake.by_model["fake-model"] = behaviour
    err = await _last_pair_error(svc, stream, timeout=timeout)
    assert err.code() == code
    # The service's own answer (ErrorInfo), the deadline's too, not the client's bare cut.
    assert error_info(err).metadata.get("skipped_fallbacks") == skipped
    assert small.chat_requests == []


def _skips_counted(provider: str, reason: str) -> float:
    labels = {"provider": provider, "reason": reason}
    return REGISTRY.get_sample_value("gensearch_llm_fallback_skips_total", labels) or 0.0


async def test_a_skip_is_counted_and_logged_at_debug(
    fake: FakeOpenAI,
    small: FakeOpenAI,
    big: FakeOpenAI,
    start_service: StartService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Counted when planned (gensearch_llm_fallback_skips_total), logged at DEBUG: a search
    of 100 hits does not log 100 lines at INFO. Failed before: logged at INFO, no metric."""
    svc = await start_service(_providers(fake, small, big))
    fake.reply = "from the primary"
    counted = _skips_counted("small", "CONTEXT_WINDOW_EXCEEDED")
    with caplog.at_level(logging.DEBUG, logger="gensearch.generation.planning"):
        reply = await svc.stub.Generate(
            pb.GenerateRequest(messages=[user(LONG)], fallback=CHAIN), timeout=10
        )
    assert reply.fallback_index == 0
    assert _skips_counted("small", "CONTEXT_WINDOW_EXCEEDED") == counted + 1
    skips = [r for r in caplog.records if r.getMessage().startswith("skipping a provider")]
    assert [(r.levelno, getattr(r, "provider", None)) for r in skips] == [(logging.DEBUG, "small")]
