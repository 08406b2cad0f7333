"""Through the gateway, a fallback pair too small for a hit's prompt (or for max_tokens)
is skipped by the generation service, for each hit, the grouped task and Ask's answer:
the request is not refused for it, and a hit that falls back goes to the next pair that
can hold it. Before, such a pair refused the whole request."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from tests.gateway.conftest import (
    ALICE,
    WITH_BODY,
    Stack,
    StackFactory,
    books_ask,
    books_search,
    books_stream_search,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.fallback_fakes import big_fake_fixture, small_fake_fixture  # noqa: F401
from tests.support.rpc import error_info

# ~500 tokens by the generation service's estimate: past a window of 100 (with its 1.25
# slack), within the primary's (none declared) and the big pair's.
LONG = "w" * 2000
CHAIN = [gen_pb.ModelChoice(provider="small"), gen_pb.ModelChoice(provider="big")]


@pytest.fixture
async def three(stack_factory: StackFactory, small: FakeOpenAI, big: FakeOpenAI) -> Stack:
    """The fake primary (no declared window), "small" (a window of 100 tokens) and "big"."""
    stack = await stack_factory(
        extra_providers=[
            fake_provider(small, name="small", default_model="s-model", context_window=100),
            fake_provider(big, name="big", default_model="b-model", context_window=4096),
        ]
    )
    await create_books(stack, books=WITH_BODY)
    stack.fake.reply = "from the primary"
    big.reply = "from the big one"
    return stack


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_hit_falls_back_past_a_pair_too_small_for_its_prompt(
    three: Stack, small: FakeOpenAI, big: FakeOpenAI, stream: bool
) -> None:
    """The primary fails one call with a 503: that call goes to "big", never to "small";
    every hit and the grouped task answer. Failed before: every hit and the grouped task
    refused CONTEXT_WINDOW_EXCEEDED (naming the prompt fields)."""
    three.fake.enqueue_for_model("fake-model", Behaviour.error(503))
    fields: dict[str, Any] = {
        "single_prompt": LONG + " {title}",
        "grouped_task": LONG + " compare",
        "fallback": CHAIN,
    }
    if stream:
        events = [
            e
            async for e in three.stub.StreamGenerativeSearch(
                books_stream_search(**fields), metadata=ALICE
            )
        ]
        results = [e.hit_result.generation for e in events if e.WhichOneof("event") == "hit_result"]
        results += [e.grouped for e in events if e.WhichOneof("event") == "grouped"]
    else:
        response = await three.stub.GenerativeSearch(books_search(**fields), metadata=ALICE)
        results = [h.generation for h in response.hits] + [response.grouped]
    assert len(results) == 5
    assert [r.error.reason for r in results if r.HasField("error")] == []
    answered = sorted((r.provider, r.fallback_index, r.result) for r in results)
    assert answered == [("big", 2, "from the big one")] + [("fake", 0, "from the primary")] * 4
    assert small.chat_requests == []
    assert len(big.chat_requests) == 1


async def test_max_tokens_past_a_fallback_pairs_window_is_not_refused(
    three: Stack, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    """Failed before: INVALID_ARGUMENT naming generate.max_tokens, provider "small", before
    any call, though the primary could answer every hit."""
    three.fake.enqueue_for_model("fake-model", Behaviour.error(503))
    response = await three.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", max_tokens=1000, fallback=CHAIN),
        metadata=ALICE,
    )
    results = [h.generation for h in response.hits]
    assert [r.error.reason for r in results if r.HasField("error")] == []
    assert sorted(r.fallback_index for r in results) == [0, 0, 0, 2]
    assert small.chat_requests == []
    assert big.chat_requests[-1].json["max_tokens"] == 1000


async def test_asks_answer_falls_back_past_a_pair_too_small_for_its_prompt(
    three: Stack, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    """The answer's prompt is fitted to the primary's window; a smaller fallback pair is
    skipped. Failed before: the whole Ask refused CONTEXT_WINDOW_EXCEEDED."""
    three.fake.by_model["primary"] = Behaviour.error(503)
    reply = await three.stub.Ask(
        books_ask(llm_model="primary", user_instructions=LONG, fallback=CHAIN), metadata=ALICE
    )
    assert reply.answer == "from the big one"
    assert (reply.provider, reply.model, reply.fallback_index) == ("big", "b-model", 2)
    assert small.chat_requests == []


async def test_hits_too_long_for_the_primary_go_to_the_first_pair_that_holds_them(
    stack_factory: StackFactory, fake: FakeOpenAI, big: FakeOpenAI
) -> None:
    """The gateway renders a hit's prompt without fitting it to a window: one too long for
    the primary goes straight to the first pair that can hold it, which the result names.
    Failed before: every hit refused CONTEXT_WINDOW_EXCEEDED naming generate.single_prompt."""
    stack = await stack_factory(
        provider=fake_provider(fake, context_window=100),
        extra_providers=[
            fake_provider(big, name="big", default_model="b-model", context_window=4096)
        ],
    )
    await create_books(stack, books=WITH_BODY)
    big.reply = "from the big one"
    response = await stack.stub.GenerativeSearch(
        books_search(
            single_prompt=LONG + " {title}", fallback=[gen_pb.ModelChoice(provider="big")]
        ),
        metadata=ALICE,
    )
    results = [h.generation for h in response.hits]
    assert [r.error.reason for r in results if r.HasField("error")] == []
    assert {(r.provider, r.model, r.fallback_index) for r in results} == {("big", "b-model", 1)}
    assert fake.chat_requests == []


async def test_a_hits_error_names_the_fallback_pairs_skipped(
    three: Stack, small: FakeOpenAI
) -> None:
    """Every hit's prompt is too long for "small", and the primary fails: each hit's error
    carries generation's ErrorInfo metadata ``skipped_fallbacks`` (the pairs' fallback_index)
    through the gateway. Failed before: a plain UNAVAILABLE, the skip untold."""
    three.fake.by_model["down"] = Behaviour.error(503)
    response = await three.stub.GenerativeSearch(
        books_search(
            single_prompt=LONG + " {title}",
            model="down",
            fallback=[gen_pb.ModelChoice(provider="small")],
        ),
        metadata=ALICE,
    )
    errors = [h.generation.error for h in response.hits]
    assert errors and all(e.status == "UNAVAILABLE" for e in errors)
    assert {e.metadata["skipped_fallbacks"] for e in errors} == {"1"}
    assert small.chat_requests == []


async def test_an_asks_error_names_the_fallback_pairs_skipped(
    three: Stack, small: FakeOpenAI
) -> None:
    """As a hit's: Ask's answer failing on the primary, "small" skipped for its prompt."""
    three.fake.by_model["down"] = Behaviour.error(503)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await three.stub.Ask(
            books_ask(
                llm_model="down",
                user_instructions=LONG,
                fallback=[gen_pb.ModelChoice(provider="small")],
            ),
            metadata=ALICE,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).metadata["skipped_fallbacks"] == "1"
    assert small.chat_requests == []
