"""Ask and StreamAsk: a conversation over several turns (history, rewriting, storage,
citations), ownership, memory outages, the timeout and the context-window guard."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2

from services.common.auth import Identity, Role, forwarded_identity
from services.common.settings import DEFAULT_MAX_PROMPT_CHARS, MAX_QUERY_TEXT
from services.gateway.conversation import REWRITE_SYSTEM_PROMPT
from services.gateway.settings import GatewaySettings
from services.memory.__main__ import build_server as build_memory
from tests.gateway.conftest import (
    ALICE,
    BOB,
    DIM,
    TOKEN,
    Stack,
    StackFactory,
    books_ask,
    create_books,
    create_embedded,
    fake_provider,
    refused_before_any_event,
    storing_asks,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.relay import Relay, serving
from tests.support.rpc import error_info, failure_of

REWRITES = {
    "When was it written?": "Dune desert spice year",
    # Shares "second" with the question: a rewrite with no word of the question or the
    # history is rejected (services/gateway/condense.py).
    "Who wrote the second one?": "Neuromancer hacker author of the second one",
}


def scripted(body: dict[str, Any]) -> str:
    """Rewrites by table; answers cite the first result."""
    messages = body["messages"]
    if messages[0]["content"] == REWRITE_SYSTEM_PROMPT:
        question = messages[-1]["content"].split("Follow-up question: ")[1].split("\n")[0]
        return REWRITES.get(question, question)
    question = messages[-1]["content"].rsplit("Question: ", 1)[1]
    return f"Answer to {question!r} from [1] and [2]."


def _answer_requests(stack: Stack) -> list[dict[str, Any]]:
    return [
        r.json
        for r in stack.fake.chat_requests
        if r.json["messages"][0]["content"] != REWRITE_SYSTEM_PROMPT
    ]


async def test_three_turn_conversation(stack: Stack) -> None:
    ids = await create_books(stack)
    stack.fake.reply = scripted

    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="Tell me about desert planets", new_conversation=True
        ),
        metadata=ALICE,
    )
    assert first.conversation_id and first.interaction_id
    assert first.rewritten_query == ""  # no history yet: nothing to rewrite
    assert first.answer == "Answer to 'Tell me about desert planets' from [1] and [2]."
    assert first.hits[0].id == ids[0]  # keyword search on the question (no vectorizer)
    # The answer cites [1] and [2]; only numbers of hits in the prompt count.
    expected = [(n, first.hits[n - 1].id) for n in (1, 2) if n <= len(first.hits)]
    assert [(c.number, c.id) for c in first.citations] == expected
    conversation = first.conversation_id

    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="When was it written?", conversation_id=conversation
        ),
        metadata=ALICE,
    )
    # Rewritten from the history, then retrieved with the standalone query.
    assert second.rewritten_query == "Dune desert spice year"
    assert second.hits[0].id == ids[0]
    assert second.conversation_id == conversation

    third = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Who wrote the second one?",
            conversation_id=conversation,
        ),
        metadata=ALICE,
    )
    assert third.rewritten_query == REWRITES["Who wrote the second one?"]
    assert third.hits[0].id == ids[1]
    # The answer prompt: system, the two earlier turns in chronological order, question.
    sent = _answer_requests(stack)[-1]["messages"]
    assert [m["role"] for m in sent] == [
        "system", "user", "assistant", "user", "assistant", "user"
    ]  # fmt: skip
    assert sent[1]["content"] == "Tell me about desert planets"
    assert sent[2]["content"] == first.answer
    assert sent[3]["content"] == "When was it written?"
    assert sent[4]["content"] == second.answer
    assert sent[5]["content"].endswith("Question: Who wrote the second one?")
    assert "[1]\ntitle: Neuromancer\nbody: A hacker" in sent[5]["content"]
    assert third.usage.prompt_tokens > 0 and third.usage.completion_tokens > 0

    # Storage: three interactions, newest first, with what produced them.
    stored = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=conversation), metadata=ALICE
    )
    assert [i.input for i in stored.interactions] == [
        "Who wrote the second one?",
        "When was it written?",
        "Tell me about desert planets",
    ]
    latest = stored.interactions[0]
    assert latest.interaction_id == third.interaction_id
    assert latest.response == third.answer
    assert latest.origin == "fake-model"
    assert "{question}" in latest.prompt_template
    info = json_format.MessageToDict(latest.additional_info)
    assert info["rewritten_query"] == REWRITES["Who wrote the second one?"]
    assert info["hit_ids"] == [h.id for h in third.hits]
    assert info["citations"] == [{"number": c.number, "id": c.id} for c in third.citations]
    assert third.citations[0].id == third.hits[0].id
    assert info["usage"]["total_tokens"] == third.usage.total_tokens

    # Only the most recent turns go to the model: interaction_size=1 sends the third.
    await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="And the first?",
            conversation_id=conversation,
            interaction_size=1,
            rewrite_query=False,
        ),
        metadata=ALICE,
    )
    sent = _answer_requests(stack)[-1]["messages"]
    assert [m["content"] for m in sent[1:3]] == ["Who wrote the second one?", third.answer]
    assert len(sent) == 4


async def test_ask_without_memory_stores_nothing(stack: Stack) -> None:
    await create_books(stack)
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="a desert planet or a hacker?", context_size=2
        ),
        metadata=ALICE,
    )
    assert answer.interaction_id == "" and answer.conversation_id == ""
    assert len(answer.hits) == 2
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert list(listed.conversations) == []


async def test_a_long_question_searches_with_what_retrieval_takes_of_it(stack: Stack) -> None:
    """A question the gateway accepts (up to MAX_PROMPT_CHARS) but longer than a search
    text (MAX_QUERY_TEXT): the search is made with its first MAX_QUERY_TEXT characters, as
    an embedder reads only its first tokens. It was refused INVALID_ARGUMENT naming
    keyword.text, a field the caller never sent."""
    await create_books(stack)
    question = "desert " + "€" * (MAX_QUERY_TEXT + 100)
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question=question, context_size=2),
        metadata=ALICE,
    )
    assert answer.answer and answer.hits
    assert question in json.dumps(_answer_requests(stack)[-1], ensure_ascii=False)
    # The caller's own search text of that length is still theirs to be refused for.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books",
                llm_question="desert?",
                keyword=ret_pb.Keyword(text=question),
            ),
            metadata=ALICE,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == "keyword.text"


async def test_someone_elses_conversation_is_not_found(stack: Stack) -> None:
    await create_books(stack)
    made = await stack.memory.CreateConversation(
        mem_pb.CreateConversationRequest(name="alice's"), metadata=ALICE
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books",
                llm_question="What did alice ask?",
                conversation_id=made.conversation.conversation_id,
            ),
            metadata=BOB,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert stack.fake.chat_requests == []


async def test_memory_down_is_unavailable_and_nothing_generated(stack: Stack) -> None:
    await create_books(stack)
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    await stack.stop_service("memory")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books",
                llm_question="Anything?",
                conversation_id=made.conversation.conversation_id,
            ),
            metadata=ALICE,
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.fake.chat_requests == []


async def test_failed_generation_stores_no_turn(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.enqueue(Behaviour.error(400))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
            metadata=ALICE,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert list(listed.conversations) == []


async def test_an_empty_answer_does_not_break_the_conversation(stack: Stack) -> None:
    # A model that answers nothing (a refusal, tool calls, a content filter): the turn is
    # stored with an empty response. Before, every later turn of the conversation failed
    # INVALID_ARGUMENT "messages[2].content must not be empty" (its history replayed the
    # empty answer), naming a field the caller never sent, for good.
    await create_books(stack)
    stack.fake.enqueue(Behaviour.ok(text=""))
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="desert?", new_conversation=True, rewrite_query=False
        ),
        metadata=ALICE,
    )
    assert first.answer == ""
    for ask in (stack.stub.Ask, stack.stub.StreamAsk):
        request = (gw_pb.AskRequest if ask is stack.stub.Ask else gw_pb.StreamAskRequest)(
            collection="Books",
            llm_question="And the spice?",
            conversation_id=first.conversation_id,
            rewrite_query=False,
        )
        call = ask(request, metadata=ALICE)
        if ask is stack.stub.Ask:
            assert (await call).answer
        else:
            assert [event async for event in call]
        sent = stack.fake.chat_requests[-1].json["messages"]
        assert all(m["content"].strip() for m in sent)
        assert "desert?" not in [m["content"] for m in sent]  # the unanswered turn is left out


# A new conversation's turn with a timeout of 0.4 s (the model made slower than that).
TIMED_TURN: dict[str, Any] = {
    "collection": "Books",
    "llm_question": "desert?",
    "new_conversation": True,
    "timeout": duration_pb2.Duration(nanos=400_000_000),
}


def _ran_out_of_the_timeout(err: grpc.aio.AioRpcError) -> None:
    """The request's timeout ran out: the status says so and names it (it named no field)."""
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(err).metadata["field"] == "timeout"
    assert "timeout of 0.4 s" in (err.details() or "")


async def test_timeout_is_enforced(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.latency = 60
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(gw_pb.AskRequest(**TIMED_TURN), metadata=ALICE)
    # Ended by the 0.4 s timeout, not the model's 60 s (the bound was 2 s with a 5 s
    # model: little room on a loaded machine; the gateway alone enforces this timeout).
    assert time.perf_counter() - started < 20
    _ran_out_of_the_timeout(err.value)
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert list(listed.conversations) == []


async def test_stream_ask_names_the_timeout_that_ran_out(stack: Stack) -> None:
    """StreamAsk checks its budget step by step: one ran out of the request's timeout as
    DEADLINE_EXCEEDED naming no field. Now ``timeout``, as Ask's whole-turn timer does."""
    await create_books(stack)
    stack.fake.latency = 60
    call = stack.stub.StreamAsk(gw_pb.StreamAskRequest(**TIMED_TURN), metadata=ALICE, timeout=30)
    _ran_out_of_the_timeout(await failure_of(call))


def _window_ask(**fields: Any) -> gw_pb.AskRequest:
    """An Ask for the context-window guard's tests: a short question, the prompt sent
    (and what the guard trimmed) in the answer."""
    return books_ask(llm_question="desert planet spice?", debug=True, **fields)


async def test_the_guard_fits_any_model_of_a_provider_to_its_window(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    """The generation service holds every model of a provider to the provider's context
    window; the gateway fitted an Ask's prompt to it for the default model only, to the
    default window (8192) for another one: hits that fit 8192 tokens and not the
    provider's 400 failed the whole Ask (CONTEXT_WINDOW_EXCEEDED, naming ``messages``, a
    field the caller never sent). Now the guard leaves hits out, as for the default model."""
    stack = await stack_factory(
        provider=fake_provider(fake, context_window=400, models=["fake-model", "big"]),
        answer_reserve_tokens=64,
    )
    long_books = [
        {"title": f"Book {i}", "body": "desert spice " * 60, "year": 1900 + i, "tags": []}
        for i in range(5)
    ]
    await create_books(stack, books=long_books)
    answer = await stack.stub.Ask(_window_ask(llm_model="big"), metadata=ALICE, timeout=30)
    assert answer.model == "big"
    assert answer.trimmed.hits >= 1
    assert len(fake.chat_requests) == 1


async def _old_turns(stack: Stack) -> str:
    """A conversation of Alice's with four long turns; returns its id."""
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    for i in range(4):
        await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=made.conversation.conversation_id,
                input=f"old question {i} " + "word " * 40,
                response=f"old answer {i} " + "word " * 40,
            ),
            metadata=ALICE,
        )
    return made.conversation.conversation_id


async def test_context_window_guard_trims_history_then_hits(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(context_windows={"tiny": 250}, answer_reserve_tokens=64)
    await create_books(stack)
    conversation = await _old_turns(stack)
    answer = await stack.stub.Ask(
        _window_ask(llm_model="tiny-model", conversation_id=conversation, rewrite_query=False),
        metadata=ALICE,
    )
    assert answer.trimmed.history_turns == 4
    assert answer.trimmed.hits >= 1
    kept = [m.content for m in answer.prompt]
    assert not any("old question" in c for c in kept)
    assert len(answer.hits) == 5  # all retrieved hits are returned; the prompt had fewer
    assert f"[{5 - answer.trimmed.hits}]" in kept[-1]
    assert f"[{5 - answer.trimmed.hits + 1}]" not in kept[-1]

    # A roomier window keeps the most recent turns and drops the oldest first.
    stack2 = await stack_factory(context_windows={"tiny": 600}, answer_reserve_tokens=64)
    await create_books(stack2, name="Books")
    conversation2 = await _old_turns(stack2)
    roomy = await stack2.stub.Ask(
        _window_ask(llm_model="tiny-model", conversation_id=conversation2, rewrite_query=False),
        metadata=ALICE,
    )
    assert 0 < roomy.trimmed.history_turns < 4 and roomy.trimmed.hits == 0
    questions = [m.content.split(" word")[0] for m in roomy.prompt if "old question" in m.content]
    assert questions == [f"old question {i}" for i in range(roomy.trimmed.history_turns, 4)]


async def test_stream_ask(stack: Stack) -> None:
    ids = await create_books(stack)
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
    assert events[0].WhichOneof("event") == "context"
    assert events[0].context.hits[0].id == ids[0]
    assert events[-1].WhichOneof("event") == "answer"
    assert events[-2].WhichOneof("event") == "citations"  # the check, then the answer
    deltas = [e.delta for e in events[1:-2]]
    assert all(e.WhichOneof("event") == "delta" for e in events[1:-2]) and len(deltas) > 3
    answer = events[-1].answer
    assert "".join(deltas) == answer.answer
    assert answer.interaction_id and answer.conversation_id
    assert [c.number for c in answer.citations] == [1]  # [2] is not a hit it was given


async def test_ask_validation(stack: Stack) -> None:
    cases = [
        (gw_pb.AskRequest(collection="Books"), "llm_question"),
        (gw_pb.AskRequest(llm_question="q"), "collection"),
        (
            gw_pb.AskRequest(
                collection="Books", llm_question="q", conversation_id="x", new_conversation=True
            ),
            "new_conversation",
        ),
        (gw_pb.AskRequest(collection="Books", llm_question="q", context_size=-1), "context_size"),
        (
            gw_pb.AskRequest(
                collection="Books", llm_question="q", timeout=duration_pb2.Duration(seconds=-1)
            ),
            "timeout",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.stub.Ask(request, metadata=ALICE)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in (err.value.details() or ""), field


async def test_a_question_the_embeddings_endpoint_refuses_is_named_as_the_question(
    stack: Stack,
) -> None:
    """The default search embeds the question: an endpoint refusing it (HTTP 413, a text
    too long for the model) is INVALID_ARGUMENT / EMBEDDING_INPUT_REJECTED naming
    llm_question, before any LLM call. It named hybrid.text, a field the caller never
    sent. A caller's own query text is still named as the caller sent it."""
    await create_embedded(stack)
    stack.fake.max_embedding_chars = 100
    question = "Tell me about desert planets " * 10
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(
            gw_pb.AskRequest(collection="Embedded", llm_question=question), metadata=ALICE
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert (info.reason, info.metadata["field"]) == ("EMBEDDING_INPUT_REJECTED", "llm_question")
    assert info.metadata["http_status"] == "413"
    assert stack.fake.chat_requests == []
    own = gw_pb.AskRequest(collection="Embedded", llm_question="desert planets?")
    own.near_text.text = question
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(own, metadata=ALICE)
    assert error_info(err.value).metadata["field"] == "near_text.text"


async def test_default_query_is_hybrid_over_the_rewritten_question(stack: Stack) -> None:
    """A collection with an embedder (the fake's /v1/embeddings): the default retrieval
    embeds the standalone query and fuses it with keyword search."""
    await create_embedded(stack)
    objects = []
    for title in ("Dune desert spice", "Neuromancer hacker", "Emma matchmaker"):
        props = struct_pb2.Struct()
        props.update({"title": title})
        objects.append(ret_pb.DataObject(properties=props))
    await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Embedded", objects=objects), metadata=ALICE
    )
    stack.fake.reply = scripted
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Embedded",
            llm_question="Tell me about desert planets",
            new_conversation=True,
        ),
        metadata=ALICE,
    )
    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Embedded",
            llm_question="When was it written?",
            conversation_id=first.conversation_id,
        ),
        metadata=ALICE,
    )
    assert second.rewritten_query == "Dune desert spice year"
    embedded = [r.json["input"] for r in stack.fake.requests if r.path.endswith("/embeddings")]
    flat = [t for item in embedded for t in ([item] if isinstance(item, str) else item)]
    assert "Tell me about desert planets" in flat
    assert "Dune desert spice year" in flat  # the dense side used the standalone query
    assert "When was it written?" not in flat
    assert second.hits[0].properties.fields["title"].string_value == "Dune desert spice"


async def test_memory_lost_before_the_turn_is_stored(stack_factory: StackFactory) -> None:
    """Memory dies while the model answers: the caller gets UNAVAILABLE and the
    conversation is exactly as it was (read back through a fresh memory service)."""
    stack = await stack_factory()
    await create_books(stack)
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    conversation = made.conversation.conversation_id
    stopping: list[asyncio.Task[None]] = []

    def stop_memory_then_answer(body: dict[str, Any]) -> str:
        stopping.append(asyncio.ensure_future(stack.stop_service("memory")))
        return "an answer that will not be stored [1]"

    stack.fake.reply = stop_memory_then_answer
    stack.fake.latency = 0.3  # memory is gone before the answer comes back
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books", llm_question="desert?", conversation_id=conversation
            ),
            metadata=ALICE,
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.gather(*stopping)

    assert stack.memory_settings is not None
    fresh = await build_memory(stack.memory_settings, port=0)  # same Redis, same keys
    port = await fresh.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            memory = mem_grpc.MemoryServiceStub(channel)
            alice = Identity("alice", "alice", Role.ADMIN)  # GENSEARCH_API_KEYS "alice:<key>"
            identity = forwarded_identity(alice, TOKEN)
            got = await memory.GetConversation(
                mem_pb.GetConversationRequest(conversation_id=conversation), metadata=identity
            )
            assert got.conversation.interaction_count == 0
            listed = await memory.ListConversations(
                mem_pb.ListConversationsRequest(), metadata=identity
            )
            assert [c.conversation_id for c in listed.conversations] == [conversation]
    finally:
        await fresh.stop(0)


async def test_a_turn_memory_has_no_room_for_fails_the_ask(stack_factory: StackFactory) -> None:
    """Memory bounds what one user stores (docs/memory.md#storage-limits): an Ask whose
    turn it refuses fails with memory's RESOURCE_EXHAUSTED and its ErrorInfo, and leaves
    nothing behind (not even the conversation new_conversation made for it). Here the
    answer itself is what does not fit, which no check before the LLM call can know."""
    stack = await stack_factory(
        memory={"max_bytes_per_owner": 4096, "max_conversations_per_owner": 1}
    )
    await create_books(stack)
    stack.fake.reply = "a long answer [1] " + "x" * 5000  # a turn over 4096 bytes

    async def refused(request: gw_pb.AskRequest) -> error_details_pb2.ErrorInfo:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.stub.Ask(request, metadata=ALICE)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        return error_info(err.value)

    new = gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True)
    info = await refused(new)
    assert info.reason == "OWNER_STORAGE_FULL" and info.metadata["limit_bytes"] == "4096"
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    info = await refused(
        gw_pb.AskRequest(collection="Books", llm_question="desert?", conversation_id=cid)
    )
    assert info.reason == "OWNER_STORAGE_FULL"
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert [(c.conversation_id, c.interaction_count) for c in listed.conversations] == [(cid, 0)]
    # At its conversation limit, a new conversation is refused as such.
    stack.fake.reply = "short [1]"
    assert (await refused(new)).reason == "OWNER_CONVERSATIONS_FULL"


async def _fill(stack: Stack, cid: str, who: tuple[tuple[str, str], ...] = ALICE) -> None:
    """Stores turns in ``cid`` until not even a turn of one character fits the owner's
    bytes (then less room is left than a turn of that size counts, ~350 bytes)."""
    size = 2048
    while size:
        try:
            await stack.memory.CreateInteraction(
                mem_pb.CreateInteractionRequest(conversation_id=cid, input="x" * size),
                metadata=who,
            )
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            size //= 2


async def test_a_full_owner_is_refused_before_any_llm_call(stack_factory: StackFactory) -> None:
    """An owner whose memory has no room for the turn is refused with memory's
    RESOURCE_EXHAUSTED and its ErrorInfo before the gateway calls the model at all (no
    rewrite, no answer: nothing is paid for an answer that could not be stored), for Ask
    and StreamAsk, into a conversation or a new one; another owner is not affected."""
    stack = await stack_factory(
        memory={"max_bytes_per_owner": 4096, "max_conversations_per_owner": 2}
    )
    await create_books(stack)
    stack.fake.reply = "short [1]"
    question = "What does the desert planet of the book look like, and who lives there? " * 3
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    await _fill(stack, cid)
    before = len(stack.fake.chat_requests)

    requests = storing_asks(question, cid)
    for request in requests:
        ask = stack.stub.Ask if isinstance(request, gw_pb.AskRequest) else stack.stub.StreamAsk
        err = await refused_before_any_event(ask(request, metadata=ALICE))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "4096 bytes" in (err.details() or "")
        info = error_info(err)
        assert info.reason == "OWNER_STORAGE_FULL", info
        assert info.metadata["limit_bytes"] == "4096"
        assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_BYTES_PER_OWNER"
        assert len(stack.fake.chat_requests) == before, "the model was called for a full owner"
    # Nothing was stored, and no conversation was left behind.
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == [cid]

    # At its conversation limit (with room for bytes), a turn that would start a new
    # conversation is refused as such, also before any LLM call.
    await stack.memory.DeleteConversation(
        mem_pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    for _ in range(2):
        await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    err = await refused_before_any_event(
        stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question=question, new_conversation=True),
            metadata=ALICE,
        )
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).reason == "OWNER_CONVERSATIONS_FULL"
    assert len(stack.fake.chat_requests) == before

    # With room again, the same Ask is answered (one LLM call) and stored.
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    await stack.memory.DeleteConversation(
        mem_pb.DeleteConversationRequest(conversation_id=listed.conversations[0].conversation_id),
        metadata=ALICE,
    )
    answered = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question=question, new_conversation=True),
        metadata=ALICE,
    )
    assert answered.answer == "short [1]" and answered.interaction_id
    assert len(stack.fake.chat_requests) == before + 1


async def test_a_conversation_at_memorys_turn_cap_is_refused_before_any_llm_call(
    stack_factory: StackFactory,
) -> None:
    """Memory holds at most GENSEARCH_MEMORY_MAX_INTERACTIONS_PER_CONVERSATION turns in one
    conversation: an Ask or StreamAsk into one holding that many gets memory's
    RESOURCE_EXHAUSTED (CONVERSATION_INTERACTIONS_FULL) from CheckStorage, before the model
    is called; a new conversation is answered."""
    stack = await stack_factory(memory={"max_interactions_per_conversation": 2})
    await create_books(stack)
    stack.fake.reply = "short [1]"
    first = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
        metadata=ALICE,
    )
    cid = first.conversation_id
    await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="and then?", conversation_id=cid),
        metadata=ALICE,
    )
    before = len(stack.fake.chat_requests)
    for request in storing_asks("and later?", cid):
        if not request.conversation_id:
            continue  # a new conversation has room
        ask = stack.stub.Ask if isinstance(request, gw_pb.AskRequest) else stack.stub.StreamAsk
        err = await refused_before_any_event(ask(request, metadata=ALICE))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        info = error_info(err)
        assert info.reason == "CONVERSATION_INTERACTIONS_FULL", info
        assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_INTERACTIONS_PER_CONVERSATION"
        assert info.metadata["limit"] == "2" and info.metadata["conversation_id"] == cid
        assert len(stack.fake.chat_requests) == before, "the model was called"
    fresh = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
        metadata=ALICE,
    )
    assert fresh.interaction_id and fresh.conversation_id != cid


class _OlderMemory(Relay):
    """A memory service from before CheckStorage: CheckStorage is unknown
    (UNIMPLEMENTED); every other method is relayed to the real one."""

    def __init__(self) -> None:
        super().__init__()
        self.relayed: list[str] = []

    def serves(self, method: str) -> bool:
        return not method.endswith("/CheckStorage")

    def request(self, method: str, request: bytes) -> bytes:
        self.relayed.append(method.rsplit("/", 1)[1])
        return request


async def test_a_memory_without_check_storage_still_stores_turns(
    stack_factory: StackFactory,
) -> None:
    """During a rolling upgrade the gateway may meet a memory service that has no
    CheckStorage: the Ask goes on (the write still enforces memory's limits)."""
    older = _OlderMemory()
    async with serving(older) as address:
        stack = await stack_factory(memory_addr=address)
        older.target = f"127.0.0.1:{stack.servers['memory'].port}"
        await create_books(stack)
        stack.fake.reply = "short [1]"
        answer = await stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True),
            metadata=ALICE,
        )
        assert answer.interaction_id
        # The conversation is made with the turn (CreateInteraction's new_conversation).
        assert "CreateInteraction" in older.relayed
        assert "CreateConversation" not in older.relayed


@pytest.mark.parametrize("name", ["system_prompt", "user_instructions"])
async def test_a_collection_and_a_request_hold_a_system_prompt_to_one_limit(
    stack_factory: StackFactory, name: str
) -> None:
    """Before, retrieval took a collection's system_prompt and user_instructions up to 32 768
    characters and the gateway a request's up to MAX_PROMPT_CHARS, 32 000: a collection could
    hold a prompt no request could send."""
    stack = await stack_factory(default_context_window=1_000_000)
    limit = DEFAULT_MAX_PROMPT_CHARS
    assert GatewaySettings.model_fields["max_prompt_chars"].default == limit
    longest, longer = "Be brief. " * (limit // 10) + "!" * (limit % 10), "x" * (limit + 1)
    assert len(longest) == limit

    def generative(text: str) -> ret_pb.GenerativeConfig:
        config = ret_pb.GenerativeConfig(provider="fake")
        setattr(config, name, text)
        return config

    def ask(text: str) -> gw_pb.AskRequest:
        request = gw_pb.AskRequest(collection="Books", llm_question="Dune?")
        setattr(request, name, text)
        return request

    # The longest one is taken on both; one more character on neither, through the
    # gateway or straight to retrieval.
    await create_books(stack, generative=generative(longest))
    for direct in (False, True):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create_books(stack, "Longer", generative=generative(longer), direct=direct)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert (info.metadata["field"], info.metadata["max_chars"]) == (
            f"collection.generative.{name}",
            str(limit),
        )
        assert "GENSEARCH_GATEWAY_MAX_PROMPT_CHARS" in (caught.value.details() or "")
    assert (await stack.stub.Ask(ask(longest), metadata=ALICE)).answer
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Ask(ask(longer), metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Refused in the collection's shape: the request's limit is the same setting, and it
    # was not named ("system_prompt is longer than 32768 characters", field alone).
    assert dict(error_info(caught.value).metadata) == {
        "field": name,
        "max_chars": str(limit),
        "setting": "GENSEARCH_GATEWAY_MAX_PROMPT_CHARS",
    }
    assert "GENSEARCH_GATEWAY_MAX_PROMPT_CHARS" in (caught.value.details() or "")


async def test_a_gateway_holds_a_collections_system_prompt_to_its_own_limit(
    stack_factory: StackFactory,
) -> None:
    # Retrieval knows only the default; the gateway creating the collection knows its own.
    stack = await stack_factory(max_prompt_chars=1000)
    generative = ret_pb.GenerativeConfig(provider="fake", system_prompt="x" * 1001)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_books(stack, generative=generative)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert dict(info.metadata) == {
        "field": "collection.generative.system_prompt",
        "max_chars": "1000",
        "setting": "GENSEARCH_GATEWAY_MAX_PROMPT_CHARS",
    }
    await create_books(stack, generative=generative, direct=True)


async def test_a_question_the_collection_cannot_search_names_the_query(stack: Stack) -> None:
    """With no query of its own, an Ask searches its question (hybrid, or keyword on a
    collection without a vectorizer). A collection with neither a vectorizer nor a keyword
    index cannot be searched by text: that is said before any LLM call (the question
    rewrite included), naming the query the caller must give, not the `keyword` field the
    gateway made up ("collection 'X' has no keyword index", field keyword)."""
    collection = ret_pb.Collection(
        name="Vectors",
        properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
        keyword_index=False,
        generative=ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
    )
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
    )
    obj = ret_pb.DataObject(vector=[0.5] * DIM)
    obj.properties.update({"title": "Dune"})
    await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Vectors", objects=[obj]), metadata=ALICE
    )
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Vectors",
            llm_question="which book?",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            new_conversation=True,
        ),
        metadata=ALICE,
    )
    calls = len(stack.fake.chat_requests)
    for request in (
        gw_pb.AskRequest(collection="Vectors", llm_question="which book?"),
        gw_pb.AskRequest(
            collection="Vectors",
            llm_question="and the author?",
            conversation_id=first.conversation_id,  # history: a rewrite would come first
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Ask(request, metadata=ALICE)
        err = caught.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        info = error_info(err)
        assert (info.reason, info.metadata["field"]) == ("NO_KEYWORD_INDEX", "query"), info
        assert "near_vector" in err.details()
    assert len(stack.fake.chat_requests) == calls  # no rewrite, no answer


async def test_a_question_with_control_characters_names_its_conversation_without_them(
    stack: Stack,
) -> None:
    """The question is free text, kept as asked; the new conversation's name made from it
    is a display name, which memory refuses with control characters (an ESC that split()
    kept failed the Ask naming new_conversation.name, a field it never sent). Through the
    gateway a client's own name with one is refused naming ``name``."""
    await create_books(stack)
    question = "desert\x1b[31m planets\x07\x85?"
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question=question, new_conversation=True),
        metadata=ALICE,
    )
    got = await stack.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=answer.conversation_id), metadata=ALICE
    )
    assert got.conversation.name == "desert [31m planets ?"
    turns = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=answer.conversation_id), metadata=ALICE
    )
    assert turns.interactions[0].input == question
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.memory.CreateConversation(
            mem_pb.CreateConversationRequest(name="a\x1b]0;owned\x07"), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("CONTROL_CHARACTER", "name")


async def test_a_conversation_deleted_while_its_ask_answers_gets_no_turn(stack: Stack) -> None:
    """Guard (held): DeleteConversation lands while an Ask on that conversation waits for
    its answer (held on the fake's gate). The Ask is NOT_FOUND / CONVERSATION_NOT_FOUND
    naming conversation_id, and the conversation is not made again for its turn."""
    await create_books(stack)
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    stack.fake.gate = asyncio.Event()
    asked = asyncio.ensure_future(
        stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="desert?", conversation_id=cid),
            metadata=ALICE,
        )
    )
    reached = asyncio.ensure_future(stack.fake.gate_reached.wait())
    await asyncio.wait({asked, reached}, return_when=asyncio.FIRST_COMPLETED)
    assert not asked.done(), asked  # it reached the model: the turn is not stored yet
    await stack.memory.DeleteConversation(
        mem_pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    stack.fake.gate.set()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asked
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info.reason == "CONVERSATION_NOT_FOUND"
    assert info.metadata["field"] == "conversation_id"
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert list(listed.conversations) == []
