"""DeleteInteraction on the memory service: real gRPC, real Redis (standalone and a
3-master cluster), the real search engine (qdrant-edge, keyword index)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from services.memory.store import lua_source
from tests.memory.conftest import Memory, MemoryFactory, make_settings
from tests.memory.helpers import expect_error, usage_bytes
from tests.memory.test_search_interactions import (
    ALICE,
    BOB,
    as_,
    conversation,
    indexed_after_stop,
    keyword_memory,
    search,
    search_until,
    turn,
)
from tests.support.redis_relay import relaying
from tests.support.rpc import error_info


def delete(memory: Memory, iid: str, who: tuple[tuple[str, str], ...] = ALICE) -> object:
    return memory.stub.DeleteInteraction(
        pb.DeleteInteractionRequest(interaction_id=iid), metadata=who
    )


async def used_bytes(memory: Memory, who: tuple[tuple[str, str], ...] = ALICE) -> int:
    checked = await memory.stub.CheckStorage(pb.CheckStorageRequest(), metadata=who)
    return checked.used_bytes


async def keys_naming(memory: Memory, text: str) -> list[str]:
    return [
        bytes(key).decode() async for key in memory.redis.scan_iter(match=f"*{text}*", count=1000)
    ]


async def get_conversation(memory: Memory, cid: str) -> pb.GetConversationResponse:
    return await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )


async def expect_not_found(memory: Memory, iid: str, who: tuple[tuple[str, str], ...]) -> str:
    err = await expect_error(delete(memory, iid, who), grpc.StatusCode.NOT_FOUND, "interaction_id")
    info = error_info(err)
    assert info.reason == "INTERACTION_NOT_FOUND"
    assert info.metadata["interaction_id"] == iid
    return str(err.details())


async def test_a_deleted_turn_is_gone_everywhere(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await keyword_memory(memory_factory, tmp_path)
    cid = await conversation(memory, ALICE)
    first = await turn(memory, ALICE, cid, "heron nesting", "in colonies")
    second = await turn(memory, ALICE, cid, "heron diet", "fish and frogs")
    before = await used_bytes(memory)
    made = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            conversation_id=cid,
            input="zebra stripes",
            response="camouflage",
            request_id="zebra-request",
            traces=[pb.Trace(step=pb.STEP_GENERATION)],
        ),
        metadata=ALICE,
    )
    doomed = made.interaction.interaction_id
    # Never searched for after its deletion: only the deletion can drop it from the index.
    unseen = await turn(memory, ALICE, cid, "okapi habitat", "rainforest")
    assert await search_until(memory, ALICE, "zebra", [doomed]) == [doomed]
    assert await search_until(memory, ALICE, "okapi", [unseen]) == [unseen]
    with_both = await used_bytes(memory)
    assert with_both > before
    await delete(memory, unseen)

    await delete(memory, doomed)

    await expect_error(
        memory.stub.GetInteraction(pb.GetInteractionRequest(interaction_id=doomed), metadata=ALICE),
        grpc.StatusCode.NOT_FOUND,
        "interaction_id",
    )
    await expect_error(
        memory.stub.ListInteractionTraces(
            pb.ListInteractionTracesRequest(interaction_id=doomed), metadata=ALICE
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert [i.interaction_id for i in listed.interactions] == [second, first]
    got = await get_conversation(memory, cid)
    assert got.conversation.interaction_count == 2
    # Its bytes went back, exactly: the owner holds what it held before the two turns, and
    # the ids of the two deleted turns the summary did not cover, which the conversation
    # keeps for the folds (charged as its name and summary are).
    assert await used_bytes(memory) == before + len(f"{unseen} {doomed}")
    # No key names it any more (its hash, with its traces), nor its request_id.
    assert await keys_naming(memory, doomed) == []
    assert await keys_naming(memory, "zebra-request") == []
    assert await search(memory, ALICE, "zebra") == []
    # A retry after success: NOT_FOUND, as for any missing turn.
    await expect_not_found(memory, doomed, ALICE)
    # The request_id is free again: a new turn, not the deleted one returned.
    again = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            conversation_id=cid, input="zebra again", request_id="zebra-request"
        ),
        metadata=ALICE,
    )
    assert again.interaction.interaction_id != doomed

    # The index forgot both.
    count = await indexed_after_stop(memory, tmp_path, "i", [doomed, unseen, first])
    assert count == {doomed: 0, unseen: 0, first: 2}


async def test_another_owners_turn_is_not_found_like_a_missing_one(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await keyword_memory(memory_factory, tmp_path)
    cid = await conversation(memory, ALICE)
    mine = await turn(memory, ALICE, cid, "albatross wingspan", "over three metres")
    before = await used_bytes(memory)
    other_tenant = as_("alice", "globex")
    said = {
        await expect_not_found(memory, mine, BOB),
        await expect_not_found(memory, mine, other_tenant),
    }
    missing = "0190f5a8-8a3f-7cc1-9d2e-0123456789ab"
    # Word for word what a missing one gets (its id aside).
    absent = await expect_not_found(memory, missing, ALICE)
    assert said == {f"interaction_id: interaction {mine} not found"}
    assert absent == f"interaction_id: interaction {missing} not found"
    # Untouched by the refused calls.
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=mine), metadata=ALICE
    )
    assert got.interaction.input == "albatross wingspan"
    assert await used_bytes(memory) == before
    assert await search_until(memory, ALICE, "albatross", [mine]) == [mine]
    await expect_error(
        delete(memory, "not-an-id"), grpc.StatusCode.INVALID_ARGUMENT, "interaction_id"
    )
    await expect_error(delete(memory, ""), grpc.StatusCode.INVALID_ARGUMENT, "interaction_id")


async def test_the_summary_stays_and_eviction_counts_on(memory_factory: MemoryFactory) -> None:
    """The summary is not rewritten, and the conversation's turn count stays right, so
    max_turns evicts as before: the deleted turn counts no more."""
    memory = await memory_factory()
    made = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(max_turns=2), metadata=ALICE
    )
    cid = made.conversation.conversation_id
    a = await turn(memory, ALICE, cid, "a", "1")
    b = await turn(memory, ALICE, cid, "b", "2")
    await memory.stub.UpdateConversationSummary(
        pb.UpdateConversationSummaryRequest(
            conversation_id=cid, text="asked about a and b", through_interaction_id=b
        ),
        metadata=ALICE,
    )
    await delete(memory, a)
    c = await turn(memory, ALICE, cid, "c", "3")  # two turns: nothing evicted

    async def listed() -> list[str]:
        page = await memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
        )
        return [i.interaction_id for i in page.interactions]

    assert await listed() == [c, b]
    d = await turn(memory, ALICE, cid, "d", "4")  # three: the oldest, b (summarised), left
    assert await listed() == [d, c]
    got = await get_conversation(memory, cid)
    assert got.conversation.interaction_count == 2
    assert got.conversation.summary.text == "asked about a and b"


async def test_a_fold_that_read_a_turn_since_deleted_is_refused(
    memory_factory: MemoryFactory,
) -> None:
    """unfolded_deletions counts the deleted turns the summary did not cover; a summary
    update naming an older count (a fold that read the turns before a deletion) is
    ABORTED, SUMMARY_CHANGED, nothing written. Deleting a turn the summary covers already
    changes nothing for a fold."""
    memory = await memory_factory()
    cid = await conversation(memory, ALICE)
    a, b, c = [await turn(memory, ALICE, cid, q, "x") for q in ("a", "b", "c")]

    def fold(through: str, deletions: int, expected: str = "") -> object:
        """A summary up to ``through`` by a fold that read ``deletions`` first."""
        request = pb.UpdateConversationSummaryRequest(conversation_id=cid, text=f"up to {through}")
        request.expected_through_interaction_id = expected
        request.through_interaction_id = through
        request.expected_unfolded_deletions = deletions
        return memory.stub.UpdateConversationSummary(request, metadata=ALICE)

    got = await get_conversation(memory, cid)
    assert got.conversation.unfolded_deletions == 0
    negative = await expect_error(
        fold(c, -1), grpc.StatusCode.INVALID_ARGUMENT, "expected_unfolded_deletions"
    )
    assert error_info(negative).reason == "NEGATIVE_COUNT"
    await delete(memory, b)  # not summarised yet
    err = await expect_error(fold(c, 0), grpc.StatusCode.ABORTED)
    assert error_info(err).reason == "SUMMARY_CHANGED"
    got = await get_conversation(memory, cid)
    assert not got.conversation.HasField("summary")
    assert got.conversation.unfolded_deletions == 1
    done = await fold(a, 1)  # read after the deletion: stored
    assert done.conversation.summary.through_interaction_id == a
    await delete(memory, a)  # summarised already: no fold is refused for it
    done = await fold(c, 1, expected=a)
    assert done.conversation.unfolded_deletions == 1
    assert done.conversation.summary.text == f"up to {c}"


async def test_a_fold_is_refused_only_for_a_turn_it_folded(
    memory_factory: MemoryFactory,
) -> None:
    """A turn deleted while a fold runs that is newer than what the fold summarises (the
    newest turns it leaves out: a deleted last answer, say) does not refuse it: its words
    are not in the summary. Before, every deletion of an unsummarised turn refused the
    fold under way, so a conversation whose newest turns were deleted during each fold
    never got a summary. One of the folded turns deleted still refuses it, and so do more
    deletions since the fold's read than memory keeps the ids of (8)."""
    memory = await memory_factory()
    cid = await conversation(memory, ALICE)
    ids = [await turn(memory, ALICE, cid, f"q{n}", "x") for n in range(30)]

    def fold(through: int, deletions: int, expected: int | None = None) -> object:
        request = pb.UpdateConversationSummaryRequest(conversation_id=cid, text=f"to {through}")
        request.expected_through_interaction_id = "" if expected is None else ids[expected]
        request.through_interaction_id = ids[through]
        request.expected_unfolded_deletions = deletions
        return memory.stub.UpdateConversationSummary(request, metadata=ALICE)

    async def delete_all(turns: range) -> None:
        for n in turns:
            await delete(memory, ids[n])

    await delete_all(range(28, 30))  # newer than the fold's turns, deleted during it
    done = await fold(1, 0)
    assert done.conversation.summary.through_interaction_id == ids[1]
    await delete(memory, ids[2])  # one of the next fold's turns
    err = await expect_error(fold(3, 2, expected=1), grpc.StatusCode.ABORTED)
    assert error_info(err).reason == "SUMMARY_CHANGED"
    await delete_all(range(5, 13))  # 8 newer ones since the count 3 was read: all kept
    done = await fold(3, 3, expected=1)
    assert done.conversation.summary.through_interaction_id == ids[3]
    await delete_all(range(13, 22))  # 9 newer ones since the count 11 was read
    err = await expect_error(fold(4, 11, expected=3), grpc.StatusCode.ABORTED)
    assert error_info(err).reason == "SUMMARY_CHANGED"
    done = await fold(4, 20, expected=3)  # read after them
    assert done.conversation.unfolded_deletions == 20
    assert done.conversation.summary.text == "to 4"


@pytest.mark.parametrize("request_id", ["", "zebra-request"])
async def test_a_delete_with_no_slot_move_sends_only_its_three_runs(
    redis_server: RedisProcess, request_id: str
) -> None:
    """DeleteInteraction, no slot move under way, on the replica that wrote the turn: its
    script's three runs (the first asks for the turn's conversation list and the owner's
    usage, the second names the turn's request_id, the third deletes) and no other
    command. Counted from the commands that reach a real Redis through a relay. Before:
    a fourth run, as the first run's keys replaced the turn's kept conversation hash
    (``MemoryStore._run``'s hint), which the third run then asked for again; and, for a
    turn with a request_id, two EXISTS more (which of the two owners' request_id keys of
    a shared tag exists), needed only when a move refuses a run declaring a missing one."""
    deleting = False
    sent: list[str] = []
    sha = hashlib.sha1(lua_source("delete_interaction").encode()).hexdigest().encode()

    async def step(args: list[bytes]) -> None:
        # Only the owner's keys (the service's own loops use tags of their own: {deletes}).
        if deleting and any(b"{u:" in arg for arg in args):
            command = args[0].upper()
            sent.append("delete_interaction" if args[1:2] == [sha] else command.decode())

    async with relaying(redis_server.url, step) as url:
        server = await build_server(make_settings(url), port=0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.MemoryServiceStub(channel)
        redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
        try:
            made = await stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
            ask = pb.CreateInteractionRequest(
                conversation_id=made.conversation.conversation_id,
                input="zebra",
                request_id=request_id,
            )
            iid = (await stub.CreateInteraction(ask, metadata=ALICE)).interaction.interaction_id
            # Its key, and its request_id's if it has one.
            named = [f"*{iid}*"] + ([f"*:req:{request_id}"] if request_id else [])
            for pattern in named:
                assert [key async for key in redis.scan_iter(match=pattern)] != [], pattern
            deleting = True
            await stub.DeleteInteraction(
                pb.DeleteInteractionRequest(interaction_id=iid), metadata=ALICE
            )
            deleting = False
            assert sent == ["delete_interaction"] * 3
            for pattern in named:  # deleted whole (both owners' request_id keys declared)
                assert [key async for key in redis.scan_iter(match=pattern)] == [], pattern
        finally:
            await redis.aclose()
            await channel.close()
            await server.stop(0)


async def test_the_ids_of_deleted_unfolded_turns_are_charged_to_their_owner(
    memory: Memory,
) -> None:
    """The conversation keeps the ids of the last 8 deleted turns its summary does not
    cover (``unfolded_deleted``, for the folds): charged to the owner's storage as its
    name and summary are, and bounded (the last 8 only). Before, not charged: the owner's
    usage said 256 bytes for a conversation holding about 300 more."""
    cid = await conversation(memory, ALICE)
    empty = await used_bytes(memory)
    iids = [await turn(memory, ALICE, cid, f"q{n}", "a") for n in range(10)]
    for iid in iids:
        await delete(memory, iid)
    [conv] = [bytes(k).decode() async for k in memory.redis.scan_iter(match=f"*:conv:{cid}")]
    kept = await memory.redis.hget(conv, "unfolded_deleted")
    assert kept.decode().split() == iids[-8:]
    assert await used_bytes(memory) == empty + len(kept)
    field, total, measured = await usage_bytes(memory.redis, conv.partition(":conv:")[0], cid)
    assert field == total == measured
