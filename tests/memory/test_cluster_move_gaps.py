"""Two calls on a Redis Cluster while the owner's slot moves (a real 3-node loopback cluster,
the slot moved as ``redis-cli --cluster reshard`` does: test_cluster_migration.py's way):
a turn written at ``max_turns``, which evicts the oldest, and a many-turn read naming a
turn that does not exist. Neither loses nor repeats a turn, and neither is refused for
longer than Redis makes it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from redis.asyncio.cluster import RedisCluster

from services.common.errors import Unavailable
from services.memory import keys
from services.memory.store import MemoryStore, Owner, Retention
from tests.memory.test_cluster_migration import (
    OWNER,
    _conversation_keys,
    _move,
    _move_slot,
    _two_turns_beside_four,
)
from tests.support.redis_cluster import LocalCluster

BACKENDS = ("cluster",)


@pytest.mark.slow
async def test_a_many_turn_read_naming_a_missing_turn_is_answered_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """GetInteractions' store call and the search sweep's ``interactions_exist``, naming a
    turn that exists (its conversation's keys moved) and one deleted before the move, at
    every step of the move while another conversation's keys are still on the old node:
    the turn found, the deleted one missing. Before, the run declaring the missing key was
    refused by Redis for the whole move (TRYAGAIN: it cannot tell a key that does not
    exist from one not moved yet): each read waited out the store's wait, then
    UNAVAILABLE."""
    writer = make_store()
    cid, doomed, kept = await _two_turns_beside_four(writer, "m")
    assert await writer.delete_interaction(OWNER, doomed.interaction_id) == cid
    # A replica that has not read these turns: no kept hint (``_run``'s hinted turns).
    reader = make_store(slot_move_wait=0.5)
    _, source, _ = _move(own_cluster)
    tag = reader.tag(OWNER)
    other_left: list[bool] = []
    answers: list[tuple[list[str | None], list[bool], list[Any]]] = []

    async def read() -> None:
        named = [kept.interaction_id, doomed.interaction_id]
        try:
            got = await reader.get_interactions(OWNER, named)
            exist = await reader.interactions_exist(OWNER, named)
            none = await reader.get_interactions(OWNER, [doomed.interaction_id, "0" * 26])
        except Unavailable as err:
            answers.append(([err.reason], [], []))
            return
        answers.append(([i.input if i else None for i in got], exist, none))
        async with source.client() as old:  # the other conversation not moved yet
            other_left.append(bool(await old.dbsize()))

    first = _conversation_keys(tag, cid, kept)
    await _move_slot(own_cluster, batch=2, between=read, first=first)
    await read()
    assert answers == [(["m1", None], [True, False], [None, None])] * len(answers)
    assert other_left.count(True) >= 3  # read mid-move, keys split between the nodes


@pytest.mark.slow
async def test_another_owners_turn_in_the_shared_tag_is_missing_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """``mover`` of ``default`` and ``mover`` of the tenant ``mover`` share one tag
    (``Owner.digest``). A many-turn read mid-move naming a missing turn reads each turn's
    key alone (``_present``) and runs again on those found: the other owner's turn exists,
    so it is found and run again, and the script's ownership check answers it missing, as
    outside a move (never the other owner's text, never UNAVAILABLE)."""
    writer = make_store()
    cid, doomed, kept = await _two_turns_beside_four(writer, "s")
    assert await writer.delete_interaction(OWNER, doomed.interaction_id) == cid
    neighbour = Owner("mover", "mover")
    tag = writer.tag(OWNER)
    assert writer.tag(neighbour) == tag
    theirs_cid = (await writer.create_conversation(neighbour, "n")).conversation_id
    theirs = await writer.create_interaction(
        neighbour, theirs_cid, pb.Interaction(input="n0"), "", b""
    )
    reader = make_store(slot_move_wait=0.5)
    _, source, _ = _move(own_cluster)
    named = [kept.interaction_id, theirs.interaction_id, doomed.interaction_id]
    answers: list[Any] = []
    mid_move: list[bool] = []

    async def read() -> None:
        try:
            got = await reader.get_interactions(OWNER, named)
            exist = await reader.interactions_exist(OWNER, named)
        except Unavailable as err:
            answers.append(err.reason)
            return
        answers.append(([i.input if i else None for i in got], exist))
        async with source.client() as old:  # the other conversation not moved yet
            mid_move.append(bool(await old.dbsize()))

    # Both conversations' keys first (the owners' usage key once: MIGRATE takes it once).
    both = [*_conversation_keys(tag, cid, kept), *_conversation_keys(tag, theirs_cid, theirs)]
    first = list(dict.fromkeys(both))
    await _move_slot(own_cluster, batch=2, between=read, first=first)
    await read()
    assert answers == [(["s1", None, None], [True, False, False])] * len(answers)
    assert mid_move.count(True) >= 3  # read mid-move, keys split between the nodes
    # Their own read still finds it: the None above is the ownership check, not a loss.
    got = await reader.get_interactions(neighbour, [theirs.interaction_id])
    assert [i.input if i else None for i in got] == ["n0"]


@pytest.mark.slow
async def test_a_turn_at_max_turns_mid_move_waits_for_the_move_or_says_when_to_retry(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """A turn written at ``max_turns`` (it evicts the oldest) while the conversation's slot
    moves: Redis refuses its script for the whole move (it declares the new turn's key,
    which does not exist yet), so no store writes it mid-move. A store whose wait the move
    outlasts answers UNAVAILABLE with ErrorInfo and RetryInfo (before: no RetryInfo, no
    cause); one whose wait it does not outlast stores the turn once the move ends. The
    refused one retried with its request_id finds that turn: one turn stored, the oldest
    evicted, never more than ``max_turns`` listed."""
    store = make_store()
    retention = Retention(max_turns=2, summary_disabled=True)
    made = await store.create_conversation(OWNER, "x", retention)
    cid = made.conversation_id
    turns = [
        await store.create_interaction(OWNER, cid, pb.Interaction(input=f"x{n}"), f"x{n}", b"")
        for n in range(2)
    ]
    other = (await store.create_conversation(OWNER, "o")).conversation_id
    for n in range(4):
        await store.create_interaction(OWNER, other, pb.Interaction(input=f"o{n}"), f"o{n}", b"")
    tag = store.tag(OWNER)
    impatient, patient = make_store(slot_move_wait=0.2), make_store(slot_move_wait=60.0)
    _, source, _ = _move(own_cluster)
    refused: list[Unavailable] = []
    waiting: list[asyncio.Task[pb.Interaction]] = []
    mid_move: list[bool] = []

    def write(on: MemoryStore) -> Any:
        return on.create_interaction(OWNER, cid, pb.Interaction(input="x2"), "x2", b"")

    async def step() -> None:
        if not refused:
            with pytest.raises(Unavailable) as caught:
                await write(impatient)
            refused.append(caught.value)
            waiting.append(asyncio.create_task(write(patient)))
        await asyncio.sleep(0.05)  # the patient write's tries meet the move
        assert not waiting[0].done()  # nothing written while the move lasts
        async with source.client() as old:
            mid_move.append(bool(await old.dbsize()))

    first = _conversation_keys(tag, cid, *turns)
    target = await _move_slot(own_cluster, batch=2, between=step, first=first)
    assert mid_move.count(True) >= 3
    err = refused[0]
    assert (err.reason, err.metadata, err.retry_after) == (
        "STORE_UNAVAILABLE",
        {"cause": "SLOT_MOVING"},
        1.0,
    )
    stored = await waiting[0]
    again = await write(impatient)  # the caller's retry, as RetryInfo says
    assert again.interaction_id == stored.interaction_id
    page = await make_store().list_interactions(OWNER, cid, 10, None, 1 << 20)
    assert [pb.Interaction.FromString(i).input for i in page.items] == ["x2", "x1"]
    evicted = keys.interaction(tag, turns[0].interaction_id)
    async with target.client() as new:
        assert await new.exists(evicted, keys.request(tag, "x0")) == 0


@pytest.mark.slow
async def test_a_listing_split_by_the_move_is_refused_with_when_to_retry(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """ListInteractions and GetInteractions of a conversation whose own keys have moved and
    whose turns have not: each page or read is one script over keys on two nodes, which
    Redis refuses until they are on one (TRYAGAIN). It is not split into reads of one key
    each (that would give up the page's one view of the conversation, the ownership check
    beside each turn with it), so past the store's wait it answers UNAVAILABLE with
    ErrorInfo ``cause`` and RetryInfo (before: neither), and whole once the move ends."""
    writer = make_store()
    cid = (await writer.create_conversation(OWNER, "l")).conversation_id
    turns = [
        await writer.create_interaction(OWNER, cid, pb.Interaction(input=f"l{n}"), "", b"")
        for n in range(3)
    ]
    reader = make_store(slot_move_wait=0.2)
    tag = reader.tag(OWNER)
    refusals: list[tuple[str, dict[str, str], float | None]] = []

    async def read() -> None:
        if refusals:
            return
        for call in (
            reader.list_interactions(OWNER, cid, 10, None, 1 << 20),
            reader.get_interactions(OWNER, [turn.interaction_id for turn in turns]),
        ):
            with pytest.raises(Unavailable) as caught:
                await call
            err = caught.value
            refusals.append((err.reason, err.metadata, err.retry_after))

    first = [keys.conversation(tag, cid), keys.conversation_interactions(tag, cid)]
    await _move_slot(own_cluster, batch=100, between=read, first=first)
    assert refusals == [("STORE_UNAVAILABLE", {"cause": "SLOT_MOVING"}, 1.0)] * 2
    page = await reader.list_interactions(OWNER, cid, 10, None, 1 << 20)
    assert [pb.Interaction.FromString(i).input for i in page.items] == ["l2", "l1", "l0"]
    got = await reader.get_interactions(OWNER, [turn.interaction_id for turn in turns])
    assert [i.input if i else None for i in got] == ["l0", "l1", "l2"]


# Each try of a key's read that the half-set move below refuses is redis-py's sends of one
# command (its cluster client's RedisClusterRequestTTL, 16 today), alternating between the
# nodes: half of them refused by the target (MOVED), counted by its commandstats as
# rejected EXISTS calls.
_TARGET_REFUSALS_PER_TRY = RedisCluster.RedisClusterRequestTTL // 2


async def _rejected_exists(client: Any) -> int:
    """The EXISTS calls ``client``'s node refused (a redirection), from its commandstats."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("rejected_calls", 0))


@pytest.mark.slow
async def test_a_read_of_many_keys_mid_move_shares_one_wait(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """The per-key reads of a many-turn read a move refused (GetInteractions naming turns
    that do not exist: each turn's key read alone) share the store's one
    ``slot_move_wait``: past it, the read ends UNAVAILABLE cause SLOT_MOVING
    with RetryInfo. Before, each key got the whole wait anew, so a read of many keys each
    refused a while lasted that wait times their number (bounded only by the deadline).

    The move is held between keys: the source MIGRATING and the target not IMPORTING, so
    a read of a key missing on the source bounces between them until redis-py gives up
    (refused, sent again). A key is let through (written on the source, found) only once
    the target has refused it ``tries`` tries, counted in the target's commandstats: no
    clock in the test. The store's pauses between tries never sleep less than half their
    nominal length, so each key costs at least ``floor`` seconds of them, and six keys
    more than the wait: the shared wait must run out before the last key is let through.
    Each key alone (at most twice ``floor`` plus the tries) fits in the wait, as the old
    code gave it: there the read answered every key."""
    tries = 6
    # The nominal pauses after the first six refused tries (store.SLOT_MOVE_*_PAUSE,
    # doubled from 0.01 s up to 0.25 s), each slept for at least half.
    floor = (0.01 + 0.02 + 0.04 + 0.08 + 0.16 + 0.25) / 2
    wait = 1.2
    store = make_store(slot_move_wait=wait)
    tag = store.tag(OWNER)
    names = [keys.interaction(tag, f"{n:026d}") for n in range(6)]
    assert len(names) * floor > wait >= 2 * floor
    slot, source, target = _move(own_cluster)
    target_id = await own_cluster.node_id(target)
    let_through: list[str] = []

    async def let_each_through_after_its_tries() -> None:
        async with source.client() as src, target.client() as dst:
            for name in names:
                base = await _rejected_exists(dst)
                # Polled: the count is the target's, no event of ours to wait on.
                while True:
                    if await _rejected_exists(dst) - base >= tries * _TARGET_REFUSALS_PER_TRY:
                        break
                    await asyncio.sleep(0.002)
                # The store is in its pause after the last refused try: the key written
                # on the source (which, MIGRATING, refuses a write of a missing key), one
                # pipelined send, so that the next key meets the held move again.
                pipe = src.pipeline(transaction=False)
                pipe.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
                pipe.set(name, "x")
                pipe.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
                await pipe.execute()
                let_through.append(name)

    async with source.client() as src:
        await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    gate = asyncio.create_task(let_each_through_after_its_tries())
    try:
        with pytest.raises(Unavailable) as caught:
            await store.get_interactions(OWNER, [f"{n:026d}" for n in range(len(names))])
    finally:
        gate.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gate
    err = caught.value
    assert (err.reason, err.metadata, err.retry_after) == (
        "STORE_UNAVAILABLE",
        {"cause": "SLOT_MOVING"},
        1.0,
    )
    assert len(let_through) < len(names)  # refused on a key before the last one's turn
