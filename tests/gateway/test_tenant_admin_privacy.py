"""A tenant's admin and another user's conversation, through the gateway: the role table
(docs/gateway.md, "Auth and keys") gives the admin no reach into another user's memory;
every memory RPC, search over turns, a replayed page token, an Ask naming the
conversation and the Ask's own prompts treat it as missing."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from tests.gateway.conftest import Stack, StackFactory, create_books
from tests.gateway.test_ask import scripted
from tests.gateway.test_tenancy import ALICE, KEYS, RITA, WES, _memory_calls
from tests.support.rpc import error_info, failure_of, whole_answer

# Rita's words: searched for, and looked for in every prompt the admin's calls send.
SECRET = "zanzibar quokka"


@pytest.fixture
async def tenant(stack_factory: StackFactory, tmp_path: Path) -> Stack:
    return await stack_factory(
        shared={"api_keys": KEYS},
        memory={"search_index": "keyword", "data_dir": tmp_path / "memory"},
    )


async def _search(s: Stack, who: object, **fields: object) -> list[str]:
    found = await s.memory.SearchInteractions(
        mem_pb.SearchInteractionsRequest(**fields),  # type: ignore[arg-type]
        metadata=who,  # type: ignore[arg-type]
    )
    return [h.interaction.interaction_id for h in found.hits]


async def _rita_finds(s: Stack, expected: list[str]) -> None:
    # The index is filled in the background: wait for the owner to find her turns, so
    # the admin's empty answer below is not just an index that has not caught up.
    for _ in range(600):
        if sorted(await _search(s, RITA, query="quokka")) == sorted(expected):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("rita's turns were never indexed")


async def test_a_tenant_admin_reaches_no_other_users_conversation(
    tenant: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A guard: each held before this test was written. No answer, and no log line of the
    four services (all at DEBUG) while the admin calls, holds rita's words or title."""
    s = tenant
    await create_books(s, metadata=ALICE)  # acme's Books, which rita (a reader) asks about
    s.fake.reply = scripted
    first = await s.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question=SECRET, new_conversation=True),
        metadata=RITA,
    )
    cid = first.conversation_id
    second = await s.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question=f"{SECRET} again", conversation_id=cid),
        metadata=RITA,
    )
    await s.memory.UpdateConversation(
        mem_pb.UpdateConversationRequest(
            conversation_id=cid, name=f"rita's {SECRET}", update_mask={"paths": ["name"]}
        ),
        metadata=RITA,
    )
    await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=RITA)
    await _rita_finds(s, [first.interaction_id, second.interaction_id])
    turns = await s.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid, page_size=1), metadata=RITA
    )
    listed = await s.memory.ListConversations(
        mem_pb.ListConversationsRequest(page_size=1), metadata=RITA
    )
    assert listed.next_page_token
    traces = await s.memory.ListInteractionTraces(
        mem_pb.ListInteractionTracesRequest(interaction_id=first.interaction_id, page_size=1),
        metadata=RITA,
    )
    assert traces.next_page_token
    before = await s.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=cid), metadata=RITA
    )
    prompts_before = len(s.fake.chat_requests)
    caplog.clear()
    caplog.set_level(logging.DEBUG)

    # Search over turns: by words, and scoped to rita's conversation (as a missing one).
    assert await _search(s, ALICE, query="quokka") == []
    assert await _search(s, ALICE, query="zanzibar", mode=mem_pb.SEARCH_MODE_KEYWORD) == []
    missing = str(uuid.uuid4())
    scoped = [
        whole_answer(
            await failure_of(
                s.memory.SearchInteractions(
                    mem_pb.SearchInteractionsRequest(query="quokka", conversation_id=c),
                    metadata=ALICE,
                )
            ),
            c,
        )
        for c in (cid, missing)
    ]
    assert scoped[0] == scoped[1]
    assert scoped[0][0] == grpc.StatusCode.NOT_FOUND

    # Listing: none of rita's, and her page token is not the admin's.
    mine = await s.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    assert list(mine.conversations) == []
    replayed = await failure_of(
        s.memory.ListConversations(
            mem_pb.ListConversationsRequest(page_size=1, page_token=listed.next_page_token),
            metadata=ALICE,
        )
    )
    assert replayed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(replayed).metadata.get("field") == "page_token"
    assert SECRET not in (replayed.details() or "")

    # Every memory call naming her conversation or turn, and Ask / StreamAsk naming it.
    iid, token = turns.interactions[0].interaction_id, turns.next_page_token
    theirs = _memory_calls(s, ALICE, cid, iid, token)
    missing_turn = str(uuid.uuid4())
    none = _memory_calls(s, ALICE, missing, missing_turn, token)
    for name, call in theirs.items():
        got = whole_answer(await failure_of(call()), cid, iid)
        assert got == whole_answer(await failure_of(none[name]()), missing, missing_turn), name
        assert got[0] in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), name
        assert SECRET not in repr(got), name
    for kind, rpc in ((gw_pb.AskRequest, s.stub.Ask), (gw_pb.StreamAskRequest, s.stub.StreamAsk)):
        answers = [
            whole_answer(
                await failure_of(
                    rpc(  # type: ignore[operator]
                        kind(collection="Books", llm_question="q", conversation_id=c),
                        metadata=ALICE,
                    )
                ),
                c,
            )
            for c in (cid, missing)
        ]
        assert answers[0] == answers[1]
        assert answers[0][0] == grpc.StatusCode.NOT_FOUND
    assert len(s.fake.chat_requests) == prompts_before

    # The admin's own conversation: no prompt it sends (rewrite, answer) holds rita's words.
    own = await s.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="quokka?", new_conversation=True),
        metadata=ALICE,
    )
    await s.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="and zanzibar?", conversation_id=own.conversation_id
        ),
        metadata=ALICE,
    )
    for request in s.fake.chat_requests[prompts_before:]:
        assert SECRET not in str(request.json)
    # Rita's page tokens of her turns and traces, replayed on the admin's own.
    for replay in (
        s.memory.ListInteractions(
            mem_pb.ListInteractionsRequest(
                conversation_id=own.conversation_id, page_token=turns.next_page_token
            ),
            metadata=ALICE,
        ),
        s.memory.ListInteractionTraces(
            mem_pb.ListInteractionTracesRequest(
                interaction_id=own.interaction_id, page_token=traces.next_page_token
            ),
            metadata=ALICE,
        ),
    ):
        refused = await failure_of(replay)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(refused).metadata.get("field") == "page_token"

    logged = [f"{r.getMessage()} {vars(r)}" for r in caplog.records]
    assert logged  # the services did log at DEBUG
    assert not [line for line in logged if SECRET in line]

    # Rita's conversation and turns are as they were.
    after = await s.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=cid), metadata=RITA
    )
    assert after == before
    await _rita_finds(s, [first.interaction_id, second.interaction_id])


async def test_anothers_request_id_is_a_fresh_one_for_the_admin(tenant: Stack) -> None:
    """Rita's request_id, reused by her tenant's admin for the same question (and by its
    writer for another): each Ask is the caller's own (a new conversation, their turn),
    never rita's stored turn, nor a refusal that tells them the id was taken. A guard."""
    s = tenant
    await create_books(s, metadata=ALICE)
    s.fake.reply = scripted
    rid = "0123456789abcdef0123456789abcdef"
    theirs = await s.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question=SECRET, new_conversation=True, request_id=rid
        ),
        metadata=RITA,
    )
    for who, question in ((ALICE, SECRET), (WES, "another question")):
        mine = await s.stub.Ask(
            gw_pb.AskRequest(
                collection="Books", llm_question=question, new_conversation=True, request_id=rid
            ),
            metadata=who,
        )
        assert mine.conversation_id != theirs.conversation_id
        assert mine.interaction_id != theirs.interaction_id
        stored = await s.memory.ListInteractions(
            mem_pb.ListInteractionsRequest(conversation_id=mine.conversation_id), metadata=who
        )
        assert [t.input for t in stored.interactions] == [question]
