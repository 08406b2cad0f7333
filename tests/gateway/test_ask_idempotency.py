"""Ask's request_id (docs/gateway.md, "A conversation"): a client's retry of a turn
already stored gets that turn back, with no LLM call, no search and no second write;
the same key for another question or conversation is refused before any LLM call.
Through real gRPC, memory on a real Redis (and a Redis Cluster), the loopback fake LLM."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, struct_pb2

from services.gateway import turns
from tests.gateway.conftest import (
    ALICE,
    BOB,
    Stack,
    StackFactory,
    books_ask,
    books_stream_ask,
    create_books,
    refused_before_any_event,
)
from tests.support.fake_openai import Behaviour
from tests.support.redis_cluster import LocalCluster
from tests.support.relay import Relay
from tests.support.rpc import error_info, retry_delay

ANSWER = "The desert planet is Arrakis [1]."


async def _stack(stack_factory: StackFactory, **settings: Any) -> Stack:
    stack = await stack_factory(**settings)
    await create_books(stack)
    stack.fake.reply = ANSWER
    return stack


async def _conversations(stack: Stack, who: Any = ALICE) -> list[tuple[str, int]]:
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=who)
    return [(c.conversation_id, c.interaction_count) for c in listed.conversations]


async def _refused(stack: Stack, request: Any) -> grpc.aio.AioRpcError:
    calls = len(stack.fake.chat_requests)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(request, metadata=ALICE)
    assert len(stack.fake.chat_requests) == calls, "the model was called"
    return err.value


def _same_turn(replay: gw_pb.AskResponse, first: gw_pb.AskResponse) -> None:
    assert replay.replayed and not first.replayed
    assert (replay.answer, replay.conversation_id, replay.interaction_id, replay.model) == (
        first.answer,
        first.conversation_id,
        first.interaction_id,
        first.model,
    )
    assert [h.id for h in replay.hits] == [h.id for h in first.hits]
    assert [(c.number, c.id) for c in replay.citations] == [
        (c.number, c.id) for c in first.citations
    ]
    assert replay.citation_coverage == pytest.approx(first.citation_coverage)
    assert replay.rewrite_method == first.rewrite_method
    assert replay.upstream_calls == 0 and replay.usage.total_tokens == 0


async def test_a_retry_of_a_stored_turn_replays_it(stack_factory: StackFactory) -> None:
    """new_conversation + request_id, then the same Ask again: the stored turn comes back
    marked replayed, with no LLM call and no search (the collection is gone by then), and
    memory holds one conversation with one turn. The same with conversation_id and
    StreamAsk (the answer streamed as one delta). Another caller's key of the same name is
    its own."""
    stack = await _stack(stack_factory)
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert planets?", new_conversation=True, request_id="k1"
    )
    first = await stack.stub.Ask(request, metadata=ALICE)
    assert first.interaction_id and not first.replayed and first.upstream_calls == 1
    calls = len(stack.fake.chat_requests)
    await stack.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    replay = await stack.stub.Ask(request, metadata=ALICE)
    _same_turn(replay, first)
    assert len(stack.fake.chat_requests) == calls
    assert await _conversations(stack) == [(first.conversation_id, 1)]

    await create_books(stack)
    cid = first.conversation_id
    streamed = gw_pb.StreamAskRequest(
        collection="Books", llm_question="and the hacker?", conversation_id=cid, request_id="k2"
    )
    events = [e async for e in stack.stub.StreamAsk(streamed, metadata=ALICE)]
    second = events[-1].answer
    assert not second.replayed and second.conversation_id == cid
    calls = len(stack.fake.chat_requests)
    events = [e async for e in stack.stub.StreamAsk(streamed, metadata=ALICE)]
    assert [e.WhichOneof("event") for e in events] == ["context", "delta", "citations", "answer"]
    assert events[0].context.conversation_id == cid
    assert events[1].delta == second.answer
    _same_turn(events[-1].answer, second)
    assert len(stack.fake.chat_requests) == calls
    assert await _conversations(stack) == [(cid, 2)]

    # Bob's "k1" is not Alice's: his turn is answered and stored.
    await create_books(stack, metadata=BOB)
    bobs = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="q", new_conversation=True, request_id="k1"
        ),
        metadata=BOB,
    )
    assert not bobs.replayed and bobs.conversation_id != cid
    assert len(stack.fake.chat_requests) == calls + 1


async def test_a_request_id_reused_for_another_turn_is_refused(
    stack_factory: StackFactory,
) -> None:
    """The same request_id with another question, or into another conversation, is
    INVALID_ARGUMENT / REQUEST_ID_REUSED naming request_id, before any LLM call and
    storing nothing; request_id without a stored turn (no conversation) is refused too,
    as is one longer than memory keeps."""
    stack = await _stack(stack_factory, memory={"max_request_id_bytes": 20})
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="desert?", new_conversation=True, request_id="k"
        ),
        metadata=ALICE,
    )
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    other = made.conversation.conversation_id
    cases = [
        gw_pb.AskRequest(
            collection="Books", llm_question="hacker?", new_conversation=True, request_id="k"
        ),
        gw_pb.AskRequest(
            collection="Books",
            llm_question="hacker?",
            conversation_id=first.conversation_id,
            request_id="k",
        ),
        gw_pb.AskRequest(
            collection="Books", llm_question="desert?", conversation_id=other, request_id="k"
        ),
    ]
    for request in cases:
        err = await _refused(stack, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        info = error_info(err)
        assert (info.reason, info.metadata["field"]) == ("REQUEST_ID_REUSED", "request_id")
    err = await _refused(
        stack, gw_pb.AskRequest(collection="Books", llm_question="desert?", request_id="k")
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "request_id"
    err = await _refused(
        stack,
        gw_pb.AskRequest(
            collection="Books", llm_question="desert?", new_conversation=True, request_id="k" * 21
        ),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err)
    assert (info.reason, info.metadata["field"]) == ("FIELD_TOO_LARGE", "request_id")
    assert sorted(await _conversations(stack)) == sorted([(first.conversation_id, 1), (other, 0)])


# What another request reusing a request_id with the same question may change, one field
# at a time: each decides the answer, so the turn stored for the first is not its answer.
_OTHER_REQUESTS: list[dict[str, Any]] = [
    {"collection": "Other"},
    {"system_prompt": "Answer in French."},
    {"user_instructions": "One word."},
    {"llm_model": "other-model"},
    {"provider": "other"},
    {"context_size": 1},
    {"temperature": 0.5},
    {"rewrite_query": False},
    {
        "filter": ret_pb.Filter(
            condition=ret_pb.Condition(
                property="year",
                operator=ret_pb.OPERATOR_GREATER_THAN,
                value=struct_pb2.Value(number_value=1970),
            )
        )
    },
]


async def _ask(stack: Stack, request: gw_pb.AskRequest | gw_pb.StreamAskRequest) -> Any:
    """The answer of ``request``, an Ask or a StreamAsk (its last event's)."""
    if isinstance(request, gw_pb.AskRequest):
        return await stack.stub.Ask(request, metadata=ALICE)
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    return events[-1].answer


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_id_reused_for_another_request_is_refused(
    stack_factory: StackFactory, stream: bool
) -> None:
    """The same request_id and the same question, but another collection, system prompt,
    model, provider, context size, filter…: INVALID_ARGUMENT / REQUEST_ID_REUSED naming
    request_id, before any LLM call, storing nothing, in a new conversation or an
    existing one, Ask or StreamAsk. It replayed the first request's turn: an answer over
    the wrong collection. The same request again, with only what a retry may change
    (timeout, debug), or sent the other way (StreamAsk for an Ask), is replayed."""
    stack = await _stack(stack_factory)
    await create_books(stack, "Other")
    ask = books_stream_ask if stream else books_ask
    first = await _ask(stack, ask(new_conversation=True, request_id="k"))
    assert not first.replayed and first.interaction_id
    cid = first.conversation_id
    second = await _ask(stack, ask(conversation_id=cid, request_id="k2"))
    assert not second.replayed and second.conversation_id == cid
    calls = len(stack.fake.chat_requests)
    for changed in _OTHER_REQUESTS:
        for key in (
            {"new_conversation": True, "request_id": "k"},
            {"conversation_id": cid, "request_id": "k2"},
        ):
            request = ask(**key, **changed)
            if stream:
                err = await refused_before_any_event(stack.stub.StreamAsk(request, metadata=ALICE))
            else:
                err = await refused_before_any_event(stack.stub.Ask(request, metadata=ALICE))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (changed, err)
            info = error_info(err)
            assert (info.reason, info.metadata["field"]) == ("REQUEST_ID_REUSED", "request_id")
            assert "request_id" in (err.details() or "")
    assert len(stack.fake.chat_requests) == calls, "the model was called"
    assert await _conversations(stack) == [(cid, 2)]

    # A retry: more time, debug, or the other RPC: the stored turns, no LLM call.
    retry = ask(
        new_conversation=True,
        request_id="k",
        timeout=duration_pb2.Duration(seconds=60),
        debug=True,
    )
    _same_turn(await _ask(stack, retry), first)
    other_way = books_ask if stream else books_stream_ask
    _same_turn(await _ask(stack, other_way(conversation_id=cid, request_id="k2")), second)
    # Blanks around the question: the question the turn stores, the same request.
    question = books_ask().llm_question
    spaced = ask(conversation_id=cid, request_id="k2", llm_question=f"  {question}\n")
    _same_turn(await _ask(stack, spaced), second)
    assert len(stack.fake.chat_requests) == calls
    assert await _conversations(stack) == [(cid, 2)]


async def _forget_fingerprints(stack: Stack) -> int:
    """Deletes the request fingerprint memory keeps with each stored turn, as turns stored
    before it kept them have none; how many it deleted."""
    assert stack.memory_settings is not None
    redis = aioredis.Redis.from_url(stack.memory_settings.redis_url.get_secret_value())
    try:
        prefix = stack.memory_settings.key_prefix
        deleted = 0
        async for key in redis.scan_iter(match=f"{prefix}:*:int:*"):
            deleted += await redis.hdel(key, "request_fingerprint")
        return deleted
    finally:
        await redis.aclose()


async def test_a_turn_stored_before_fingerprints_is_compared_by_its_question(
    stack_factory: StackFactory,
) -> None:
    """A turn stored before memory kept request fingerprints (or by a gateway older than
    them) has none: its key's retry is compared by the question alone, as before, so a
    client's retry across the upgrade still replays, and another question is still
    REQUEST_ID_REUSED."""
    stack = await _stack(stack_factory)
    first = await stack.stub.Ask(books_ask(new_conversation=True, request_id="k"), metadata=ALICE)
    assert await _forget_fingerprints(stack) == 1
    calls = len(stack.fake.chat_requests)
    replay = await stack.stub.Ask(
        books_ask(new_conversation=True, request_id="k", system_prompt="Be brief."),
        metadata=ALICE,
    )
    _same_turn(replay, first)
    err = await _refused(
        stack, books_ask(new_conversation=True, request_id="k", llm_question="hacker?")
    )
    assert error_info(err).reason == "REQUEST_ID_REUSED"
    assert len(stack.fake.chat_requests) == calls
    assert await _conversations(stack) == [(first.conversation_id, 1)]


async def _fill(stack: Stack, cid: str) -> None:
    """Stores turns in ``cid`` until not even a turn of one character fits."""
    size = 2048
    while size:
        try:
            await stack.memory.CreateInteraction(
                mem_pb.CreateInteractionRequest(conversation_id=cid, input="x" * size),
                metadata=ALICE,
            )
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            size //= 2


@pytest.mark.parametrize("request_id", ["k\n2026-12-04 INFO forged", "k\x00", "k é", "k\u202e"])
async def test_a_request_id_of_other_than_visible_ascii_is_refused(
    stack_factory: StackFactory, request_id: str
) -> None:
    """A control character (a forged log line), a space or non-ASCII in an Ask's
    request_id is INVALID_ARGUMENT naming request_id before any LLM call or write, in
    StreamAsk too; a UUID, as clients send, is a key like any."""
    stack = await _stack(stack_factory)
    err = await _refused(
        stack,
        gw_pb.AskRequest(
            collection="Books", llm_question="desert?", new_conversation=True, request_id=request_id
        ),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "request_id"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        stream = gw_pb.StreamAskRequest(
            collection="Books", llm_question="desert?", new_conversation=True, request_id=request_id
        )
        async for _ in stack.stub.StreamAsk(stream, metadata=ALICE):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == "request_id"
    assert await _conversations(stack) == [] and stack.fake.chat_requests == []
    uuid_key = "5b0f6c1e-9d1a-4c57-8f0e-3a2b7c1d9e40"
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, request_id=uuid_key
    )
    first = await stack.stub.Ask(request, metadata=ALICE)
    _same_turn(await stack.stub.Ask(request, metadata=ALICE), first)


async def test_a_full_owner_still_gets_its_stored_turn(stack_factory: StackFactory) -> None:
    """A retry needs no room: an owner filled up (bytes and conversations) since its turn
    was stored gets that turn back, where a new turn is RESOURCE_EXHAUSTED."""
    stack = await _stack(
        stack_factory, memory={"max_bytes_per_owner": 8192, "max_conversations_per_owner": 1}
    )
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, request_id="k"
    )
    first = await stack.stub.Ask(request, metadata=ALICE)
    await _fill(stack, first.conversation_id)
    err = await _refused(
        stack,
        gw_pb.AskRequest(
            collection="Books", llm_question="desert?", new_conversation=True, request_id="k2"
        ),
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    calls = len(stack.fake.chat_requests)
    _same_turn(await stack.stub.Ask(request, metadata=ALICE), first)
    assert len(stack.fake.chat_requests) == calls


class _Relay(Relay):
    """A memory service on loopback relaying every method to the real one; with ``old``,
    it drops CheckStorage's request_id and claim first (a memory service older than the
    fields), with ``no_claims`` only the claim;
    with ``hold``, CreateInteraction's answer is held back once the write is made (its
    caller's deadline passes while memory stores the turn)."""

    def __init__(self, *, old: bool = False, no_claims: bool = False, hold: bool = False) -> None:
        super().__init__()
        self.old = old
        self.no_claims = no_claims
        self.hold = hold
        self.stored = 0
        self.claim_seconds: list[int] = []  # CheckStorage's, as the gateway sent them

    def request(self, method: str, request: bytes) -> bytes:
        if method.endswith("/CheckStorage"):
            self.claim_seconds.append(mem_pb.CheckStorageRequest.FromString(request).claim_seconds)
        if (self.old or self.no_claims) and method.endswith("/CheckStorage"):
            check = mem_pb.CheckStorageRequest.FromString(request)
            for field in ("claim_token", "claim_seconds", "release_claim"):
                check.ClearField(field)
            if self.old:
                check.ClearField("request_id")
            return check.SerializeToString()
        return request

    async def answer(self, method: str, answer: bytes) -> bytes:
        if method.endswith("/CreateInteraction"):
            self.stored += 1
            if self.hold:
                self.hold = False
                await asyncio.sleep(30)  # cancelled when the gateway gives up
        return answer


async def _relayed(stack_factory: StackFactory, relay: _Relay, **settings: Any) -> Stack:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers((relay,))
    await server.start()
    stack = await _stack(stack_factory, memory_addr=f"127.0.0.1:{port}", **settings)
    stack.servers["relay"] = server  # type: ignore[assignment]
    relay.target = f"127.0.0.1:{stack.servers['memory'].port}"
    return stack


async def _desert_ask(stack: Stack, new: bool, request_id: str, **fields: Any) -> gw_pb.AskRequest:
    """An Ask of "desert?" with ``request_id``: starting a new conversation, or (``new``
    False) in one made for it first."""
    cid = ""
    if not new:
        made = await stack.memory.CreateConversation(
            mem_pb.CreateConversationRequest(), metadata=ALICE
        )
        cid = made.conversation.conversation_id
    return gw_pb.AskRequest(
        collection="Books",
        llm_question="desert?",
        conversation_id=cid,
        new_conversation=new,
        request_id=request_id,
        **fields,
    )


@pytest.mark.parametrize("new", [True, False])
async def test_a_deadline_passed_while_the_turn_was_stored(
    stack_factory: StackFactory, new: bool
) -> None:
    """The case request_id is for: memory stores the turn, its answer comes too late, the
    client sees DEADLINE_EXCEEDED. Its retry gets the stored turn (in the conversation the
    first attempt started, when it started one), no second LLM call, no second turn."""
    relay = _Relay(hold=True)
    stack = await _relayed(stack_factory, relay)
    request = await _desert_ask(stack, new, "retry-me")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(request, metadata=ALICE, timeout=5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert relay.stored == 1
    calls = len(stack.fake.chat_requests)
    replay = await stack.stub.Ask(request, metadata=ALICE, timeout=10)
    assert replay.replayed and replay.answer == ANSWER and replay.interaction_id
    assert len(stack.fake.chat_requests) == calls
    conversations = await _conversations(stack)
    assert conversations == [(replay.conversation_id, 1)]
    if not new:
        assert replay.conversation_id == request.conversation_id


async def test_a_memory_that_ignores_the_field_still_stores_the_turn_once(
    stack_factory: StackFactory,
) -> None:
    """During a rolling upgrade memory may not look up request_id in CheckStorage: the
    retry is answered again (an LLM call) as before, and memory's CreateInteraction still
    stores the turn once, answering with the first one. A request_id longer than that
    memory keeps is still refused before any LLM call (from its InteractionLimits)."""
    relay = _Relay(old=True)
    stack = await _relayed(stack_factory, relay, memory={"max_request_id_bytes": 20})
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    request = gw_pb.AskRequest(
        collection="Books",
        llm_question="desert?",
        conversation_id=cid,
        request_id="k",
        rewrite_query=False,
    )
    first = await stack.stub.Ask(request, metadata=ALICE)
    calls = len(stack.fake.chat_requests)
    again = await stack.stub.Ask(request, metadata=ALICE)
    assert not again.replayed and len(stack.fake.chat_requests) == calls + 1
    assert again.interaction_id == first.interaction_id
    assert await _conversations(stack) == [(cid, 1)]
    request.request_id = "k" * 21
    err = await _refused(stack, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err)
    assert (info.reason, info.metadata["field"]) == ("FIELD_TOO_LARGE", "request_id")
    assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_REQUEST_ID_BYTES"


@pytest.mark.slow
async def test_a_retry_replays_on_a_cluster(
    stack_factory: StackFactory, cluster: LocalCluster
) -> None:
    """The same with memory on Redis Cluster: the request_id's key, the interaction and
    its conversation share the owner's hash slot."""
    stack = await _stack(stack_factory, memory={"redis_url": cluster.url, "redis_cluster": True})
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, request_id="k"
    )
    first = await stack.stub.Ask(request, metadata=ALICE)
    calls = len(stack.fake.chat_requests)
    _same_turn(await stack.stub.Ask(request, metadata=ALICE), first)
    assert len(stack.fake.chat_requests) == calls
    assert await _conversations(stack) == [(first.conversation_id, 1)]
    request.llm_question = "hacker?"
    err = await _refused(stack, request)
    assert error_info(err).reason == "REQUEST_ID_REUSED"
    request.llm_question = "desert?"
    request.collection = "Other"  # the request's fingerprint, kept in the turn's slot
    err = await _refused(stack, request)
    assert error_info(err).reason == "REQUEST_ID_REUSED"
    assert await _conversations(stack) == [(first.conversation_id, 1)]


async def _race(stack: Stack, request: gw_pb.AskRequest, n: int) -> list[Any]:
    """``n`` Asks of ``request`` at once, every LLM answer held until each attempt has
    either reached the model or been answered: who gets there first does not depend on
    timing. Their answers or errors, in order."""
    stack.fake.gate = asyncio.Event()
    asks = [
        asyncio.ensure_future(stack.stub.Ask(request, metadata=ALICE, timeout=30)) for _ in range(n)
    ]
    progress = stack.fake.gate_reached
    for ask in asks:
        ask.add_done_callback(lambda _: progress.set())
    while sum(a.done() for a in asks) + stack.fake.gated < n:
        progress.clear()
        await progress.wait()
    stack.fake.gate.set()
    return await asyncio.gather(*asks, return_exceptions=True)


@pytest.mark.parametrize("new", [True, False])
async def test_attempts_at_once_make_one_answer(stack_factory: StackFactory, new: bool) -> None:
    """Three attempts with one key at once: one LLM call, one turn; the first answers
    fresh, the others are ABORTED / REQUEST_ID_IN_USE naming request_id, with RetryInfo.
    Their retry, once the first is done, replays its turn. Before: every attempt called
    the model (neither was stored when they checked), and all but one answered with the
    other's turn."""
    stack = await _stack(stack_factory)
    request = await _desert_ask(stack, new, "k")
    outcomes = await _race(stack, request, 3)
    assert len(stack.fake.chat_requests) == 1
    answers = [o for o in outcomes if isinstance(o, gw_pb.AskResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(answers) == 1 and len(refused) == 2, outcomes
    first = answers[0]
    assert not first.replayed and first.interaction_id
    for err in refused:
        assert err.code() == grpc.StatusCode.ABORTED, err
        info = error_info(err)
        assert (info.reason, info.metadata["field"]) == ("REQUEST_ID_IN_USE", "request_id")
        assert retry_delay(err) > 0
    _same_turn(await stack.stub.Ask(request, metadata=ALICE), first)
    assert len(stack.fake.chat_requests) == 1
    assert await _conversations(stack) == [(first.conversation_id, 1)]


async def test_another_question_with_a_key_in_use_is_refused(stack_factory: StackFactory) -> None:
    """While an attempt runs, the same key for another question (here streamed) is
    refused too, before any LLM call, as what it is: INVALID_ARGUMENT / REQUEST_ID_REUSED
    (memory compares it with the fingerprint the running attempt claimed the key with),
    the same answer as once the first turn is stored. Before, it was ABORTED /
    REQUEST_ID_IN_USE, and its retries could never succeed. Nothing else is stored."""
    stack = await _stack(stack_factory)
    stack.fake.gate = asyncio.Event()
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, request_id="k"
    )
    first = asyncio.ensure_future(stack.stub.Ask(request, metadata=ALICE, timeout=30))
    while not stack.fake.gated:
        stack.fake.gate_reached.clear()
        await stack.fake.gate_reached.wait()
    other = gw_pb.StreamAskRequest(
        collection="Books", llm_question="hacker?", new_conversation=True, request_id="k"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [e async for e in stack.stub.StreamAsk(other, metadata=ALICE, timeout=30)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert (info.reason, info.metadata["field"]) == ("REQUEST_ID_REUSED", "request_id")
    stack.fake.gate.set()
    answer = await first
    assert not answer.replayed and len(stack.fake.chat_requests) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [e async for e in stack.stub.StreamAsk(other, metadata=ALICE, timeout=30)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "REQUEST_ID_REUSED"
    assert len(stack.fake.chat_requests) == 1
    assert await _conversations(stack) == [(answer.conversation_id, 1)]


async def test_a_failed_attempt_frees_its_key(stack_factory: StackFactory) -> None:
    """An attempt that fails (the model down) lets go of its key at once: the client's
    retry is answered, not refused REQUEST_ID_IN_USE until the first attempt's time is
    up."""
    stack = await _stack(stack_factory)
    stack.fake.fail_next(1, Behaviour.error(400))
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, request_id="k"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(request, metadata=ALICE)
    assert err.value.code() != grpc.StatusCode.ABORTED
    await turns.cleaned_up()  # the key is let go in the background, as the Ask fails
    answer = await stack.stub.Ask(request, metadata=ALICE)
    assert not answer.replayed and answer.answer == ANSWER
    assert await _conversations(stack) == [(answer.conversation_id, 1)]


@pytest.mark.parametrize("new", [True, False])
async def test_attempts_at_once_on_a_memory_without_claims(
    stack_factory: StackFactory, new: bool
) -> None:
    """A memory service older than CheckStorage's claim (a rolling upgrade): both
    attempts pay for an answer, one turn is stored, and both answer with it; the attempt
    whose write lost is replayed (with what it spent), and the new conversation it made
    is not left behind."""
    stack = await _relayed(stack_factory, _Relay(no_claims=True))
    request = await _desert_ask(stack, new, "k", rewrite_query=False)
    answers = iter(["first answer [1]", "second answer [1]"])
    stack.fake.reply = lambda body: next(answers)
    both = await _race(stack, request, 2)
    assert len(stack.fake.chat_requests) == 2
    assert all(isinstance(a, gw_pb.AskResponse) for a in both), both
    assert len({(a.answer, a.conversation_id, a.interaction_id) for a in both}) == 1, both
    assert sorted(a.replayed for a in both) == [False, True]
    assert all(a.upstream_calls == 1 for a in both)
    assert await _conversations(stack) == [(both[0].conversation_id, 1)]


async def test_a_replay_leaves_out_additional_info_a_client_reshaped(
    stack_factory: StackFactory,
) -> None:
    """A stored turn's additional_info may be changed by its owner (UpdateInteraction): a
    citation without its number (or any entry that no longer reads as the gateway wrote
    it) is left out of the replay; it failed the retry INTERNAL (a KeyError)."""
    stack = await _stack(stack_factory)
    request = gw_pb.AskRequest(
        collection="Books", llm_question="desert planets?", new_conversation=True, request_id="k"
    )
    first = await stack.stub.Ask(request, metadata=ALICE)
    changed = mem_pb.Interaction(interaction_id=first.interaction_id)
    changed.additional_info.update({"citations": [{"id": "x"}], "trimmed": {"hits": []}})
    await stack.memory.UpdateInteraction(
        mem_pb.UpdateInteractionRequest(interaction=changed), metadata=ALICE
    )
    replay = await stack.stub.Ask(request, metadata=ALICE)
    assert replay.replayed and replay.answer == first.answer
    assert list(replay.citations) == [] and replay.trimmed.hits == 0


async def test_a_stream_ask_cancelled_mid_answer_stores_nothing_and_its_retry_one_turn(
    stack_factory: StackFactory,
) -> None:
    """The client cancels (or its connection drops) after the answer began: the LLM
    request is closed, no turn is stored (the conversation keeps none), nothing is left in
    flight; a retry with the same request_id runs afresh and stores exactly one turn, which
    a further retry replays."""
    stack = await _stack(stack_factory)
    stack.fake.reply = " ".join(f"w{i}" for i in range(200))
    stack.fake.chunk_delay = 0.05
    await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    ((conversation, _),) = await _conversations(stack)
    request = gw_pb.StreamAskRequest(
        collection="Books", llm_question="desert?", conversation_id=conversation, request_id="c1"
    )
    call = stack.stub.StreamAsk(request, metadata=ALICE)
    deltas = 0
    while deltas < 3:
        event = await call.read()
        deltas += event.WhichOneof("event") == "delta"
    call.cancel()
    await asyncio.wait_for(stack.fake.disconnected.wait(), 30)
    end = asyncio.get_running_loop().time() + 30
    while stack.gateway.call_slots.in_flight or stack.servers["generation"].call_slots.in_flight:
        assert asyncio.get_running_loop().time() < end, "a call is still being served"
        await asyncio.sleep(0.02)
    assert await _conversations(stack) == [(conversation, 0)]

    stack.fake.chunk_delay = 0
    retried = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    assert not retried[-1].answer.replayed and retried[-1].answer.interaction_id
    assert await _conversations(stack) == [(conversation, 1)]
    replay = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    assert replay[-1].answer.replayed
    assert replay[-1].answer.interaction_id == retried[-1].answer.interaction_id
    assert await _conversations(stack) == [(conversation, 1)]


@pytest.mark.parametrize("bad", ["filter", "ttl"])
async def test_a_keyed_ask_holding_what_json_cannot_carry_is_refused_as_unkeyed(
    stack_factory: StackFactory, bad: str
) -> None:
    """An Ask with request_id whose filter value is infinite, or whose semantic_cache.ttl
    is past what a Duration holds, is the same INVALID_ARGUMENT naming that field as the
    Ask without a key: its fingerprint (canonical JSON, which cannot carry them) was an
    INTERNAL error before any check named the field."""
    stack = await _stack(stack_factory)
    if bad == "filter":
        value = struct_pb2.Value(number_value=float("inf"))
        fields: dict[str, Any] = {
            "filter": ret_pb.Filter(
                condition=ret_pb.Condition(property="year", operator=1, value=value)
            )
        }
        field = "filter.condition.value"
    else:
        ttl = duration_pb2.Duration(seconds=10**12)
        fields = {"semantic_cache": gw_pb.SemanticCache(mode=1, ttl=ttl)}
        field = "semantic_cache.ttl"
    for key in ("", "k1"):
        err = await _refused(stack, books_ask(new_conversation=True, request_id=key, **fields))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (key, err.details())
        assert error_info(err).metadata["field"] == field
    assert await _conversations(stack) == []


async def test_the_longest_claim_is_a_setting(stack_factory: StackFactory) -> None:
    """An Ask claims its request_id for its time left plus ASK_CLEANUP_SECONDS, capped at
    GENSEARCH_GATEWAY_MEMORY_MAX_CLAIM_SECONDS (was a fixed 3600 mirroring memory's bound);
    memory's own bound, GENSEARCH_MEMORY_MAX_CLAIM_SECONDS, refuses more. The gateway's
    setting covers its longest Ask (MAX_ASK_TIMEOUT + ASK_CLEANUP_SECONDS, checked at
    start), so the cap never cuts a claim short of its Ask."""
    relay = _Relay()
    stack = await _relayed(
        stack_factory,
        relay,
        memory_max_claim_seconds=7,
        memory={"max_claim_seconds": 7},
        ask_timeout=5,
        max_ask_timeout=5,
        ask_cleanup_seconds=2,
    )
    request = await _desert_ask(stack, True, "capped")
    await stack.stub.Ask(request, metadata=ALICE, timeout=60)
    # The Ask's 5 s budget plus 2 s, within the 7 memory takes.
    assert relay.claim_seconds and all(2 < s <= 7 for s in relay.claim_seconds)
    # What is asked for past the setting, e.g. a deadline far off: the cap.
    far = asyncio.get_running_loop().time() + 600
    claim = turns.Claim.of("k", 2, 7)
    assert claim is not None and claim.seconds(far) == 7
