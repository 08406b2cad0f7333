"""The gateway's own calls for a request (the question rewrite, a summary fold) and its
answers, when GENSEARCH_GATEWAY_DEFAULT_MODEL names a model the endpoint does not serve
and the gateway cannot tell before the call (a provider that does not check its models:
the upstream's own 404 model_not_found refuses it). The refusal is the operator's
setting's, FAILED_PRECONDITION naming it, as the gateway's own check says it
(test_generate_options.py); it was INVALID_ARGUMENT on ``model``, a field of the request
the gateway built, which no caller sent."""

from __future__ import annotations

import logging

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.gateway.summarizer import FoldJob
from services.gateway.tokens import Estimate
from tests.gateway.conftest import (
    ALICE,
    DIM,
    WITH_BODY,
    Stack,
    StackFactory,
    books_search,
    create_books,
    model_checking_upstream_stack,
    own_call,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

SETTING = "GENSEARCH_GATEWAY_DEFAULT_MODEL"
UNSERVED = "no-such-model"


async def _stack(stack_factory: StackFactory, fake: FakeOpenAI) -> Stack:
    stack = await model_checking_upstream_stack(stack_factory, fake, default_model=UNSERVED)
    # No generative defaults: nothing but the gateway's settings names the model.
    await create_books(stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig())
    return stack


async def _conversation(stack: Stack, turns: int) -> str:
    """A conversation of ``turns`` past turns, stored directly in memory."""
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    for n in range(turns):
        await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input=f"question {n}", response=f"answer {n}"
            ),
            metadata=ALICE,
        )
    return cid


async def test_an_ask_with_history_names_the_setting_in_its_rewrite_and_answer(
    stack_factory: StackFactory, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await _stack(stack_factory, fake)
    # A past turn, so the question is rewritten first (with the same model).
    cid = await _conversation(stack, 1)
    ask = gw_pb.AskRequest(
        collection="Books",
        llm_question="And when?",
        conversation_id=cid,
        rewrite_query=True,
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
    )
    with (
        caplog.at_level(logging.WARNING, logger="gensearch"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await stack.stub.Ask(ask, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert (info.reason, info.metadata["setting"]) == ("UNKNOWN_MODEL", SETTING)
    assert info.metadata["field"] == "llm_model"
    assert SETTING in (caught.value.details() or "")
    # The rewrite failed first (its fallback query used), saying the setting to fix.
    rewrites = [r for r in caplog.records if r.getMessage() == "question rewriting failed"]
    assert [(r.reason, r.setting) for r in rewrites] == [("UNKNOWN_MODEL", SETTING)]  # type: ignore[attr-defined]
    # Per hit too: each hit's error says the setting.
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}"), metadata=ALICE
    )
    assert response.hits
    for hit in response.hits:
        error = hit.generation.error
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert (error.reason, error.metadata["setting"]) == ("UNKNOWN_MODEL", SETTING)
        assert error.metadata["field"] == "generate.model"


async def test_a_summary_fold_names_the_setting(
    stack_factory: StackFactory, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await _stack(stack_factory, fake)
    cid = await _conversation(stack, 4)
    # The options of an Ask that named no model, as its turn queues them for the fold.
    async with own_call(stack, default_provider="fake", default_model=UNSERVED) as own:
        job = FoldJob(own.caller, cid, 1, 10**6, own.options, 4096, Estimate())
        with caplog.at_level(logging.WARNING, logger="gensearch"):
            await own.backends.summarizer.fold(job)
    folds = [r for r in caplog.records if r.getMessage() == "summary fold: generation failed"]
    assert [(r.reason, r.setting) for r in folds] == [("UNKNOWN_MODEL", SETTING)]  # type: ignore[attr-defined]
    assert not (
        await stack.memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
        )
    ).conversation.HasField("summary")
