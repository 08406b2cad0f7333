"""Storage limits per owner (docs/memory.md#storage-limits): stored bytes and conversations
are bounded per user, atomically, and deletion, eviction and expiry give the room back.
Through real gRPC, on a standalone Redis and on a 3-master cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2, field_mask_pb2

from services.memory import keys
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import ALICE, BOB, Memory, MemoryFactory
from tests.memory.helpers import expect_error, rpc_error
from tests.support.rpc import error_info

# A turn of TEXT counts ~4.35 KB (its serialized data plus 256 bytes of overhead) and a
# conversation ~260 bytes: four turns fit in LIMIT with room to spare, a fifth does not.
LIMIT = 20_000
TEXT = "x" * 4000
FITS = 4
Metadata = tuple[tuple[str, str], ...]


async def _conversation(memory: Memory, who: Metadata = ALICE, **fields: object) -> str:
    request = pb.CreateConversationRequest(name="c", **fields)  # type: ignore[arg-type]
    return (
        await memory.stub.CreateConversation(request, metadata=who)
    ).conversation.conversation_id


def _turn(memory: Memory, cid: str, request_id: str = "", who: Metadata = ALICE) -> Any:
    request = pb.CreateInteractionRequest(conversation_id=cid, input=TEXT, request_id=request_id)
    return memory.stub.CreateInteraction(request, metadata=who)


async def _full(call: object, reason: str = "OWNER_STORAGE_FULL") -> None:
    err = await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED)  # type: ignore[arg-type]
    info = error_info(err)
    assert info.reason == reason, info
    if reason == "OWNER_STORAGE_FULL":
        assert info.metadata["limit_bytes"] == str(LIMIT)
        assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_BYTES_PER_OWNER"
    else:
        assert info.metadata["setting"] == "GENSEARCH_MEMORY_MAX_CONVERSATIONS_PER_OWNER"


async def _count(memory: Memory, cid: str) -> int:
    request = pb.GetConversationRequest(conversation_id=cid)
    got = await memory.stub.GetConversation(request, metadata=ALICE)
    listed = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=100), metadata=ALICE
    )
    assert got.conversation.interaction_count == len(listed.interactions)
    return len(listed.interactions)


async def _until_gone(memory: Memory, cid: str, limit: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while True:
        try:
            await memory.stub.GetConversation(
                pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
            )
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            return
        assert loop.time() < end, "the conversation did not expire"
        await asyncio.sleep(0.1)


async def test_bytes_are_bounded_per_owner(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    cid = await _conversation(memory)
    stored = [(await _turn(memory, cid, f"r{n}")).interaction for n in range(FITS)]
    await _full(_turn(memory, cid, "r-over"))
    assert await _count(memory, cid) == FITS  # nothing of the refused turn was written
    # A retry of a turn already stored answers as before, full or not.
    again = (await _turn(memory, cid, f"r{FITS - 1}")).interaction
    assert again.interaction_id == stored[-1].interaction_id
    # A new conversation still fits (a few hundred bytes); a longer summary or a larger
    # turn does not, and leaves the stored one as it was.
    await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    await _full(
        memory.stub.UpdateConversationSummary(
            pb.UpdateConversationSummaryRequest(
                conversation_id=cid, text=TEXT, through_interaction_id=stored[0].interaction_id
            ),
            metadata=ALICE,
        )
    )
    bigger = pb.Interaction(interaction_id=stored[0].interaction_id)
    bigger.additional_info.update({"note": TEXT})
    await _full(
        memory.stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=bigger, update_mask=field_mask_pb2.FieldMask(paths=["additional_info"])
            ),
            metadata=ALICE,
        )
    )
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=stored[0].interaction_id), metadata=ALICE
    )
    assert not got.interaction.HasField("additional_info")
    # Another owner is not affected.
    for _ in range(FITS):
        await _turn(memory, await _conversation(memory, BOB), who=BOB)
    # Deleting gives the bytes back.
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    other = await _conversation(memory)
    for _ in range(FITS - 1):
        await _turn(memory, other)


async def test_concurrent_turns_at_the_limit_do_not_overshoot(
    memory_factory: MemoryFactory,
) -> None:
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    cids = [await _conversation(memory), await _conversation(memory)]
    results = await asyncio.gather(
        *(_turn(memory, cids[n % 2]) for n in range(4 * FITS)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused), refused
    assert len(results) - len(refused) == FITS
    assert sum([await _count(memory, cid) for cid in cids]) == FITS


async def test_eviction_gives_bytes_back(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    capped = await _conversation(memory, max_turns=2, summary_disabled=True)
    for _ in range(3 * FITS):  # far more than the limit holds: the oldest go each time
        await _turn(memory, capped)
    assert await _count(memory, capped) == 2
    # What is left: the two kept turns, and room for two more elsewhere.
    other = await _conversation(memory)
    await _turn(memory, other)
    await _turn(memory, other)
    await _full(_turn(memory, other))


async def test_expired_conversations_give_their_room_back(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_bytes_per_owner=LIMIT, max_conversations_per_owner=2)
    short = await _conversation(memory)
    for _ in range(FITS):
        await _turn(memory, short)
    kept = await _conversation(memory)
    # Full, and nothing may expire: refused (and nothing to look for next time).
    await _full(_turn(memory, kept))
    await _full(
        memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE),
        "OWNER_CONVERSATIONS_FULL",
    )
    # Then one gets a time to live and is expired by Redis, without our code: the next
    # write that would not fit finds out.
    await memory.stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation_id=short,
            ttl=duration_pb2.Duration(seconds=1),
            update_mask=field_mask_pb2.FieldMask(paths=["ttl"]),
        ),
        metadata=ALICE,
    )
    await _full(_turn(memory, kept))
    await _until_gone(memory, short)
    for _ in range(FITS - 1):
        await _turn(memory, kept)
    await _conversation(memory)


async def test_conversations_are_bounded_per_owner(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_conversations_per_owner=3)
    cids = [await _conversation(memory) for _ in range(3)]
    err = await rpc_error(
        memory.stub.CreateConversation(pb.CreateConversationRequest(name="4th"), metadata=ALICE)
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info.reason == "OWNER_CONVERSATIONS_FULL" and info.metadata["limit"] == "3"
    listed = await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert len(listed.conversations) == 3  # the refused one left nothing
    await _conversation(memory, BOB)  # another owner is not affected
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cids[0]), metadata=ALICE
    )
    await _conversation(memory)


async def test_data_stored_before_the_accounting_is_counted_when_written(
    memory_factory: MemoryFactory,
) -> None:
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    cid = await _conversation(memory)
    for _ in range(FITS):
        await _turn(memory, cid)
    # As a conversation stored by an older version: no accounting at all.
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(
        Owner("alice", "alice")  # the key "alice:ka" (conftest ALICE)
    )
    assert await memory.redis.delete(keys.usage(tag)) == 1
    # Its first write measures it: the turns it already holds count.
    await _full(_turn(memory, cid))
    assert int(await memory.redis.hget(keys.usage(tag), cid)) > FITS * len(TEXT)
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    # Its last conversation: the count goes with it (no key left, so total 0).
    assert await memory.redis.exists(keys.usage(tag)) == 0


def _check(memory: Memory, cid: str, size: int, who: Metadata = ALICE) -> Any:
    request = pb.CheckStorageRequest(conversation_id=cid, bytes=size)
    return memory.stub.CheckStorage(request, metadata=who)


async def test_check_storage_answers_as_the_write_would(memory_factory: MemoryFactory) -> None:
    """CheckStorage (what the gateway asks before an Ask's LLM calls) refuses a turn exactly
    when CreateInteraction (or, for a new conversation, CreateConversation) would, with
    the same ErrorInfo, writes nothing, and treats another owner's conversation as missing."""
    memory = await memory_factory(max_bytes_per_owner=LIMIT, max_conversations_per_owner=2)
    cid = await _conversation(memory)
    turn = pb.Interaction(input=TEXT).ByteSize()  # as memory counts a turn of _turn's
    checked = await _check(memory, cid, turn)
    assert (checked.limit_bytes, checked.conversation_count, checked.max_conversations) == (
        LIMIT,
        1,
        2,
    )
    before = checked.used_bytes
    assert before > 0
    for n in range(FITS):
        await _check(memory, cid, turn)  # fits, and writes nothing ...
        await _turn(memory, cid, f"r{n}")  # ... so the write that follows still does
    assert (await _check(memory, cid, 0)).used_bytes > before + FITS * len(TEXT)
    # Full: refused as the write is, for this conversation and for a new one.
    await _full(_check(memory, cid, turn))
    await _full(_turn(memory, cid))
    await _full(_check(memory, "", turn))
    assert await _count(memory, cid) == FITS
    # Another owner's conversation is not found, like a missing one; its storage is its own.
    err = await expect_error(_check(memory, cid, 0, BOB), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "CONVERSATION_NOT_FOUND"
    missing = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"
    err = await expect_error(_check(memory, missing, 0), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "CONVERSATION_NOT_FOUND"
    assert (await _check(memory, "", turn, BOB)).used_bytes == 0
    # At its conversation limit, a turn that would start a new one is refused as such.
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    await _conversation(memory)
    await _conversation(memory)
    await _full(_check(memory, "", 0), "OWNER_CONVERSATIONS_FULL")
    err = await expect_error(_check(memory, "", -1), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).metadata["field"] == "bytes"


async def test_check_storage_says_what_a_turn_may_hold(memory_factory: MemoryFactory) -> None:
    """CheckStorage's answer carries the sizes CreateInteraction accepts, as configured,
    so a client (the gateway) can fit a turn before its costly work; the largest
    interaction is exactly the one the write still takes."""
    memory = await memory_factory(
        max_text_bytes=300,
        max_prompt_template_bytes=400,
        max_origin_bytes=5,
        max_additional_info_bytes=600,
        max_traces=2,
        max_trace_bytes=2048,
        max_name_bytes=7,
        max_summary_bytes=900,
        max_request_id_bytes=20,
        max_value_depth=5,
        max_page_bytes=64 * 1024,
    )
    checked = await _check(memory, "", 0)
    assert checked.HasField("limits")
    limits = checked.limits
    assert (
        limits.max_text_bytes,
        limits.max_prompt_template_bytes,
        limits.max_origin_bytes,
        limits.max_additional_info_bytes,
        limits.max_traces,
        limits.max_trace_bytes,
        limits.max_name_bytes,
        limits.max_summary_bytes,
        limits.max_request_id_bytes,
        limits.max_value_depth,
    ) == (300, 400, 5, 600, 2, 2048, 7, 900, 20, 5)
    # The largest interaction memory takes: one byte more is INTERACTION_TOO_LARGE.
    memory = await memory_factory(max_page_bytes=64 * 1024)
    largest = (await _check(memory, "", 0)).limits.max_interaction_bytes
    cid = await _conversation(memory)
    n = largest - 4  # the input's tag (1 byte) and its length (3)
    assert pb.Interaction(input="x" * n).ByteSize() == largest
    request = pb.CreateInteractionRequest(conversation_id=cid, input="x" * n)
    assert (await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction
    request.input += "x"
    err = await expect_error(
        memory.stub.CreateInteraction(request, metadata=ALICE), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_info(err).reason == "INTERACTION_TOO_LARGE"


async def test_check_storage_for_a_summary_counts_as_its_write(
    memory_factory: MemoryFactory,
) -> None:
    """CheckStorage with ``summary`` (what the gateway asks before a fold's LLM call)
    decides as UpdateConversationSummary does: only the new summary's growth over the
    current one counts, with no per-turn overhead; a shorter one always fits; the
    conversation is required."""
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    cid = await _conversation(memory)
    ids = []
    for n in range(FITS):
        ids.append((await _turn(memory, cid, f"r{n}")).interaction.interaction_id)
    used = (await _check(memory, cid, 0)).used_bytes
    room = LIMIT - used

    def check(size: int) -> Any:
        request = pb.CheckStorageRequest(conversation_id=cid, bytes=size, summary=True)
        return memory.stub.CheckStorage(request, metadata=ALICE)

    async def write(text: str, expected: str, through: str) -> Any:
        request = pb.UpdateConversationSummaryRequest(
            conversation_id=cid,
            text=text,
            expected_through_interaction_id=expected,
            through_interaction_id=through,
        )
        return await memory.stub.UpdateConversationSummary(request, metadata=ALICE)

    # Exactly the room left fits (a turn of that size would not: it counts 256 more) ...
    await check(room)
    await _full(_check(memory, cid, room))
    await _full(check(room + 1))
    # ... as the write finds it.
    await _full(write("s" * (room + 1), "", ids[0]))
    await write("s" * room, "", ids[0])
    # Full now: a summary as long as the current one, or shorter, still fits; longer not.
    await check(room)
    await check(1)
    await _full(check(room + 1))
    err = await expect_error(
        memory.stub.CheckStorage(pb.CheckStorageRequest(bytes=1, summary=True), metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "conversation_id"


async def test_check_storage_returns_the_turn_a_request_id_stored(
    memory_factory: MemoryFactory,
) -> None:
    """CheckStorage with a request_id (the gateway's, before an Ask's LLM calls) answers
    with the caller's interaction already stored with it, full owner or not, and checks
    nothing else; another conversation's is REQUEST_ID_REUSED as CreateInteraction says;
    none (another owner's, or a deleted one) leaves the usual check; too long a
    request_id is FIELD_TOO_LARGE naming it."""
    memory = await memory_factory(
        max_bytes_per_owner=LIMIT, max_conversations_per_owner=2, max_request_id_bytes=20
    )
    cid = await _conversation(memory)
    turn = pb.Interaction(input=TEXT).ByteSize()

    def check(conversation_id: str, request_id: str, who: Metadata = ALICE) -> Any:
        request = pb.CheckStorageRequest(
            conversation_id=conversation_id, bytes=turn, request_id=request_id
        )
        return memory.stub.CheckStorage(request, metadata=who)

    fresh = await check(cid, "ask-1")
    assert not fresh.HasField("interaction") and fresh.limit_bytes == LIMIT
    stored = (await _turn(memory, cid, "ask-1")).interaction
    for _ in range(FITS - 1):
        await _turn(memory, cid)
    other = await _conversation(memory)  # the owner's last conversation: at both limits
    await _full(_check(memory, cid, turn))
    for conversation_id in (cid, ""):  # "": a new conversation's turn, wherever it went
        again = await check(conversation_id, "ask-1")
        assert again.interaction == stored
        assert again.limits.max_request_id_bytes == 20
    err = await expect_error(check(other, "ask-1"), grpc.StatusCode.INVALID_ARGUMENT, "request_id")
    assert error_info(err).reason == "REQUEST_ID_REUSED"
    # Bob's request_id of the same name is his own: none stored.
    assert not (await check("", "ask-1", BOB)).HasField("interaction")
    # A request_id unknown (or whose turn is gone) leaves the usual check.
    await _full(check(cid, "ask-2"))
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert not (await check(other, "ask-1")).HasField("interaction")
    err = await expect_error(check(other, "r" * 21), grpc.StatusCode.INVALID_ARGUMENT, "request_id")
    assert error_info(err).reason == "FIELD_TOO_LARGE"
    request = pb.CheckStorageRequest(conversation_id=other, bytes=1, summary=True, request_id="x")
    await expect_error(
        memory.stub.CheckStorage(request, metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    )


async def test_check_storage_reserves_a_request_id_for_one_attempt(
    memory_factory: MemoryFactory,
) -> None:
    """CheckStorage with a claim_token (the gateway's Ask attempt): the first attempt
    reserves the key, another is told request_id_in_use, the same one renews it;
    release_claim ends only its own attempt's hold; the turn's write ends it (every
    attempt then gets the stored turn); a turn that does not fit reserves nothing; a claim
    sent wrong is INVALID_ARGUMENT naming its field."""
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    cid = await _conversation(memory)
    turn = pb.Interaction(input=TEXT).ByteSize()

    def claim(token: str, request_id: str = "k", size: int = 1, **fields: Any) -> Any:
        request = pb.CheckStorageRequest(
            conversation_id=cid,
            bytes=size,
            request_id=request_id,
            claim_token=token,
            claim_seconds=0 if fields.get("release_claim") else 60,
            **fields,
        )
        return memory.stub.CheckStorage(request, metadata=ALICE)

    first = await claim("a")
    assert not first.request_id_in_use and first.limit_bytes == LIMIT
    refused = await claim("b")
    assert refused.request_id_in_use and not refused.HasField("limits")
    assert not (await claim("a")).request_id_in_use  # its own hold: renewed
    assert not (await claim("a", "other-key")).request_id_in_use  # another key
    await claim("b", release_claim=True)  # not b's hold: nothing happens
    assert (await claim("b")).request_id_in_use
    await claim("a", release_claim=True)
    assert not (await claim("b")).request_id_in_use  # free: b holds it now
    stored = (await _turn(memory, cid, "k")).interaction
    for token in ("a", "b", "c"):
        again = await claim(token)
        assert again.interaction == stored and not again.request_id_in_use

    for _ in range(FITS - 1):
        await _turn(memory, cid)
    await _full(claim("a", "k2", turn))
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    cid = await _conversation(memory)
    assert not (await claim("b", "k2")).request_id_in_use  # the refused check held nothing

    bad = [
        (pb.CheckStorageRequest(request_id="k", claim_token="a"), "claim_seconds"),
        (
            pb.CheckStorageRequest(request_id="k", claim_token="a", claim_seconds=3601),
            "claim_seconds",
        ),
        (pb.CheckStorageRequest(claim_seconds=5), "claim_seconds"),
        (pb.CheckStorageRequest(claim_token="a", claim_seconds=5), "request_id"),
        (
            pb.CheckStorageRequest(request_id="k", claim_token="a" * 65, claim_seconds=5),
            "claim_token",
        ),
        (pb.CheckStorageRequest(request_id="k", release_claim=True), "claim_token"),
    ]
    for request, field in bad:
        await expect_error(
            memory.stub.CheckStorage(request, metadata=ALICE),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
