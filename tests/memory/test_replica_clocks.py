"""Turns written through replicas whose clocks disagree keep the order they were written.

An interaction's id is a UUIDv7 the writing replica makes from its own clock, and the
conversation orders its turns by id (lists, history, the summary's "through", max_turns
eviction). Before, a turn written through a replica whose clock was behind the one that
wrote the turn before got the smaller id: it was listed as the older turn, a summary
already through the earlier turn counted it as covered (a fold naming it was refused
INVALID_SUMMARY_RANGE, and eviction could drop it unsummarised). Now the write refuses an
id not newer than the conversation's newest and the replica takes one after it.
Replica A is a store on the test's Redis whose clock runs a minute ahead; replica B is the
service, on its own clock.
"""

from __future__ import annotations

import time

from gensearch.memory.v1 import memory_service_pb2 as pb

from services.memory.ids import UUIDv7Generator, timestamp_ms
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import ALICE, Memory

AHEAD_NS = 60 * 1_000_000_000
OWNER = Owner("alice", "alice")  # ALICE's key: "alice:ka", alice alone in her tenant


async def test_a_turn_through_a_replica_behind_is_the_newest(memory: Memory) -> None:
    ahead = MemoryStore(
        memory.redis,
        key_prefix=memory.settings.key_prefix,
        ids=UUIDv7Generator(clock=lambda: time.time_ns() + AHEAD_NS),
    )
    s = memory.stub
    made = await s.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    first = await ahead.create_interaction(OWNER, cid, pb.Interaction(input="first"), "")
    second = (
        await s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="second"), metadata=ALICE
        )
    ).interaction
    assert second.interaction_id > first.interaction_id
    assert timestamp_ms(second.interaction_id) >= timestamp_ms(first.interaction_id)
    page = await s.ListInteractions(pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE)
    assert [i.input for i in page.interactions] == ["second", "first"]  # newest first
    # A summary through the first turn does not cover the second: a fold may name it.
    await s.UpdateConversationSummary(
        pb.UpdateConversationSummaryRequest(
            conversation_id=cid, text="one", through_interaction_id=first.interaction_id
        ),
        metadata=ALICE,
    )
    folded = await s.UpdateConversationSummary(
        pb.UpdateConversationSummaryRequest(
            conversation_id=cid,
            text="two",
            expected_through_interaction_id=first.interaction_id,
            through_interaction_id=second.interaction_id,
        ),
        metadata=ALICE,
    )
    assert folded.conversation.summary.through_interaction_id == second.interaction_id
    # The replica ahead keeps writing after both.
    third = await ahead.create_interaction(OWNER, cid, pb.Interaction(input="third"), "")
    assert third.interaction_id > second.interaction_id
