"""Turns per conversation are bounded (GENSEARCH_MEMORY_MAX_INTERACTIONS_PER_CONVERSATION,
docs/memory.md#storage-limits): deleting a conversation and changing or renewing its time
to live walk all its turns in one Lua script, so without a cap one reader could block
Redis for everyone with a conversation of hundreds of thousands of tiny turns. Through
real gRPC, on a standalone Redis and on a 3-master cluster."""

from __future__ import annotations

from typing import Any

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb

from tests.memory.conftest import ALICE, Memory, MemoryFactory
from tests.memory.helpers import expect_error
from tests.support.rpc import error_info

CAP = 3


async def _conversation(memory: Memory, **fields: object) -> str:
    request = pb.CreateConversationRequest(name="c", **fields)  # type: ignore[arg-type]
    return (
        await memory.stub.CreateConversation(request, metadata=ALICE)
    ).conversation.conversation_id


def _turn(memory: Memory, cid: str, request_id: str = "") -> Any:
    request = pb.CreateInteractionRequest(conversation_id=cid, input="q", request_id=request_id)
    return memory.stub.CreateInteraction(request, metadata=ALICE)


def _check(memory: Memory, cid: str) -> Any:
    request = pb.CheckStorageRequest(conversation_id=cid, bytes=10)
    return memory.stub.CheckStorage(request, metadata=ALICE)


async def _full(call: Any, cid: str) -> None:
    err = await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
    info = error_info(err)
    assert info.reason == "CONVERSATION_INTERACTIONS_FULL", info
    assert info.metadata["limit"] == str(CAP)
    assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_INTERACTIONS_PER_CONVERSATION"
    assert info.metadata["conversation_id"] == cid


async def _count(memory: Memory, cid: str) -> int:
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    return got.conversation.interaction_count


async def test_a_conversation_holds_at_most_the_cap(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_interactions_per_conversation=CAP)
    cid = await _conversation(memory)
    stored = [(await _turn(memory, cid, f"r{n}")).interaction for n in range(CAP)]
    await _check(memory, "")  # a new conversation still fits
    await _full(_turn(memory, cid, "r-over"), cid)
    await _full(_turn(memory, cid), cid)
    # CheckStorage answers as the write would (the gateway asks it before an Ask's LLM
    # calls), and a retry of a turn already stored still gets it back.
    await _full(_check(memory, cid), cid)
    again = (await _turn(memory, cid, "r1")).interaction
    assert again.interaction_id == stored[1].interaction_id
    assert await _count(memory, cid) == CAP
    # Another conversation is not affected; deleting a turn's conversation is the way out.
    other = await _conversation(memory)
    await _turn(memory, other)
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )


async def test_max_turns_eviction_keeps_a_conversation_under_the_cap(
    memory_factory: MemoryFactory,
) -> None:
    """A conversation whose max_turns evicts its oldest turn as each new one comes goes on
    at the cap: the count does not grow."""
    memory = await memory_factory(max_interactions_per_conversation=CAP)
    off = await _conversation(memory, max_turns=CAP, summary_disabled=True)
    for _ in range(CAP + 3):
        await _turn(memory, off)
    await _check(memory, off)
    assert await _count(memory, off) == CAP

    # With the summary on, only turns the summary covers are evicted: at the cap, a turn
    # is refused until the summary covers the oldest, then accepted.
    summarised = await _conversation(memory, max_turns=CAP)
    ids = [(await _turn(memory, summarised)).interaction.interaction_id for _ in range(CAP)]
    await _full(_turn(memory, summarised), summarised)
    await memory.stub.UpdateConversationSummary(
        pb.UpdateConversationSummaryRequest(
            conversation_id=summarised, text="s", through_interaction_id=ids[0]
        ),
        metadata=ALICE,
    )
    await _check(memory, summarised)
    await _turn(memory, summarised)
    assert await _count(memory, summarised) == CAP
