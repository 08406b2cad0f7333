"""Issue 14 §2 through the gateway: every Ask (unary and streamed) stores its steps as
traces of its turn; UpdateInteraction and SearchInteractions are forwarded with the
caller's identity. The whole stack on loopback: real Redis, qdrant-edge, real gRPC and the
fake LLM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from services.gateway.conversation import REWRITE_SYSTEM_PROMPT
from tests.gateway.conftest import ALICE, BOB, Stack, StackFactory, create_books
from tests.gateway.test_ask import scripted
from tests.support.rpc import error_info


def _answer_requests(stack: Stack) -> list[dict[str, Any]]:
    return [
        r.json
        for r in stack.fake.chat_requests
        if r.json["messages"][0]["content"] != REWRITE_SYSTEM_PROMPT
    ]


async def _traces(stack: Stack, iid: str, who: Any = ALICE) -> list[mem_pb.Trace]:
    page = await stack.memory.ListInteractionTraces(
        mem_pb.ListInteractionTracesRequest(interaction_id=iid), metadata=who
    )
    return list(page.traces)


def _dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


async def test_a_turn_stores_its_rewrite_retrieval_and_generation(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = scripted
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="Tell me about desert planets", new_conversation=True
        ),
        metadata=ALICE,
    )
    # No history: nothing to rewrite; retrieval and generation.
    steps = [t.step for t in await _traces(stack, first.interaction_id)]
    assert steps == [mem_pb.STEP_RETRIEVAL, mem_pb.STEP_GENERATION]

    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="When was it written?",
            conversation_id=first.conversation_id,
        ),
        metadata=ALICE,
    )
    rewrite, retrieval, generation = await _traces(stack, second.interaction_id)
    assert [rewrite.step, retrieval.step, generation.step] == [
        mem_pb.STEP_QUESTION_REWRITE,
        mem_pb.STEP_RETRIEVAL,
        mem_pb.STEP_GENERATION,
    ]
    assert [t.trace_number for t in (rewrite, retrieval, generation)] == [0, 1, 2]

    assert _dict(rewrite.input)["question"] == "When was it written?"
    rewrite_sent = [
        r.json for r in stack.fake.chat_requests if r.json not in _answer_requests(stack)
    ][-1]
    assert _dict(rewrite.input)["messages"] == rewrite_sent["messages"]
    assert _dict(rewrite.output)["query"] == "Dune desert spice year" == second.rewritten_query

    assert _dict(retrieval.input)["query"] == "Dune desert spice year"
    assert _dict(retrieval.input)["collection"] == "Books"
    hits = _dict(retrieval.output)["hits"]
    assert [h["id"] for h in hits] == [h.id for h in second.hits]
    assert [h["score"] for h in hits] == [
        struct_pb2.Value(number_value=h.score).number_value for h in second.hits
    ]

    sent = _answer_requests(stack)[-1]
    given = _dict(generation.input)
    assert given["messages"] == sent["messages"]  # exactly what the model received
    assert given["model"] == "fake-model"
    produced = _dict(generation.output)
    assert produced["model"] == second.model
    answer_usage = produced["usage"]
    rewrite_usage = _dict(rewrite.output)["usage"]
    assert answer_usage["total_tokens"] + rewrite_usage["total_tokens"] == second.usage.total_tokens
    assert produced["finish_reason"] == "stop" and produced["streamed"] is False
    for trace in (rewrite, retrieval, generation):
        assert trace.HasField("start_time") and trace.HasField("duration")
        assert not trace.truncated
    assert rewrite.start_time.ToNanoseconds() <= retrieval.start_time.ToNanoseconds()
    assert retrieval.start_time.ToNanoseconds() <= generation.start_time.ToNanoseconds()

    # Owner-only through the gateway too.
    err = await _error(
        stack.memory.ListInteractionTraces(
            mem_pb.ListInteractionTracesRequest(interaction_id=second.interaction_id),
            metadata=BOB,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_streamed_turn_stores_its_traces(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = scripted
    events = [
        e
        async for e in stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(
                collection="Books", llm_question="desert planets", new_conversation=True
            ),
            metadata=ALICE,
        )
    ]
    answer = events[-1].answer
    retrieval, generation = await _traces(stack, answer.interaction_id)
    assert retrieval.step == mem_pb.STEP_RETRIEVAL
    assert [h["id"] for h in _dict(retrieval.output)["hits"]] == [h.id for h in answer.hits]
    produced = _dict(generation.output)
    assert produced["streamed"] is True
    assert produced["first_token_ms"] >= 0
    assert produced["usage"]["total_tokens"] == answer.usage.total_tokens > 0
    assert _dict(generation.input)["messages"] == _answer_requests(stack)[-1]["messages"]


async def test_long_prompts_are_cut_in_the_trace(stack_factory: StackFactory) -> None:
    stack = await stack_factory(ask_trace_bytes=4096)
    await create_books(stack)
    stack.fake.reply = scripted
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="desert planets",
            new_conversation=True,
            system_prompt="Be brief. " * 2000,
        ),
        metadata=ALICE,
    )
    generation = (await _traces(stack, answer.interaction_id))[-1]
    assert generation.truncated and generation.ByteSize() <= 4096
    assert _dict(generation.input)["messages"][0]["content"].endswith("…")
    assert _dict(generation.output)["usage"]["total_tokens"] > 0


async def test_update_interaction_through_the_gateway(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = scripted
    turn = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert", new_conversation=True),
        metadata=ALICE,
    )
    note = struct_pb2.Struct()
    note.update({"rating": 5})
    updated = await stack.memory.UpdateInteraction(
        mem_pb.UpdateInteractionRequest(
            interaction=mem_pb.Interaction(
                interaction_id=turn.interaction_id, additional_info=note
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["additional_info.rating"]),
        ),
        metadata=ALICE,
    )
    info = _dict(updated.interaction.additional_info)
    assert info["rating"] == 5 and "hit_ids" in info  # the rest kept
    err = await _error(
        stack.memory.UpdateInteraction(
            mem_pb.UpdateInteractionRequest(
                interaction=mem_pb.Interaction(interaction_id=turn.interaction_id),
                update_mask=field_mask_pb2.FieldMask(paths=["response"]),
            ),
            metadata=ALICE,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "update_mask"
    err = await _error(
        stack.memory.UpdateInteraction(
            mem_pb.UpdateInteractionRequest(
                interaction=mem_pb.Interaction(
                    interaction_id=turn.interaction_id, additional_info=note
                ),
            ),
            metadata=BOB,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_search_interactions_through_the_gateway(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    stack = await stack_factory(memory={"search_index": "keyword", "data_dir": tmp_path / "memory"})
    await create_books(stack)
    await create_books(stack, metadata=BOB)  # bob is another tenant: a collection of his own
    stack.fake.reply = scripted
    mine = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="spice melange", new_conversation=True),
        metadata=ALICE,
    )
    theirs = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="spice trade", new_conversation=True),
        metadata=BOB,
    )

    async def found(who: Any) -> list[str]:
        response = await stack.memory.SearchInteractions(
            mem_pb.SearchInteractionsRequest(query="spice"), metadata=who
        )
        return [h.interaction.interaction_id for h in response.hits]

    async def until(who: Any, expected: list[str]) -> list[str]:
        for _ in range(600):
            got = await found(who)
            if got == expected:
                break
            await asyncio.sleep(0.05)
        return got

    assert await until(ALICE, [mine.interaction_id]) == [mine.interaction_id]
    assert await until(BOB, [theirs.interaction_id]) == [theirs.interaction_id]
    await stack.memory.DeleteConversation(
        mem_pb.DeleteConversationRequest(conversation_id=mine.conversation_id), metadata=ALICE
    )
    assert await found(ALICE) == []
    assert await found(BOB) == [theirs.interaction_id]


async def _error(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded")


async def test_an_index_outage_never_costs_an_ask_its_turn(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    data = tmp_path / "memory"
    data.mkdir()
    blocker = data / "memory-index"
    blocker.write_text("the index cannot open here")
    stack = await stack_factory(
        memory={"search_index": "keyword", "data_dir": data, "search_retry_seconds": 0.2}
    )
    await create_books(stack)
    stack.fake.reply = scripted
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="spice melange", new_conversation=True),
        metadata=ALICE,
    )
    stored = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=answer.conversation_id), metadata=ALICE
    )
    assert [i.interaction_id for i in stored.interactions] == [answer.interaction_id]
    assert len(await _traces(stack, answer.interaction_id)) == 2
    err = await _error(
        stack.memory.SearchInteractions(
            mem_pb.SearchInteractionsRequest(query="spice"), metadata=ALICE
        )
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    blocker.unlink()  # the index comes back; the outbox catches up
    for _ in range(1200):
        try:
            found = await stack.memory.SearchInteractions(
                mem_pb.SearchInteractionsRequest(query="spice"), metadata=ALICE
            )
        except grpc.aio.AioRpcError:
            found = mem_pb.SearchInteractionsResponse()
        if found.hits:
            break
        await asyncio.sleep(0.05)
    assert [h.interaction.interaction_id for h in found.hits] == [answer.interaction_id]
