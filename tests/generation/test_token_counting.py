"""How a provider counts ``tokens_per_minute`` (``tokens_counted``), against a loopback
provider that counts the way OpenAI documents: each request's prompt plus its
``max_tokens`` when it arrives, never given back, and 429 past its budget.

Counted as reserved (the default) the service charges a call its estimate up front and
keeps it, so a burst whose answers use far less than ``max_tokens`` stays within what the
provider counts. Counted as used, the unused part of each estimate comes back when the
call ends, which lets more calls in than such a provider takes (the control)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.errors import InvalidArgument
from services.generation.providers.base import ChatMessage, estimate_prompt_tokens
from services.generation.validation import check_token_budget
from tests.generation.conftest import StartService, fake_provider, unreached_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

# Every call asks for MAX_TOKENS and gets an answer of 2 words ("hit 12" echoed back): the
# fake counts 2 + MAX_TOKENS at arrival (one word = one token), the service estimates the
# prompt at 2 tokens too (~3.5 characters a token), and the answer uses 4 in all.
MAX_TOKENS = 10
RESERVED = 2 + MAX_TOKENS
WINDOW = 2.0
BUDGET = 20 * RESERVED  # tokens the fake takes per window: 20 calls' reservations
# Declared a tenth below the fake's budget: the fake counts a request when it arrives, the
# buckets when they admit it, a moment before (longer on a loaded machine), so a window of
# arrivals can hold admissions from a little more than a window.
DECLARED = BUDGET * 0.9
CALLS = 30


def declared(**fields: Any) -> dict[str, Any]:
    return {
        "max_concurrency": None,
        "tokens_per_minute": DECLARED * 60 / WINDOW,
        "rate_window": WINDOW,
        "rate_burst": 0.5,  # 9 calls at once, then 4.5 a second
        **fields,
    }


async def burst(start_service: StartService, fake: FakeOpenAI, **fields: Any) -> list[Any]:
    service = await start_service([fake_provider(fake, **declared(**fields))])
    # Right after one of the fake's windows begins: the burst starts with a whole window.
    await asyncio.sleep(WINDOW - time.monotonic() % WINDOW + 0.01)
    return list(
        await asyncio.gather(
            *(
                service.stub.Generate(
                    pb.GenerateRequest(messages=[user(f"hit {i}")], max_tokens=MAX_TOKENS),
                    timeout=60,
                )
                for i in range(CALLS)
            )
        )
    )


@pytest.fixture
async def reserving() -> Any:
    async with FakeOpenAI(
        token_limit=BUDGET, rate_window=WINDOW, token_counting="reserved"
    ) as server:
        yield server


async def test_counted_as_reserved_a_burst_never_takes_the_provider_past_its_budget(
    reserving: FakeOpenAI, start_service: StartService
) -> None:
    # The default: what OpenAI documents for its TPM limit.
    replies = await burst(start_service, reserving)
    assert [r.text for r in replies] == [f"hit {i}" for i in range(CALLS)]
    assert all(r.usage.total_tokens == 4 for r in replies)  # far below what was reserved
    assert reserving.rate_limited == 0
    assert reserving.max_tokens_per_window <= BUDGET
    assert sum(reserving.window_tokens.values()) == CALLS * RESERVED


async def test_counted_as_used_the_unused_estimate_comes_back(
    reserving: FakeOpenAI, start_service: StartService
) -> None:
    """The control, and what ``tokens_counted: used`` still does: each call gives back
    the 8 tokens of its estimate it did not use, so many more calls start in a window than
    a provider counting reservations takes (it answers 429; the calls retry and succeed)."""
    replies = await burst(start_service, reserving, tokens_counted="used")
    assert [r.text for r in replies] == [f"hit {i}" for i in range(CALLS)]
    assert reserving.rate_limited > 0
    assert reserving.max_tokens_per_window > BUDGET


async def test_a_call_a_reserving_provider_can_never_take_is_refused_before_any_call(
    reserving: FakeOpenAI, fake: FakeOpenAI, start_service: StartService
) -> None:
    # 216 tokens declared a window: a max_tokens of 600 is counted whole when the call arrives, so
    # the provider would answer 429 however long the call waited (and charged up front it
    # would hold every other call back for a window).
    service = await start_service([fake_provider(reserving, **declared())])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hit")], max_tokens=600), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "PROVIDER_TOKEN_LIMIT_EXCEEDED"
    assert info.metadata["field"] == "max_tokens"
    assert info.metadata["provider"] == "fake"
    assert "216 tokens" in (caught.value.details() or "")
    assert reserving.chat_requests == []
    # A provider that counts usage may take it: what the call uses is what counts.
    used = await start_service([fake_provider(fake, **declared(tokens_counted="used"))])
    reply = await used.stub.Generate(
        pb.GenerateRequest(messages=[user("hit")], max_tokens=600), timeout=10
    )
    assert reply.text == "hit"


def test_only_a_prompt_that_surely_cannot_fit_is_refused() -> None:
    """The prompt's tokens are estimated (~3.5 characters a token), max_tokens is exact: a
    call is refused only when even its least plausible prompt (the estimate / 1.25, the
    slack the context-window check allows) cannot fit. Before, a prompt the estimate put
    a few tokens over was refused though the provider's own count could take it."""
    config = unreached_provider(tokens_per_minute=600, rate_window=60.0, tokens_counted="reserved")
    messages = [ChatMessage(role="user", content="word " * 280)]
    prompt = estimate_prompt_tokens(messages)
    # Over by the estimate, within it by the slack.
    fitting = 600 - int(prompt / 1.25)
    assert prompt + fitting > 600
    check_token_budget(messages, fitting - 2, config)
    with pytest.raises(InvalidArgument) as caught:
        check_token_budget(messages, fitting + 2, config)
    assert caught.value.field == "max_tokens"
    # A prompt alone past the window, even at its least: the prompt is what to shorten.
    long = [ChatMessage(role="user", content="word " * 2000)]
    with pytest.raises(InvalidArgument) as caught:
        check_token_budget(long, 1, config)
    assert caught.value.field == "messages"
