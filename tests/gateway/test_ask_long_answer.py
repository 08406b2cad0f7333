"""An answer longer than memory stores is returned whole and stored cut (real gRPC, real
memory on Redis, a loopback fake LLM).

Before, memory's FIELD_TOO_LARGE on ``response`` failed the whole Ask with
INVALID_ARGUMENT naming a field the caller never sent, after the answer was paid for
(and, for StreamAsk, after every delta had been sent)."""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from tests.gateway.conftest import ALICE, Stack, StackFactory, create_books

LIMIT = 200  # bytes memory stores of a response, and the gateway's ask_answer_bytes
ANSWER = "é" * 150  # 300 bytes of UTF-8, 2 a character


async def _start(stack_factory: StackFactory) -> Stack:
    stack = await stack_factory(ask_answer_bytes=LIMIT, memory={"max_text_bytes": LIMIT})
    await create_books(stack)
    stack.fake.reply = ANSWER
    return stack


async def _stored(stack: Stack, conversation_id: str) -> mem_pb.Interaction:
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=conversation_id), metadata=ALICE
    )
    return listed.interactions[0]


async def test_ask_returns_the_whole_answer_and_stores_it_cut(
    stack_factory: StackFactory,
) -> None:
    stack = await _start(stack_factory)
    reply = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert", new_conversation=True),
        metadata=ALICE,
    )
    assert reply.answer == ANSWER
    stored = await _stored(stack, reply.conversation_id)
    assert stored.response == ANSWER[:100]  # 200 bytes, cut between characters
    assert stored.additional_info["response_truncated"] is True


async def test_stream_ask_stores_the_turn_cut(stack_factory: StackFactory) -> None:
    stack = await _start(stack_factory)
    events = [
        e
        async for e in stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(
                collection="Books", llm_question="desert", new_conversation=True
            ),
            metadata=ALICE,
        )
    ]
    answer = events[-1].answer
    assert answer.answer == ANSWER and answer.interaction_id
    stored = await _stored(stack, answer.conversation_id)
    assert stored.response == ANSWER[:100]
    assert stored.additional_info["response_truncated"] is True


async def test_an_answer_that_fits_is_stored_as_it_is(stack_factory: StackFactory) -> None:
    stack = await _start(stack_factory)
    stack.fake.reply = ANSWER[:100]  # exactly 200 bytes
    reply = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert", new_conversation=True),
        metadata=ALICE,
    )
    stored = await _stored(stack, reply.conversation_id)
    assert stored.response == ANSWER[:100]
    assert "response_truncated" not in stored.additional_info
