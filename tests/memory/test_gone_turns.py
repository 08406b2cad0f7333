"""A turn whose key is gone for good while its id is still listed (Redis evicted it under a
maxmemory-policy other than noeviction, or an operator deleted it: here by hand, with the
test's own client): no count, byte total or request_id outlives it, whichever call meets
it first (docs/memory.md#storage-key-layout). And the owner's walks of one write are
bounded linearly (store.MemoryStore._run). On a standalone server and on a cluster."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import Aborted, ResourceExhausted
from services.memory import keys
from services.memory.store import RUN_ATTEMPTS, MemoryStore, Owner, lua_source
from tests.memory.conftest import ALICE, Memory, MemoryFactory, Target
from tests.memory.helpers import (
    conversation_with_turns,
    expect_error,
    script_server,
    usage_bytes,
)
from tests.support.rpc import error_info
from tests.support.script_keys import ScriptKeys

OWNER = Owner("alice", "alice")  # the key "alice:ka": alice alone in a tenant of her name


def _store(memory: Memory, **settings: Any) -> MemoryStore:
    """A store on the test's own client, beside the service (not closed here: the fixture
    closes the client)."""
    return MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix, **settings)


def _offsets(*at: int) -> Callable[[], int]:
    """The windows' offsets of a store's calls, in order (store.MemoryStore._gone_check)."""
    left = iter(at)
    return lambda: next(left)


async def _listed(memory: Memory, tag: str, cid: str) -> list[str]:
    return [
        m.decode()
        for m in await memory.redis.zrange(keys.conversation_interactions(tag, cid), 0, -1)
    ]


async def test_get_conversation_never_counts_a_turn_that_is_gone(memory: Memory) -> None:
    """GetConversation (which the gateway reads before every Ask turn) finds the gone turn
    itself: it is dropped from the conversation with its bytes, and the count answered is
    the turns left. Before, interaction_count and the owner's bytes kept it until a
    ListInteractions read that conversation's turns."""
    cid, iids = await conversation_with_turns(memory.stub, "g", 3, ALICE)
    tag = _store(memory).tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[1]))
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert got.conversation.interaction_count == 2
    assert await _listed(memory, tag, cid) == [iids[0], iids[2]]
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total
    usage = await memory.stub.CheckStorage(
        pb.CheckStorageRequest(conversation_id=cid), metadata=ALICE
    )
    assert usage.used_bytes == measured


async def test_list_conversations_never_counts_a_turn_that_is_gone(memory: Memory) -> None:
    """A ListConversations page finds gone turns in every conversation it shows: each is
    dropped with its bytes and the page read again, so every count shown and the owner's
    total are right. Before, they kept the gone turns."""
    first, one = await conversation_with_turns(memory.stub, "a", 2, ALICE)
    second, two = await conversation_with_turns(memory.stub, "b", 3, ALICE)
    tag = _store(memory).tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, one[0]), keys.interaction(tag, two[2]))
    page = await memory.stub.ListConversations(
        pb.ListConversationsRequest(page_size=10), metadata=ALICE
    )
    counts = {c.conversation_id: c.interaction_count for c in page.conversations}
    assert counts == {first: 1, second: 2}
    assert await _listed(memory, tag, first) == [one[1]]
    assert await _listed(memory, tag, second) == two[:2]
    fields = []
    for cid in (first, second):
        field, total, measured = await usage_bytes(memory.redis, tag, cid)
        assert field == measured
        fields.append(field)
    assert total == sum(fields)


async def test_a_conversation_page_checks_a_bounded_number_of_turns(
    memory_factory: MemoryFactory,
) -> None:
    """Checking the shown conversations' turns costs O(their turns): once a page holds a
    conversation and has checked as many turns as one conversation may hold (at most
    LIST_TURNS), it ends early with a next page token. Paging still shows every
    conversation once."""
    memory = await memory_factory(max_interactions_per_conversation=3)
    made = [(await conversation_with_turns(memory.stub, f"c{n}", 3, ALICE))[0] for n in range(3)]
    seen: list[str] = []
    token = ""
    sizes = []
    while True:
        page = await memory.stub.ListConversations(
            pb.ListConversationsRequest(page_size=10, page_token=token), metadata=ALICE
        )
        seen += [c.conversation_id for c in page.conversations]
        sizes.append(len(page.conversations))
        token = page.next_page_token
        if not token:
            break
    assert seen == made[::-1]
    assert sizes[0] == 1  # its one conversation's 3 turns used the budget


async def test_get_conversation_checks_a_bounded_window_of_turns(memory: Memory) -> None:
    """GetConversation checks a window of its turns (GONE_CHECK_TURNS, here 4) from an
    offset chosen per call, wrapping past the newest: no call checks more (one that leaves
    the gone turn out answers the count as stored), and the call whose window holds it
    drops it. Before, every call checked all the turns: O(turns) per Ask. (Each call
    draws the next one's offset, so that it can name that window's turns: the first
    draws two, and the last draw here is for a call not made.)"""
    cid, iids = await conversation_with_turns(memory.stub, "w", 12, ALICE)
    store = _store(memory, gone_check_turns=4, gone_check_offsets=_offsets(0, 4, 8, 0, 9, 0, 0))
    tag = store.tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[9]))
    for _ in range(2):  # turns 0-3, then 4-7: the gone one is not looked at
        assert (await store.get_conversation(OWNER, cid)).interaction_count == 12
    # Turns 8-11 hold it: dropped, and the count read again (turns 0-3).
    assert (await store.get_conversation(OWNER, cid)).interaction_count == 11
    assert await _listed(memory, tag, cid) == iids[:9] + iids[10:]
    # Of the 11 left, a window from 9 wraps: 9, 10, then 0 and 1, where the next gone one is.
    await memory.redis.delete(keys.interaction(tag, iids[1]))
    assert (await store.get_conversation(OWNER, cid)).interaction_count == 10
    assert await _listed(memory, tag, cid) == [iids[0], *iids[2:9], *iids[10:]]


async def test_random_windows_find_a_gone_turn_within_a_bounded_number_of_reads(
    memory: Memory,
) -> None:
    """With the store's own random offsets, each GetConversation of a conversation of 20
    turns finds a given gone turn with chance 4/20: within 200 reads unless one chance in
    ~10^19. The count answered is then the turns left."""
    cid, iids = await conversation_with_turns(memory.stub, "r", 20, ALICE)
    store = _store(memory, gone_check_turns=4)
    tag = store.tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[13]))
    counts = []
    for _ in range(200):
        counts.append((await store.get_conversation(OWNER, cid)).interaction_count)
        if counts[-1] == 19:
            break
    assert counts[-1] == 19 and set(counts[:-1]) <= {20}, counts
    assert await _listed(memory, tag, cid) == iids[:13] + iids[14:]


async def test_a_conversation_page_checks_a_window_of_each_conversation(
    memory: Memory,
) -> None:
    """A ListConversations page checks a window of each conversation's turns (here 4 of
    8, from the page's offset): a page whose windows leave the gone turn out shows the count
    as stored, the one whose window holds it drops it."""
    cid, iids = await conversation_with_turns(memory.stub, "p", 8, ALICE)
    store = _store(memory, gone_check_turns=4, gone_check_offsets=_offsets(0, 4, 0))
    tag = store.tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[6]))
    page = await store.list_conversations(OWNER, 10, None)
    assert [c.interaction_count for c in page.items] == [8]
    page = await store.list_conversations(OWNER, 10, None)  # 4-7: dropped, read again
    assert [c.interaction_count for c in page.items] == [7]
    assert await _listed(memory, tag, cid) == iids[:6] + iids[7:]


async def test_a_read_meeting_a_gone_turn_while_turns_are_written_answers_as_read(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that finds a gone turn while the conversation's turns keep changing (each
    run of the chunked drop meets the conversation's bytes changed by a turn written
    before it and starts over: ABORTED) answers the conversation as it read it, as it does
    mid-reshard. The first chunk dropped the gone turn (a turn appended meanwhile does not
    change the chunk read); its bytes, counted still, are given back by a later read,
    which the drop left pending. Before, GetConversation (and the Ask that called it) and
    ListConversations failed ABORTED."""
    cid, iids = await conversation_with_turns(memory.stub, "c", 3, ALICE)
    store = _store(memory, drop_batch=2)
    tag = store.tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[1]))
    drop = store._drop_missing_script
    written = []

    async def a_turn_written_meanwhile(keys: list[str], args: list[Any]) -> Any:
        # Interleaving only (the real drop runs): another writer's turn lands between the
        # drop's read of the list and its run.
        turn = await store.create_interaction(OWNER, cid, pb.Interaction(input="x"), "")
        written.append(turn.interaction_id)
        return await drop(keys=keys, args=args)

    monkeypatch.setattr(store, "_drop_missing_script", a_turn_written_meanwhile)
    assert (await store.get_conversation(OWNER, cid)).interaction_count == 3
    assert len(written) > 2
    assert await _listed(memory, tag, cid) == [iids[0], iids[2], *written]
    assert await memory.redis.hget(keys.conversation(tag, cid), "drop_pending") == b"1"
    monkeypatch.setattr(store, "_drop_missing_script", drop)
    page = await store.list_conversations(OWNER, 10, None)
    assert [c.interaction_count for c in page.items] == [2 + len(written)]
    assert await memory.redis.hget(keys.conversation(tag, cid), "drop_pending") is None
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total


async def test_a_request_id_dies_with_its_turn(memory: Memory) -> None:
    """A request_id key naming a turn that is gone for good: the look-ups (CheckStorage's,
    stored and claimed) answer "not stored", as they did, and now delete the key, so a
    retry stores the turn again under it and no look-up meets the gone turn again. Before,
    the key lived on for its whole ttl, each look-up paying a run more to find the turn
    missing."""
    store = _store(memory)
    owner = Owner("acme", "alice")  # its request_id keys are req:, claim:
    tag = store.tag(owner)
    cid = (await store.create_conversation(owner, "r")).conversation_id
    gone = [
        await store.create_interaction(owner, cid, pb.Interaction(input=rid), rid)
        for rid in ("r1", "r2")
    ]
    for turn in gone:
        await memory.redis.delete(keys.interaction(tag, turn.interaction_id))
    assert await store.stored_request(owner, "r1") is None
    assert not await memory.redis.exists(keys.request(tag, "r1"))
    assert await store.claim_request(owner, "r2", "token", 30) is True
    assert not await memory.redis.exists(keys.request(tag, "r2"))
    assert await memory.redis.get(keys.claim(tag, "r2")) == b"token"
    again = await store.create_interaction(owner, cid, pb.Interaction(input="r1"), "r1")
    assert again.interaction_id != gone[0].interaction_id
    stored = await store.stored_request(owner, "r1")
    assert stored is not None and stored.interaction_id == again.interaction_id


async def _walks_of_a_write_at_the_limit(
    memory: Memory,
    monkeypatch: pytest.MonkeyPatch,
    conversations: int,
    after_walk: Callable[[str, list[str]], Awaitable[None]],
) -> tuple[list[int], Exception]:
    """A CheckStorage at the byte limit for the first of an owner's ``conversations``
    (its most), each walk of the owner's list (lua/reconcile.lua's whole walk) followed by
    ``after_walk(tag, conversation ids)``: the members each walk read, and the error the
    call ended in."""
    store = _store(memory, max_bytes_per_owner=20_000, max_conversations_per_owner=conversations)
    tag = store.tag(OWNER)
    cids = [
        (await store.create_conversation(OWNER, "w")).conversation_id for _ in range(conversations)
    ]
    walked: list[int] = []
    walk = store._reconcile_script

    async def walk_then(keys: list[str], args: list[Any]) -> Any:
        # Interleaving only: the real walk runs, and what follows it happens after.
        done = await walk(keys=keys, args=args)
        if args[1] == "1":
            walked.append(len(args) - 2)
            await after_walk(tag, cids)
        return done

    monkeypatch.setattr(store, "_reconcile_script", walk_then)
    with pytest.raises((Aborted, ResourceExhausted)) as ended:
        await store.check_storage(OWNER, cids[0], 20_000)
    return walked, ended.value


async def test_the_walks_of_one_write_are_bounded_linearly(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write at the byte limit stops for a walk of the owner's conversations (an
    expired one may free room: lua/usage.lua's reconcile) each time one more expired
    since the last walk. Each walk reads the whole list, so bounded by the number of
    conversations the walks of one call read O(conversations²) members; now they stop at
    the first walk that brings the members read to RUN_ATTEMPTS times the most
    conversations an owner may have (store.MemoryStore._run's budget), so less than that
    and one list more, and the call is ABORTED (retryable: what the walks dropped stays
    dropped)."""
    conversations = 30

    async def one_expires(tag: str, cids: list[str]) -> None:
        # After each walk one more conversation expires (its hash goes) and next_expiry
        # says so, as renew's expires_at would.
        listed = [m.decode()[16:] for m in await memory.redis.zrange(f"{tag}:convs", 0, -1)]
        others = [c for c in listed if c != cids[0]]
        if others:
            await memory.redis.delete(f"{tag}:conv:{others[0]}")
            await memory.redis.hset(f"{tag}:usage", "next_expiry", "0")

    walked, ended = await _walks_of_a_write_at_the_limit(
        memory, monkeypatch, conversations, one_expires
    )
    assert len(walked) > RUN_ATTEMPTS  # more walks than runs: as in a burst of expiries
    # Each walk read the list once, as long as it was then: the whole of it twice (the
    # second drops the one expired after the first), then one member fewer each time.
    assert walked == [conversations, *range(conversations, conversations - len(walked) + 1, -1)]
    # And the walks stopped at the first that reached the budget, not one later.
    assert sum(walked[:-1]) < RUN_ATTEMPTS * conversations <= sum(walked), walked
    assert isinstance(ended, Aborted)


async def test_one_write_walks_at_most_its_budget(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walks that each read the most conversations an owner may have: RUN_ATTEMPTS of
    them reach the budget (store.MemoryStore._run), and the call is ABORTED without one
    more. Before, a walk that reached the budget exactly was followed by another."""
    conversations = 5

    async def due_again(tag: str, cids: list[str]) -> None:
        # After each walk another one is due, as when a conversation expires meanwhile,
        # but the list keeps its length.
        await memory.redis.hset(f"{tag}:usage", "next_expiry", "0")

    walked, ended = await _walks_of_a_write_at_the_limit(
        memory, monkeypatch, conversations, due_again
    )
    assert isinstance(ended, Aborted)
    assert walked == [conversations] * RUN_ATTEMPTS


async def test_a_write_at_the_limit_gives_back_the_gone_turns_of_its_conversation(
    memory_factory: MemoryFactory,
) -> None:
    """A turn (and CheckStorage for it) that does not fit the owner's bytes looks for gone
    turns in its own conversation before it is refused: their bytes are given back (the
    conversation counted again, every turn declared) and the write decides again. Before,
    the gone turn kept the owner full until a read of that conversation's turns (and the
    gateway checks room for an Ask at the same time as it reads the history)."""
    memory = await memory_factory(max_bytes_per_owner=20_000)
    text = "x" * 4000  # a turn counts ~4.35 KB: four fit in 20,000 bytes, a fifth does not
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id

    def turn(n: int) -> Any:
        request = pb.CreateInteractionRequest(conversation_id=cid, input=text, request_id=f"t{n}")
        return memory.stub.CreateInteraction(request, metadata=ALICE)

    iids = [(await turn(n)).interaction.interaction_id for n in range(4)]
    check = pb.CheckStorageRequest(conversation_id=cid, bytes=len(text))
    await expect_error(
        memory.stub.CheckStorage(check, metadata=ALICE), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    tag = _store(memory).tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[1]))
    await memory.stub.CheckStorage(check, metadata=ALICE)
    iids.append((await turn(4)).interaction.interaction_id)
    assert await _listed(memory, tag, cid) == [iids[0], *iids[2:]]
    await expect_error(turn(5), grpc.StatusCode.RESOURCE_EXHAUSTED)  # full again
    # The write itself, without a CheckStorage first.
    await memory.redis.delete(keys.interaction(tag, iids[2]))
    iids.append((await turn(5)).interaction.interaction_id)
    assert await _listed(memory, tag, cid) == [iids[0], *iids[3:]]
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total
    await expect_error(turn(6), grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_a_write_at_the_limit_checks_a_window_of_its_conversation(
    memory_factory: MemoryFactory,
) -> None:
    """A write at the byte limit (here CheckStorage's) checks a window of its
    conversation's turns (here 2 of 6): one that leaves the gone turn out is refused with
    the turn still listed, the one whose window holds it has it dropped. Before, every
    refused write (each retry of a client against a full owner) checked all the turns."""
    memory = await memory_factory(max_bytes_per_owner=20_000)
    cid, iids = await conversation_with_turns(memory.stub, "l", 6, ALICE)
    store = _store(
        memory, max_bytes_per_owner=20_000, gone_check_turns=2, gone_check_offsets=_offsets(0, 4)
    )
    tag = store.tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[4]))
    with pytest.raises(ResourceExhausted):
        await store.check_storage(OWNER, cid, 20_000)
    assert await _listed(memory, tag, cid) == iids  # turns 0-1: not looked at
    with pytest.raises(ResourceExhausted):
        await store.check_storage(OWNER, cid, 20_000)
    assert await _listed(memory, tag, cid) == iids[:4] + iids[5:]
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total


async def test_many_gone_turns_are_dropped_in_runs_of_a_bounded_chunk(
    memory: Memory, target: Target
) -> None:
    """Most turns of a long conversation gone at once (here 40 of 60, in chunks of 7 turns
    per run; DROP_BATCH, 500, in production): the drop walks the list one chunk per run
    of drop_missing.lua, no run declaring, checking or dropping more than the chunk, and
    at the end interaction_count, the conversation's bytes and the owner's total are
    exactly what is stored. Before, one run declared and walked every turn: with 100,000
    turns, one call held Redis for all of them."""
    chunk = 7
    store = _store(memory, drop_batch=chunk)
    cid = (await store.create_conversation(OWNER, "many")).conversation_id
    iids = []
    for n in range(60):
        turn = pb.Interaction(input="m" * (10 + n))
        iids.append((await store.create_interaction(OWNER, cid, turn, "")).interaction_id)
    tag = store.tag(OWNER)
    kept = iids[::3]
    await memory.redis.delete(*(keys.interaction(tag, iid) for iid in iids if iid not in kept))
    drop = hashlib.sha1(lua_source("drop_missing").encode()).hexdigest()
    async with ScriptKeys(*script_server(target, tag)) as watch:
        page = await store.list_interactions(OWNER, cid, 100, None, 1 << 20)
        runs = [run for run in await watch.runs() if run.sha == drop]
    assert [pb.Interaction.FromString(d).interaction_id for d in page.items] == kept[::-1]
    assert len(runs) >= 60 // chunk
    for run in runs:
        looked = [c for c in run.commands if c[0] == b"EXISTS"]
        dropped = [c for c in run.commands if c[0] == b"ZREM"]
        assert len(run.declared) <= 3 + chunk, run
        assert len(looked) <= chunk and len(dropped) <= chunk, run
    got = await store.get_conversation(OWNER, cid)
    assert got.interaction_count == len(kept)
    assert await _listed(memory, tag, cid) == kept
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total


@pytest.mark.parametrize("where", ["its_conversation", "new_conversation"])
async def test_a_write_at_the_limit_finds_gone_turns_of_other_conversations(
    memory_factory: MemoryFactory, where: str
) -> None:
    """The owner at its byte limit because of another conversation's turns, whose keys
    are then gone (deleted by hand, as an eviction would): a turn written to a third
    conversation (or one starting a new conversation) now fits, because a write refused
    at the limit also looks (bounded: up to 16 conversations and 512 turns across them)
    at the owner's other conversations, drops their gone turns and gives their bytes
    back before it decides. Before, only the written conversation was looked at, and the
    write was refused until something read the other conversation."""
    memory = await memory_factory(max_bytes_per_owner=20_000)
    big = "b" * 2000
    other, iids = await conversation_with_turns(memory.stub, "o", 0, ALICE)
    for n in range(7):
        turn = pb.CreateInteractionRequest(conversation_id=other, input=f"{n}{big}")
        iids.append(
            (await memory.stub.CreateInteraction(turn, metadata=ALICE)).interaction.interaction_id
        )
    mine, _ = await conversation_with_turns(memory.stub, "m", 1, ALICE)
    if where == "new_conversation":
        write = pb.CreateInteractionRequest(
            new_conversation=pb.CreateConversationRequest(name="n"), input="y" * 4000
        )
    else:
        write = pb.CreateInteractionRequest(conversation_id=mine, input="y" * 4000)
    err = await expect_error(
        memory.stub.CreateInteraction(write, metadata=ALICE), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert error_info(err).reason == "OWNER_STORAGE_FULL"
    tag = _store(memory).tag(OWNER)
    await memory.redis.delete(*(keys.interaction(tag, iid) for iid in iids))
    made = await memory.stub.CreateInteraction(write, metadata=ALICE)
    assert made.interaction.input == "y" * 4000
    assert await _listed(memory, tag, other) == []
    field, _, measured = await usage_bytes(memory.redis, tag, other)
    assert field == measured == 256 + len("o")
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=other), metadata=ALICE
    )
    assert got.conversation.interaction_count == 0


async def test_a_conversation_from_before_the_accounting_is_measured_in_bounded_chunks(
    memory: Memory, target: Target
) -> None:
    """A long conversation stored before the accounting (no bytes field; here 30 turns, 5
    of them gone, in chunks of 7 turns per run; DROP_BATCH, 500, in production): its first
    write measures it one chunk per run of measure.lua, no run declaring or reading more
    than the chunk, and its bytes and the owner's total end exactly what is stored (a gone
    turn counted as the bare overhead until a look drops it). Before, one run declared and
    read every turn: with 100,000 turns, one call held Redis for all of them."""
    chunk = 7
    store = _store(memory, drop_batch=chunk)
    cid = (await store.create_conversation(OWNER, "old")).conversation_id
    iids = []
    for n in range(30):
        turn = pb.Interaction(input="o" * (10 + n))
        iids.append((await store.create_interaction(OWNER, cid, turn, "")).interaction_id)
    tag = store.tag(OWNER)
    await memory.redis.delete(*(keys.interaction(tag, iid) for iid in iids[3::6]))
    field, total, _ = await usage_bytes(memory.redis, tag, cid)
    await memory.redis.hdel(keys.usage(tag), cid)  # as stored before the accounting
    await memory.redis.hincrby(keys.usage(tag), "total", -field)
    measure = hashlib.sha1(lua_source("measure").encode()).hexdigest()
    async with ScriptKeys(*script_server(target, tag)) as watch:
        await store.update_interaction(OWNER, iids[0], lambda t: None)
        runs = [run for run in await watch.runs() if run.sha == measure]
    assert len(runs) >= 30 // chunk
    for run in runs:
        read = [c for c in run.commands if c[0] in (b"EXISTS", b"HSTRLEN") and b":int:" in c[1]]
        assert len(run.declared) <= 3 + chunk, run
        assert len({c[1] for c in read}) <= chunk, run
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total  # measured: a gone turn as the bare overhead
