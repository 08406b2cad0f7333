"""The skipped fallback pairs through the gateway, at the chain's length limit
(GENSEARCH_GATEWAY_MAX_FALLBACKS, 4 by default): a chain whose every pair is too small for
the prompt refuses each per-hit and grouped call with the primary's refusal naming the
prompt's field, nothing sent to any pair; one whose every pair but the last is too small
is answered by the last, nothing sent to the others. Guards (both held when written:
tests/generation/test_fallback_skip.py has the service's side, not the gateway's)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from tests.gateway.conftest import (
    ALICE,
    WITH_BODY,
    Stack,
    StackFactory,
    books_search,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import FakeOpenAI

# ~500 tokens by the generation service's estimate: past a window of 100 (with its 1.25
# slack), within one of 4096.
LONG = "w" * 2000
NAMES = ["s1", "s2", "s3", "s4"]
CHAIN = [gen_pb.ModelChoice(provider=name) for name in NAMES]


@pytest.fixture
async def pairs() -> AsyncIterator[list[FakeOpenAI]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeOpenAI()) for _ in NAMES]


async def _stack(
    stack_factory: StackFactory, fake: FakeOpenAI, pairs: list[FakeOpenAI], last_window: int
) -> Stack:
    """The primary and every fallback pair but the last with a window of 100 tokens; the
    last with ``last_window``."""
    windows = [100] * (len(NAMES) - 1) + [last_window]
    stack = await stack_factory(
        provider=fake_provider(fake, context_window=100),
        extra_providers=[
            fake_provider(server, name=name, default_model=f"{name}-model", context_window=window)
            for server, name, window in zip(pairs, NAMES, windows, strict=True)
        ],
    )
    await create_books(stack, books=WITH_BODY)
    return stack


def _refused_for_the_primarys_window(error: gw_pb.GenerationError, field: str) -> None:
    assert (error.status, error.reason) == ("INVALID_ARGUMENT", "CONTEXT_WINDOW_EXCEEDED")
    assert dict(error.metadata) == {"field": field, "service": "generation"}
    assert "provider 'fake' (100 tokens)" in error.message


async def test_a_chain_of_pairs_all_too_small_is_refused_with_the_primarys_window(
    stack_factory: StackFactory, fake: FakeOpenAI, pairs: list[FakeOpenAI]
) -> None:
    stack = await _stack(stack_factory, fake, pairs, last_window=100)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt=LONG + " {title}", fallback=CHAIN), metadata=ALICE
    )
    assert response.hits
    for hit in response.hits:
        _refused_for_the_primarys_window(hit.generation.error, "generate.single_prompt")
    response = await stack.stub.GenerativeSearch(
        books_search(grouped_task=LONG, fallback=CHAIN), metadata=ALICE
    )
    _refused_for_the_primarys_window(response.grouped.error, "generate.grouped_task")
    assert fake.chat_requests == [] and all(p.chat_requests == [] for p in pairs)


async def test_a_chain_of_pairs_all_too_small_but_the_last_is_answered_by_the_last(
    stack_factory: StackFactory, fake: FakeOpenAI, pairs: list[FakeOpenAI]
) -> None:
    stack = await _stack(stack_factory, fake, pairs, last_window=4096)
    pairs[-1].reply = "from the last"
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt=LONG + " {title}", fallback=CHAIN), metadata=ALICE
    )
    results = [hit.generation for hit in response.hits]
    assert results
    assert {(r.result, r.provider, r.fallback_index, r.attempts) for r in results} == {
        ("from the last", NAMES[-1], len(NAMES), 1)
    }
    assert fake.chat_requests == [] and all(p.chat_requests == [] for p in pairs[:-1])
