"""Ask's fallback chain (issue 13): the request's own chain, else the collection's, for
the answer (unary and streamed), the pair that answered named on the answer, bad chains
refused naming the field before any LLM call; the question rewrite does not fall back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import (
    ALICE,
    DIM,
    WITH_BODY,
    Stack,
    StackFactory,
    books_ask,
    books_stream_ask,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

BACKUP = [gen_pb.ModelChoice(provider="backup")]
BACKUP_PAIR = gen_pb.ModelChoice(provider="fake", model="backup")


def _models(fake: FakeOpenAI) -> list[str]:
    return [r.json["model"] for r in fake.chat_requests]


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def two(stack_factory: StackFactory, fake2: FakeOpenAI) -> Stack:
    """A stack whose generation service has a second provider, "backup", on its own fake."""
    stack = await stack_factory(
        extra_providers=[fake_provider(fake2, name="backup", default_model="b-model")]
    )
    await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    fake2.reply = "backup answer"
    return stack


async def test_ask_falls_back_on_the_requests_chain(two: Stack, fake2: FakeOpenAI) -> None:
    reply = await two.stub.Ask(books_ask(llm_model="primary", fallback=BACKUP), metadata=ALICE)
    assert reply.answer == "backup answer"
    assert (reply.provider, reply.model, reply.fallback_index) == ("backup", "b-model", 1)
    assert _models(two.fake) == ["primary"]
    assert _models(fake2) == ["b-model"]


async def test_stream_ask_falls_back_before_the_first_delta(two: Stack, fake2: FakeOpenAI) -> None:
    events = [
        e
        async for e in two.stub.StreamAsk(
            books_stream_ask(llm_model="primary", fallback=BACKUP), metadata=ALICE
        )
    ]
    deltas = "".join(e.delta for e in events if e.WhichOneof("event") == "delta")
    answer = events[-1].answer
    assert deltas == answer.answer == "backup answer"
    assert (answer.provider, answer.model, answer.fallback_index) == ("backup", "b-model", 1)


async def test_without_a_fallback_the_primarys_error_is_the_answer(two: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await two.stub.Ask(books_ask(llm_model="primary"), metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_requests_chain_wins_over_the_collections(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake",
        model="primary",
        fallback=[ret_pb.GenerativeModel(provider="fake", model="collection-backup")],
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    stack.fake.by_model["primary"] = Behaviour.error(500)
    # No chain on the request: the collection's applies, streamed too.
    events = [e async for e in stack.stub.StreamAsk(books_stream_ask(), metadata=ALICE)]
    answer = events[-1].answer
    assert (answer.model, answer.fallback_index) == ("collection-backup", 1)
    stack.fake.reset_stats()
    reply = await stack.stub.Ask(
        books_ask(fallback=[gen_pb.ModelChoice(provider="fake", model="request-backup")]),
        metadata=ALICE,
    )
    assert (reply.model, reply.fallback_index) == ("request-backup", 1)
    assert _models(stack.fake) == ["primary", "request-backup"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {"fallback": [gen_pb.ModelChoice(provider="fake"), gen_pb.ModelChoice(provider="x")]},
            "fallback[1].provider",
        ),
        ({"fallback": [gen_pb.ModelChoice(provider=" ")]}, "fallback[0].provider"),
        (
            {"fallback": [gen_pb.ModelChoice(provider="anyscale", model="gpt-4")]},
            "fallback[0].model",
        ),
        ({"fallback": [gen_pb.ModelChoice(provider="fake")] * 5}, "fallback"),
        ({"provider": "anyscale", "llm_model": "gpt-4"}, "llm_model"),
        ({"provider": "nope"}, "provider"),
        # A pair repeating the primary (the stack's default, fake / fake-model; an empty
        # model is its provider's default) or an earlier pair: DUPLICATE_FALLBACK.
        (
            {"fallback": [gen_pb.ModelChoice(provider="fake", model="fake-model")] * 3},
            "fallback[0]",
        ),
        ({"fallback": [gen_pb.ModelChoice(provider="fake")]}, "fallback[0]"),
        (
            {"llm_model": "primary", "fallback": [BACKUP_PAIR, BACKUP_PAIR]},
            "fallback[1]",
        ),
    ],
)
async def test_bad_choices_fail_before_any_call(
    stack: Stack, fields: dict[str, Any], field: str
) -> None:
    await create_books(stack, books=WITH_BODY)
    for call in (
        lambda: stack.stub.Ask(books_ask(**fields), metadata=ALICE),
        lambda: _drain(stack.stub.StreamAsk(books_stream_ask(**fields), metadata=ALICE)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info.metadata["field"] == field
        if field.endswith("]"):
            assert info.reason == "DUPLICATE_FALLBACK"
    assert stack.fake.chat_requests == []


async def test_a_collections_bad_chain_is_named(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake", fallback=[ret_pb.GenerativeModel(provider="gone")]
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Ask(books_ask(), metadata=ALICE)
    # The stored chain is at fault, not the request: FAILED_PRECONDITION (was INVALID_ARGUMENT).
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).metadata["field"] == (
        "collection.generative.fallback[0].provider"
    )
    assert stack.fake.chat_requests == []


async def test_a_collections_chain_repeating_a_pair_is_named(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake",
        model="primary",
        # Distinct as written (retrieval stores it), one endpoint once the empty model is
        # the provider's default: the gateway finds the repeat at use.
        fallback=[
            ret_pb.GenerativeModel(provider="fake", model=""),
            ret_pb.GenerativeModel(provider="fake", model="fake-model"),
        ],
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    for call in (
        lambda: stack.stub.Ask(books_ask(), metadata=ALICE),
        lambda: _drain(stack.stub.StreamAsk(books_stream_ask(), metadata=ALICE)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == (
            "DUPLICATE_FALLBACK",
            "collection.generative.fallback[1]",
        )
        assert info.metadata["repeats"] == "collection.generative.fallback[0]"
    assert stack.fake.chat_requests == []


async def test_the_question_rewrite_does_not_fall_back(two: Stack, fake2: FakeOpenAI) -> None:
    two.fake.by_model.clear()
    first = await two.stub.Ask(
        books_ask(llm_model="primary", new_conversation=True, fallback=BACKUP), metadata=ALICE
    )
    assert first.fallback_index == 0
    two.fake.by_model["primary"] = Behaviour.error(503)
    two.fake.reset_stats()
    second = await two.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="When was it written?",
            conversation_id=first.conversation_id,
            llm_model="primary",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            fallback=BACKUP,
        ),
        metadata=ALICE,
    )
    # The rewrite tried the primary alone and fell back to the deterministic query; the
    # answer fell back to the backup, which was called once: for the answer.
    assert second.rewrite_method == gw_pb.REWRITE_METHOD_FALLBACK
    assert second.rewrite_rejection == gw_pb.REWRITE_REJECTION_MODEL_FAILED
    assert _models(two.fake) == ["primary", "primary"]
    assert _models(fake2) == ["b-model"]
    assert (second.provider, second.fallback_index) == ("backup", 1)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass
