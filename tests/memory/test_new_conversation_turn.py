"""CreateInteraction with new_conversation: the conversation and its first turn are made
in one atomic step (lua/create_interaction.lua), so no conversation exists without its
first turn: a write refused by a limit, or attempts at once with one request_id, leave
no empty conversation. On a real Redis and a real Redis Cluster, through real gRPC."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2

from tests.memory.conftest import ALICE, BOB, Memory, MemoryFactory
from tests.memory.helpers import expect_error
from tests.support.rpc import error_info


def _starting(
    question: str = "desert?", request_id: str = "", **conversation: object
) -> pb.CreateInteractionRequest:
    return pb.CreateInteractionRequest(
        input=question,
        response="Arrakis.",
        request_id=request_id,
        new_conversation=pb.CreateConversationRequest(**conversation),  # type: ignore[arg-type]
    )


async def _listed(memory: Memory, who: object = ALICE) -> list[tuple[str, int]]:
    listed = await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=who)
    return [(c.conversation_id, c.interaction_count) for c in listed.conversations]


async def test_a_turn_starts_its_conversation(memory: Memory) -> None:
    """The conversation, with the fields CreateConversation takes, holds the turn; it is
    its owner's alone: another user finds nothing (NOT_FOUND, as a missing one)."""
    request = _starting(
        name="dunes",
        ttl=duration_pb2.Duration(seconds=3600),
        max_turns=5,
        summary_disabled=True,
    )
    made = (await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction
    cid = made.conversation_id
    assert cid and made.interaction_id and made.input == "desert?"
    got = (
        await memory.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
        )
    ).conversation
    assert (got.name, got.interaction_count, got.max_turns, got.summary_disabled) == (
        "dunes",
        1,
        5,
        True,
    )
    assert got.ttl.seconds == 3600 and got.HasField("expire_time")
    listed = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert [i.interaction_id for i in listed.interactions] == [made.interaction_id]
    assert await _listed(memory) == [(cid, 1)]
    # A further turn goes into it as usual.
    await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="more?"), metadata=ALICE
    )
    assert await _listed(memory) == [(cid, 2)]
    # Bob: nothing of Alice's.
    await expect_error(
        memory.stub.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=BOB),
        grpc.StatusCode.NOT_FOUND,
        "conversation_id",
    )
    assert await _listed(memory, BOB) == []


async def test_attempts_at_once_with_one_request_id_make_one_conversation(
    memory: Memory,
) -> None:
    """Eight writes at once with one request_id, and a retry after: one conversation,
    one turn, every answer the same interaction. Another key starts another."""
    request = _starting(request_id="k")
    answers = await asyncio.gather(
        *(memory.stub.CreateInteraction(request, metadata=ALICE) for _ in range(8))
    )
    again = await memory.stub.CreateInteraction(request, metadata=ALICE)
    ids = {(a.interaction.conversation_id, a.interaction.interaction_id) for a in answers}
    ids.add((again.interaction.conversation_id, again.interaction.interaction_id))
    assert len(ids) == 1, ids
    cid = again.interaction.conversation_id
    assert await _listed(memory) == [(cid, 1)]
    other = await memory.stub.CreateInteraction(_starting(request_id="k2"), metadata=ALICE)
    assert other.interaction.conversation_id != cid
    assert sorted(await _listed(memory)) == sorted(
        [(cid, 1), (other.interaction.conversation_id, 1)]
    )


async def test_a_turn_over_a_limit_starts_nothing(memory_factory: MemoryFactory) -> None:
    """RESOURCE_EXHAUSTED as CreateConversation / CreateInteraction answer, and nothing
    written: not the conversation (which alone would fit the owner's bytes) either."""
    memory = await memory_factory(max_bytes_per_owner=4096, max_conversations_per_owner=2)
    err = await expect_error(
        memory.stub.CreateInteraction(_starting("x" * 3800), metadata=ALICE),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert error_info(err).reason == "OWNER_STORAGE_FULL"
    assert await _listed(memory) == []
    for _ in range(2):
        await memory.stub.CreateInteraction(_starting(), metadata=ALICE)
    err = await expect_error(
        memory.stub.CreateInteraction(_starting(), metadata=ALICE),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    info = error_info(err)
    assert (info.reason, info.metadata["setting"]) == (
        "OWNER_CONVERSATIONS_FULL",
        "GENSEARCH_MEMORY_MAX_CONVERSATIONS_PER_OWNER",
    )
    assert [count for _, count in await _listed(memory)] == [1, 1]


async def test_bad_new_conversation_fields_are_named(memory: Memory) -> None:
    """INVALID_ARGUMENT naming the field where the request holds it; nothing created."""
    cases = [
        (_starting(name="n" * 2000), "new_conversation.name"),
        (_starting(max_turns=-1), "new_conversation.max_turns"),
        (_starting(ttl=duration_pb2.Duration(seconds=-5)), "new_conversation.ttl"),
    ]
    both = _starting()
    both.conversation_id = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"
    cases.append((both, "new_conversation"))
    for request, field in cases:
        await expect_error(
            memory.stub.CreateInteraction(request, metadata=ALICE),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    assert await _listed(memory) == []


async def test_a_key_used_in_a_conversation_is_that_turn(memory: Memory) -> None:
    """A request_id already used for a turn of an existing conversation: that turn, no
    new conversation (as CheckStorage with no conversation_id finds it). The same turn:
    only the conversation it names may differ (docs/memory.md, request_fingerprint)."""
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    first = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            conversation_id=cid, input="desert?", response="Arrakis.", request_id="k"
        ),
        metadata=ALICE,
    )
    again = await memory.stub.CreateInteraction(_starting(request_id="k"), metadata=ALICE)
    assert again.interaction.interaction_id == first.interaction.interaction_id
    assert await _listed(memory) == [(cid, 1)]
