"""Retention and the rolling summary on the memory service alone: time to live (sliding,
by Redis key expiry), max_turns eviction that waits for the summary, the summary's
compare-and-set, UpdateConversation's field mask. Standalone Redis and the cluster."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2, field_mask_pb2

from services.memory import keys
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import ALICE, Memory, MemoryFactory
from tests.memory.helpers import expect_error, usage_bytes

OWNER = Owner("alice", "alice")  # the key "alice:ka" (conftest ALICE)


async def _create(memory: Memory, **fields: object) -> pb.Conversation:
    request = pb.CreateConversationRequest(name="c", **fields)  # type: ignore[arg-type]
    return (await memory.stub.CreateConversation(request, metadata=ALICE)).conversation


async def _turn(memory: Memory, cid: str, n: int) -> pb.Interaction:
    request = pb.CreateInteractionRequest(conversation_id=cid, input=f"q{n}", response=f"a{n}")
    return (await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction


async def _get(memory: Memory, cid: str) -> pb.Conversation:
    request = pb.GetConversationRequest(conversation_id=cid)
    return (await memory.stub.GetConversation(request, metadata=ALICE)).conversation


async def _inputs(memory: Memory, cid: str) -> list[str]:
    request = pb.ListInteractionsRequest(conversation_id=cid, page_size=100)
    page = await memory.stub.ListInteractions(request, metadata=ALICE)
    return [i.input for i in reversed(page.interactions)]


async def _tag_keys(memory: Memory) -> list[bytes]:
    """Every key of alice (all in one slot, so one node of a cluster holds them all)."""
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    return [k async for k in memory.redis.scan_iter(match=f"{tag}:*")]


async def _until(predicate: object, what: str, limit: float = 20.0) -> None:
    """Polls (Redis expires keys on access and in the background): no timing assertion,
    only a bound on how long the test waits for what must happen."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not await predicate():  # type: ignore[operator]
        assert loop.time() < end, f"still not {what}"
        await asyncio.sleep(0.1)


async def test_ttl_expires_the_conversation_and_everything_in_it(memory: Memory) -> None:
    kept = await _create(memory)
    await _turn(memory, kept.conversation_id, 0)
    conv = await _create(memory, ttl=duration_pb2.Duration(seconds=1))
    assert conv.ttl.seconds == 1
    assert conv.HasField("expire_time")
    cid = conv.conversation_id
    turns = [await _turn(memory, cid, n) for n in range(3)]
    assert await _inputs(memory, cid) == ["q0", "q1", "q2"]
    # Sliding: the newest turn moved the expiry on.
    later = await _get(memory, cid)
    assert later.expire_time.ToMilliseconds() >= conv.expire_time.ToMilliseconds()

    async def gone() -> bool:
        try:
            await _get(memory, cid)
        except grpc.aio.AioRpcError as err:
            return err.code() == grpc.StatusCode.NOT_FOUND
        return False

    await _until(gone, "expired")
    for turn in turns:
        await expect_error(
            memory.stub.GetInteraction(
                pb.GetInteractionRequest(interaction_id=turn.interaction_id), metadata=ALICE
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    await expect_error(
        memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == [kept.conversation_id]
    # The index entry was removed on that read, not merely skipped.
    tag = MemoryStore(memory.redis).tag(OWNER)
    members = await memory.redis.zrange(keys.conversations(tag), 0, -1)
    assert [m.decode()[16:] for m in members] == [kept.conversation_id]

    # Every key of the expired conversation goes (interaction keys up to one ttl later).
    async def only_the_kept_one_left() -> bool:
        names = {k.decode() for k in await _tag_keys(memory)}
        return not any(cid in name for name in names) and not any(
            t.interaction_id in name for t in turns for name in names
        )

    await _until(only_the_kept_one_left, "freed")
    assert await _inputs(memory, kept.conversation_id) == ["q0"]


async def test_default_ttl_and_update_with_a_field_mask(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(
        default_conversation_ttl_seconds=3600, default_conversation_max_turns=50
    )
    conv = await _create(memory)
    cid = conv.conversation_id
    assert conv.ttl.seconds == 3600 and conv.max_turns == 50
    await _turn(memory, cid, 0)
    tag = MemoryStore(memory.redis).tag(OWNER)
    assert 0 < await memory.redis.pttl(keys.conversation(tag, cid)) <= 3600_000

    # Only what the mask names changes.
    update = pb.UpdateConversationRequest(
        conversation_id=cid,
        name="not applied",
        ttl=duration_pb2.Duration(seconds=0),
        max_turns=3,
        update_mask=field_mask_pb2.FieldMask(paths=["ttl", "max_turns", "summary_disabled"]),
        summary_disabled=True,
    )
    updated = (await memory.stub.UpdateConversation(update, metadata=ALICE)).conversation
    assert updated.name == "c"
    assert not updated.HasField("expire_time") and updated.ttl.seconds == 0
    assert updated.max_turns == 3 and updated.summary_disabled
    for key in await _tag_keys(memory):
        assert await memory.redis.pttl(key) == -1, key  # no expiry left on any key

    # Without a mask, the name the request sets (AIP-134).
    renamed = (
        await memory.stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=cid, name="n2"), metadata=ALICE
        )
    ).conversation
    assert renamed.name == "n2" and renamed.max_turns == 3

    for bad, field in (
        (pb.UpdateConversationRequest(conversation_id=cid, update_mask=field_mask_pb2.FieldMask(paths=["user"])), "update_mask"),  # noqa: E501
        (pb.UpdateConversationRequest(conversation_id=cid, max_turns=-1, update_mask=field_mask_pb2.FieldMask(paths=["max_turns"])), "max_turns"),  # noqa: E501
        (pb.UpdateConversationRequest(conversation_id=cid, ttl=duration_pb2.Duration(nanos=5), update_mask=field_mask_pb2.FieldMask(paths=["ttl"])), "ttl"),  # noqa: E501
    ):  # fmt: skip
        await expect_error(
            memory.stub.UpdateConversation(bad, metadata=ALICE),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    for ttl in (
        duration_pb2.Duration(seconds=10**10),
        duration_pb2.Duration(seconds=5, nanos=-5),  # not a valid Duration: mixed signs
        # Past the limit by its nanos alone: only the seconds were compared with it.
        duration_pb2.Duration(seconds=10 * 366 * 86400, nanos=999_999_999),
    ):
        await expect_error(
            memory.stub.CreateConversation(pb.CreateConversationRequest(ttl=ttl), metadata=ALICE),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl",
        )
    at_limit = duration_pb2.Duration(seconds=10 * 366 * 86400)
    made = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(ttl=at_limit), metadata=ALICE
    )
    assert made.conversation.ttl == at_limit


async def test_an_update_without_a_mask_changes_what_it_sets(memory: Memory) -> None:
    # Without a mask only the name was applied: a request setting max_turns or ttl alone
    # answered OK, changed neither, and wiped the conversation's name.
    conv = await _create(memory)
    cid = conv.conversation_id
    update = pb.UpdateConversationRequest(
        conversation_id=cid, max_turns=7, ttl=duration_pb2.Duration(seconds=600)
    )
    updated = (await memory.stub.UpdateConversation(update, metadata=ALICE)).conversation
    assert updated.name == conv.name != ""
    assert updated.max_turns == 7 and updated.ttl.seconds == 600
    disabled = pb.UpdateConversationRequest(conversation_id=cid, summary_disabled=True)
    updated = (await memory.stub.UpdateConversation(disabled, metadata=ALICE)).conversation
    assert updated.summary_disabled and updated.name == conv.name and updated.max_turns == 7


async def test_an_update_that_sets_nothing_changes_nothing(memory: Memory) -> None:
    # Without a mask, a request setting nothing cleared the name (a special case before
    # AIP-134's rule): now it changes nothing, and a name is cleared by naming it.
    conv = await _create(memory, ttl=duration_pb2.Duration(seconds=600), max_turns=5)
    cid = conv.conversation_id
    await _turn(memory, cid, 0)
    before = await _get(memory, cid)
    for empty in (None, field_mask_pb2.FieldMask()):
        nothing = pb.UpdateConversationRequest(conversation_id=cid, update_mask=empty)
        same = (await memory.stub.UpdateConversation(nothing, metadata=ALICE)).conversation
        assert same == before and same.name == "c"
        assert await _get(memory, cid) == before  # not even update_time moved
    await expect_error(  # a conversation it cannot see is still not found
        memory.stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=str(uuid.uuid4())), metadata=ALICE
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    clear = pb.UpdateConversationRequest(
        conversation_id=cid, update_mask=field_mask_pb2.FieldMask(paths=["name"])
    )
    cleared = (await memory.stub.UpdateConversation(clear, metadata=ALICE)).conversation
    assert cleared.name == "" and cleared.max_turns == 5 and cleared.ttl.seconds == 600


async def test_max_turns_without_summary_evicts_the_oldest(memory: Memory) -> None:
    conv = await _create(memory, max_turns=3, summary_disabled=True)
    cid = conv.conversation_id
    first = await _turn(memory, cid, 0)
    for n in range(1, 5):
        await _turn(memory, cid, n)
    assert await _inputs(memory, cid) == ["q2", "q3", "q4"]
    assert (await _get(memory, cid)).interaction_count == 3
    await expect_error(
        memory.stub.GetInteraction(
            pb.GetInteractionRequest(interaction_id=first.interaction_id), metadata=ALICE
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    names = {k.decode() for k in await _tag_keys(memory)}
    assert not any(first.interaction_id in name for name in names)


async def test_eviction_frees_the_request_id_and_gives_back_the_exact_bytes(
    memory: Memory,
) -> None:
    """Eviction deletes the turns (and request_id keys) its script declared, as the store
    read them before the run (lua/retention.lua): the evicted turn's key, its request_id
    key and its bytes (data and traces) go; a request_id key naming a turn whose key is
    not there (declared on a second run) starts a new turn, stored once."""
    cid = (await _create(memory, max_turns=2, summary_disabled=True)).conversation_id
    stored = []
    for n in range(3):
        request = pb.CreateInteractionRequest(
            conversation_id=cid,
            input=f"q{n}" * 40,
            request_id=f"r{n}",
            traces=[pb.Trace(trace_number=k + 1) for k in range(n)],
        )
        stored.append((await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction)
    assert await _inputs(memory, cid) == ["q1" * 40, "q2" * 40]
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    first = stored[0].interaction_id
    assert await memory.redis.exists(keys.interaction(tag, first), keys.request(tag, "r0")) == 0
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == total == measured

    await memory.redis.set(keys.request(tag, "stale"), first)
    again = pb.CreateInteractionRequest(conversation_id=cid, input="q3", request_id="stale")
    made = (await memory.stub.CreateInteraction(again, metadata=ALICE)).interaction
    assert made.interaction_id != first
    retried = (await memory.stub.CreateInteraction(again, metadata=ALICE)).interaction
    assert retried.interaction_id == made.interaction_id
    assert await _inputs(memory, cid) == ["q2" * 40, "q3"]
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == total == measured


async def _summarise(
    memory: Memory, cid: str, expected: str, through: str, text: str, turns: int = 1
) -> pb.Conversation:
    request = pb.UpdateConversationSummaryRequest(
        conversation_id=cid,
        text=text,
        expected_through_interaction_id=expected,
        through_interaction_id=through,
        summarised_turns=turns,
        prompt_tokens=10,
        completion_tokens=3,
    )
    return (await memory.stub.UpdateConversationSummary(request, metadata=ALICE)).conversation


async def test_max_turns_evicts_only_what_the_summary_covers(memory: Memory) -> None:
    conv = await _create(memory, max_turns=2)
    cid = conv.conversation_id
    turns = [await _turn(memory, cid, n) for n in range(5)]
    # Nothing summarised yet: nothing is lost.
    assert await _inputs(memory, cid) == ["q0", "q1", "q2", "q3", "q4"]

    done = await _summarise(memory, cid, "", turns[1].interaction_id, "q0 q1", turns=2)
    assert done.summary.text == "q0 q1"
    assert done.summary.through_interaction_id == turns[1].interaction_id
    assert done.summary.summarised_turns == 2 and done.summary.folds == 1
    assert (done.summary.prompt_tokens, done.summary.completion_tokens) == (10, 3)
    # The covered turns beyond max_turns went; the uncovered q2 waits for the summary.
    assert await _inputs(memory, cid) == ["q2", "q3", "q4"]

    done = await _summarise(memory, cid, turns[1].interaction_id, turns[2].interaction_id, "s")
    assert await _inputs(memory, cid) == ["q3", "q4"]
    got = await _get(memory, cid)
    assert got.summary == done.summary and got.summary.summarised_turns == 3
    assert got.summary.evicted_unsummarised_turns == 0


async def test_eviction_grace_bounds_what_waits_for_a_summary(
    memory_factory: MemoryFactory,
) -> None:
    memory = await memory_factory(eviction_grace_turns=2)
    cid = (await _create(memory, max_turns=2)).conversation_id
    for n in range(6):
        await _turn(memory, cid, n)
    assert await _inputs(memory, cid) == ["q2", "q3", "q4", "q5"]
    got = await _get(memory, cid)
    assert got.summary.evicted_unsummarised_turns == 2
    assert got.summary.through_interaction_id == ""


async def test_summary_compare_and_set(memory: Memory) -> None:
    cid = (await _create(memory)).conversation_id
    turns = [await _turn(memory, cid, n) for n in range(4)]
    # Two folds from the same starting point at once: one wins, the other is ABORTED.
    results = await asyncio.gather(
        _summarise(memory, cid, "", turns[1].interaction_id, "first"),
        _summarise(memory, cid, "", turns[2].interaction_id, "second"),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, pb.Conversation)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert lost[0].code() == grpc.StatusCode.ABORTED
    got = await _get(memory, cid)
    assert got.summary.text == won[0].summary.text and got.summary.folds == 1

    through = got.summary.through_interaction_id
    await expect_error(  # not newer than what the summary covers
        memory.stub.UpdateConversationSummary(
            pb.UpdateConversationSummaryRequest(
                conversation_id=cid,
                text="x",
                expected_through_interaction_id=through,
                through_interaction_id=turns[0].interaction_id,
            ),
            metadata=ALICE,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "through_interaction_id",
    )
    await expect_error(  # a summary needs text
        _summarise(memory, cid, through, turns[3].interaction_id, " "),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text",
    )
    off = pb.UpdateConversationRequest(
        conversation_id=cid,
        summary_disabled=True,
        update_mask=field_mask_pb2.FieldMask(paths=["summary_disabled"]),
    )
    await memory.stub.UpdateConversation(off, metadata=ALICE)
    await expect_error(
        _summarise(memory, cid, through, turns[3].interaction_id, "x"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_concurrent_turns_lose_nothing(memory: Memory) -> None:
    cid = (await _create(memory, max_turns=1000)).conversation_id
    await asyncio.gather(*(_turn(memory, cid, n) for n in range(20)))
    assert sorted(await _inputs(memory, cid)) == sorted(f"q{n}" for n in range(20))
    assert (await _get(memory, cid)).interaction_count == 20


async def test_a_ttl_set_by_update_reaches_every_key(memory: Memory) -> None:
    cid = (await _create(memory)).conversation_id
    for n in range(3):
        await _turn(memory, cid, n)
    for key in await _tag_keys(memory):
        assert await memory.redis.pttl(key) == -1, key
    update = pb.UpdateConversationRequest(
        conversation_id=cid,
        ttl=duration_pb2.Duration(seconds=3600),
        update_mask=field_mask_pb2.FieldMask(paths=["ttl"]),
    )
    updated = (await memory.stub.UpdateConversation(update, metadata=ALICE)).conversation
    assert updated.HasField("expire_time") and updated.ttl.seconds == 3600
    tag = MemoryStore(memory.redis).tag(OWNER)
    for key in await _tag_keys(memory):
        name = key.decode()
        if name in (keys.conversations(tag), keys.usage(tag)):
            continue  # the owner's list and accounting outlive any one conversation
        # Each key of the conversation expires: its own at expire_time, interactions later.
        assert 0 < await memory.redis.pttl(key) <= 2 * 3600_000, name


async def test_a_request_id_of_an_expired_conversation_is_free_again(memory: Memory) -> None:
    """A turn is gone when its conversation hash is (its own key lives up to one ttl
    longer): its request_id then starts a new turn elsewhere, as after a delete, and
    CheckStorage and CreateInteraction agree on that (CheckStorage said "not stored", and
    the write then refused the key as used in another conversation: an Ask paid for its
    answer and failed REQUEST_ID_REUSED naming a conversation that no longer exists)."""
    expired = (await _create(memory, ttl=duration_pb2.Duration(seconds=3600))).conversation_id
    first = pb.CreateInteractionRequest(conversation_id=expired, input="q", request_id="r-1")
    await memory.stub.CreateInteraction(first, metadata=ALICE)
    # The conversation's own keys reach their expire_time; its turn's key, renewed until
    # one ttl later (retention.lua), is still there.
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    for key in (keys.conversation(tag, expired), keys.conversation_interactions(tag, expired)):
        await memory.redis.pexpire(key, 1)
    await _until(lambda: _expired(memory, expired), "expired")

    other = (await _create(memory)).conversation_id
    check = pb.CheckStorageRequest(conversation_id=other, bytes=10, request_id="r-1")
    assert not (await memory.stub.CheckStorage(check, metadata=ALICE)).HasField("interaction")
    again = pb.CreateInteractionRequest(conversation_id=other, input="q", request_id="r-1")
    stored = (await memory.stub.CreateInteraction(again, metadata=ALICE)).interaction
    assert stored.conversation_id == other
    assert await _inputs(memory, other) == ["q"]


async def _expired(memory: Memory, cid: str) -> bool:
    try:
        await _get(memory, cid)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return True
    return False
