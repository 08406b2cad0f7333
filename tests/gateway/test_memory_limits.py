"""Memory's own limits, tighter than the gateway's: an Ask whose turn memory would refuse
for what the caller sent is refused before any LLM call, naming the Ask's field; what the
gateway itself attaches (answer, traces, additional_info, model name, conversation name)
is cut to what memory accepts instead of failing the Ask after the answer was paid for."""

from __future__ import annotations

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.gateway.memory_limits import drop_unstorable
from services.gateway.prompting import PROMPT_TEMPLATE
from tests.gateway.conftest import (
    ALICE,
    Stack,
    StackFactory,
    create_books,
    refused_before_any_event,
    storing_asks,
)
from tests.support.relay import Relay, serving
from tests.support.rpc import bad_request_field, error_info


async def _conversation(stack: Stack) -> str:
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    return made.conversation.conversation_id


async def _stored(stack: Stack, interaction_id: str) -> mem_pb.Interaction:
    got = await stack.memory.GetInteraction(
        mem_pb.GetInteractionRequest(interaction_id=interaction_id), metadata=ALICE
    )
    return got.interaction


async def test_a_question_memory_would_not_store_is_refused_before_any_llm_call(
    stack_factory: StackFactory,
) -> None:
    """GENSEARCH_MEMORY_MAX_TEXT_BYTES below the gateway's own question limit: the Ask
    is INVALID_ARGUMENT naming llm_question (not memory's `input`), with the limit and the
    setting in its ErrorInfo, before the model is called; Ask and StreamAsk, into a
    conversation or a new one. Without a conversation nothing is stored: answered."""
    stack = await stack_factory(memory={"max_text_bytes": 256})
    await create_books(stack)
    stack.fake.reply = "short [1]"
    cid = await _conversation(stack)
    question = "Which book is set on a desert planet? " * 9  # ~340 bytes, under 32,000 chars
    requests = storing_asks(question, cid)
    for request in requests:
        ask = stack.stub.Ask if isinstance(request, gw_pb.AskRequest) else stack.stub.StreamAsk
        err = await refused_before_any_event(ask(request, metadata=ALICE))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        info = error_info(err)
        assert info.reason == "FIELD_TOO_LARGE", info
        assert info.metadata["field"] == "llm_question"
        assert info.metadata["limit_bytes"] == "256"
        assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_TEXT_BYTES"
        assert bad_request_field(err) == "llm_question"
        assert "llm_question" in (err.details() or "")
        assert stack.fake.chat_requests == [], "the model was called for a turn memory refuses"
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == [cid]  # nothing left behind

    answered = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question=question), metadata=ALICE
    )
    assert answered.answer == "short [1]" and not answered.interaction_id


async def test_a_system_prompt_memory_would_not_store_is_refused_before_any_llm_call(
    stack_factory: StackFactory,
) -> None:
    """The request's system prompt and instructions are stored as the turn's
    prompt_template: past GENSEARCH_MEMORY_MAX_PROMPT_TEMPLATE_BYTES the Ask names the
    larger of the two, with the room left for it."""
    limit = 600
    stack = await stack_factory(memory={"max_prompt_template_bytes": limit})
    await create_books(stack)
    stack.fake.reply = "short [1]"
    system_prompt = "You answer about books, briefly. " * 20  # 660 bytes
    request = gw_pb.AskRequest(
        collection="Books",
        llm_question="desert?",
        new_conversation=True,
        system_prompt=system_prompt,
        user_instructions="Cite.",
    )
    err = await refused_before_any_event(stack.stub.Ask(request, metadata=ALICE))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = error_info(err)
    assert info.metadata["field"] == "system_prompt", info
    assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_PROMPT_TEMPLATE_BYTES"
    fixed = len(PROMPT_TEMPLATE.replace("{system_prompt}", "").replace("{user_instructions}", ""))
    assert info.metadata["limit_bytes"] == str(limit - fixed - len("Cite."))
    assert stack.fake.chat_requests == []


async def test_what_the_gateway_attaches_is_cut_to_what_memory_accepts(
    stack_factory: StackFactory,
) -> None:
    """Memory set tighter than the gateway on the answer, the traces, the model name and
    the conversation name: the Ask is answered in full and its turn stored, cut to fit,
    each cut said in additional_info (memory refused the write after the answer before,
    naming response, traces, origin or name, fields the caller never sent)."""
    stack = await stack_factory(
        memory={
            "max_text_bytes": 200,
            "max_traces": 1,
            "max_origin_bytes": 4,
            "max_name_bytes": 10,
        }
    )
    await create_books(stack)
    long_answer = "Dune [1] is set on Arrakis, a desert planet. " * 20  # ~900 bytes
    stack.fake.reply = long_answer
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="Which book is set on sand?", new_conversation=True
        ),
        metadata=ALICE,
    )
    assert first.answer == long_answer  # the caller gets all of it
    stored = await _stored(stack, first.interaction_id)
    assert stored.response == long_answer.encode()[:200].decode()
    assert stored.origin == "fake"  # "fake-model" cut to 4 bytes
    assert stored.trace_count == 1  # retrieval and generation: the generation kept
    info = json_format.MessageToDict(stored.additional_info)
    assert info["response_truncated"] is True
    assert info["origin_truncated"] is True
    assert info["traces_dropped"] == 1
    traces = await stack.memory.ListInteractionTraces(
        mem_pb.ListInteractionTracesRequest(interaction_id=first.interaction_id), metadata=ALICE
    )
    assert [t.step for t in traces.traces] == [mem_pb.STEP_GENERATION]
    got = await stack.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=first.conversation_id), metadata=ALICE
    )
    assert got.conversation.name == "Which book"  # made from the question, cut to 10 bytes

    # A follow-up makes three steps (rewrite, retrieval, generation): still one stored.
    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="Who wrote it?", conversation_id=first.conversation_id
        ),
        metadata=ALICE,
    )
    assert second.interaction_id
    assert (await _stored(stack, second.interaction_id)).trace_count == 1


async def test_additional_info_and_a_page_sized_answer_are_cut(
    stack_factory: StackFactory,
) -> None:
    """additional_info over GENSEARCH_MEMORY_MAX_ADDITIONAL_INFO_BYTES loses its largest
    entries (marked additional_info_truncated); an answer that would take the interaction
    past a page (GENSEARCH_MEMORY_MAX_PAGE_BYTES) is cut so it fits."""
    stack = await stack_factory(
        memory={"max_additional_info_bytes": 100, "max_page_bytes": 64 * 1024}
    )
    await create_books(stack)
    answer = "Arrakis [1]. " * 6000  # 78,000 bytes: more than a page
    stack.fake.reply = answer
    got = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
        metadata=ALICE,
    )
    assert got.answer == answer
    stored = await _stored(stack, got.interaction_id)
    assert 0 < len(stored.response.encode()) < 64 * 1024
    assert answer.startswith(stored.response)
    assert stored.additional_info.ByteSize() <= 100
    info = json_format.MessageToDict(stored.additional_info)
    assert info.get("additional_info_truncated") is True, info


class _MemoryWithoutLimits(Relay):
    """A memory service from before InteractionLimits: every method is relayed to the
    real one, with CheckStorage's limits removed."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    async def answer(self, method: str, answer: bytes) -> bytes:
        if not method.endswith("/CheckStorage"):
            return answer
        self.checked += 1
        response = mem_pb.CheckStorageResponse.FromString(answer)
        response.ClearField("limits")
        return response.SerializeToString()


async def test_a_memory_without_limits_behaves_as_before(stack_factory: StackFactory) -> None:
    """CheckStorage without limits (an older memory during a rolling upgrade): nothing is
    checked or cut by the gateway; the turn is stored as before."""
    older = _MemoryWithoutLimits()
    async with serving(older) as address:
        stack = await stack_factory(memory_addr=address)
        older.target = f"127.0.0.1:{stack.servers['memory'].port}"
        await create_books(stack)
        stack.fake.reply = "short [1]"
        answer = await stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
            metadata=ALICE,
        )
        assert older.checked == 1
        stored = await _stored(stack, answer.interaction_id)
        assert stored.response == "short [1]" and stored.trace_count == 2


async def test_values_nested_deeper_than_memory_keeps_are_left_out(
    stack_factory: StackFactory,
) -> None:
    """GENSEARCH_MEMORY_MAX_VALUE_DEPTH below what the gateway's additional_info (its
    citations) and traces (messages sent, hits found) nest: the turn is stored without
    those entries (additional_info_truncated; the traces marked truncated), not refused
    after the answer (NESTING_TOO_DEEP naming additional_info.citations[0])."""
    stack = await stack_factory(memory={"max_value_depth": 2})
    await create_books(stack)
    stack.fake.reply = "Dune [1]."
    got = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
        metadata=ALICE,
    )
    assert got.citations and got.interaction_id
    stored = await _stored(stack, got.interaction_id)
    info = json_format.MessageToDict(stored.additional_info)
    assert "citations" not in info and info["additional_info_truncated"] is True
    assert info["hit_ids"] == [hit.id for hit in got.hits]  # two deep: kept
    traces = await stack.memory.ListInteractionTraces(
        mem_pb.ListInteractionTracesRequest(interaction_id=got.interaction_id), metadata=ALICE
    )
    retrieval, generation = traces.traces
    assert retrieval.truncated and "hits" not in retrieval.output.fields
    assert retrieval.input.fields["collection"].string_value == "Books"
    assert generation.truncated and "messages" not in generation.input.fields
    assert generation.input.fields["model"].string_value == "fake-model"


@pytest.mark.parametrize("limit", [20, 8])
async def test_the_request_id_fits_memory(stack_factory: StackFactory, limit: int) -> None:
    """The turn's request_id (32 hex digits) within GENSEARCH_MEMORY_MAX_REQUEST_ID_BYTES:
    cut to it, or none sent under 16 (too short not to repeat among an owner's turns)."""
    stack = await stack_factory(memory={"max_request_id_bytes": limit})
    await create_books(stack)
    stack.fake.reply = "short [1]"
    cid = await _conversation(stack)
    for question in ("desert?", "sand?"):
        got = await stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question=question, conversation_id=cid),
            metadata=ALICE,
        )
        assert got.interaction_id
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert [i.input for i in listed.interactions] == ["sand?", "desert?"]


async def test_a_question_larger_than_a_page_of_memory_is_refused_before_any_llm_call(
    stack_factory: StackFactory,
) -> None:
    """A question within every text limit whose turn alone is larger than memory's page
    (GENSEARCH_MEMORY_MAX_PAGE_BYTES, here 64 KiB): INVALID_ARGUMENT naming llm_question
    (INTERACTION_TOO_LARGE, with the room there is), before the model is called; memory
    refused the write after the answer, naming `input`."""
    stack = await stack_factory(
        memory={"max_page_bytes": 64 * 1024}, context_windows={"fake-model": 200_000}
    )
    await create_books(stack)
    stack.fake.reply = "short [1]"
    question = "€" * 22_000  # 66,000 bytes; 22,000 characters, under the gateway's 32,000
    err = await refused_before_any_event(
        stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books",
                llm_question=question,
                new_conversation=True,
                keyword=ret_pb.Keyword(text="desert"),  # retrieval's own limit aside
            ),
            metadata=ALICE,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = error_info(err)
    assert (info.reason, info.metadata["field"]) == ("INTERACTION_TOO_LARGE", "llm_question")
    assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_PAGE_BYTES"
    assert 60_000 < int(info.metadata["limit_bytes"]) < 66_000
    assert stack.fake.chat_requests == []


def test_an_entry_memory_refuses_as_having_no_value_is_dropped() -> None:
    """drop_unstorable drops what memory refuses: since VALUE_NOT_SET, a Value with no
    kind too (it kept it, and memory would have refused the whole turn)."""
    info = struct_pb2.Struct()
    info.update({"kept": 1, "nested": {"x": "y"}})
    info.fields["unset"].CopyFrom(struct_pb2.Value())
    info["nested"].fields["unset"].CopyFrom(struct_pb2.Value())
    assert drop_unstorable(info, 32)
    assert sorted(info.fields) == ["kept"]
