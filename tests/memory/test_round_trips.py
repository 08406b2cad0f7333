"""The history reads of an Ask (GetConversation, ListInteractions' newest page) take one
script run when the store expects the turns they read (services/memory/recent_turns.py),
and one more only when what it expected is stale (a turn another replica wrote); every
key declared all the same. Runs are counted on the server: its MONITOR stream shows each
EVALSHA (tests/support/script_keys.py), on a standalone server and on the cluster node
holding the owner's slot."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import NotFound
from services.memory.store import MemoryStore, NewConversation, Owner, Retention, lua_source
from tests.memory.conftest import ALICE, Memory, MemoryFactory, Target
from tests.memory.helpers import conversation_with_turns, script_server
from tests.support.script_keys import ScriptKeys

OWNER = Owner("alice", "alice")  # the key "alice:ka": alice alone in a tenant of her name
PAGE = 11  # the gateway's history page: interaction_size 10, and one more
_NAMES = {
    hashlib.sha1(lua_source(name).encode()).hexdigest(): name
    for name in ("get_conversation", "list_interactions")
}


async def _store(memory: Memory, **options: int) -> MemoryStore:
    """A store of its own (another replica than the service's), its scripts loaded (a
    NOSCRIPT retry is no round trip of the read's)."""
    store = MemoryStore(memory.redis, **options)
    await store.load_scripts()
    return store


async def _history(store: MemoryStore, cid: str) -> tuple[int, list[str]]:
    """An Ask's reads of its conversation, together: the count, the newest page's inputs."""
    record, page = await asyncio.gather(
        store.get_conversation(OWNER, cid),
        store.list_interactions(OWNER, cid, PAGE, None, 1 << 20),
    )
    return record.interaction_count, [pb.Interaction.FromString(d).input for d in page.items]


async def _runs_while(
    target: Target, store: MemoryStore, calls: Callable[[], Awaitable[None]]
) -> Counter[str]:
    """The history reads' script runs while ``calls`` runs, by script, every key
    declared."""
    async with ScriptKeys(*script_server(target, store.tag(OWNER))) as watch:
        await calls()
        runs = await watch.runs()
        assert not await watch.undeclared(runs)
    return Counter(_NAMES[r.sha] for r in runs if r.sha in _NAMES)


async def _runs_of(target: Target, store: MemoryStore, reads: int, cid: str) -> Counter[str]:
    """The script runs of ``reads`` history reads, by script, every key declared."""

    async def read() -> None:
        for _ in range(reads):
            await _history(store, cid)

    return await _runs_while(target, store, read)


async def _runs_of_reads_between_writes(
    target: Target, store: MemoryStore, cid: str, name: str, turns: range
) -> Counter[str]:
    """The script runs of a history read before each write of this replica's turn ``n``
    of ``turns`` (input ``name`` and its number, as those before it): each read finds
    the conversation's ``n`` turns, newest first."""

    async def read_and_write() -> None:
        for n in turns:
            count, inputs = await _history(store, cid)
            assert count == n
            assert inputs == [f"{name}{k}" for k in reversed(range(n))][:PAGE]
            turn = pb.Interaction(input=f"{name}{n}")
            await store.create_interaction(OWNER, cid, turn, f"{name}{n}")

    return await _runs_while(target, store, read_and_write)


async def test_an_ask_turn_reads_its_history_in_one_run_each(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """A conversation this replica started and writes: each turn's GetConversation and
    ListInteractions take one script run each, the turn written last among what they
    read. Before, two each: a first run named the turns, a second read them declared."""
    memory = await memory_factory()
    store = await _store(memory)
    made = await store.create_interaction(
        OWNER, "", pb.Interaction(input="q0"), "r0", new=NewConversation("a", Retention())
    )
    runs = await _runs_of_reads_between_writes(
        target, store, made.conversation_id, "q", range(1, 5)
    )
    assert runs == {
        "get_conversation": 4,
        "list_interactions": 4,
    }


async def test_turns_another_replica_wrote_cost_one_more_run_once(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """What a replica expects is learnt from its reads: a conversation it has not read
    takes two runs per read, then one while nothing changed it; a turn another replica
    (the service's own store) wrote makes the next read of each two runs, which answer
    that turn too, and the one after one again."""
    memory = await memory_factory()
    cid, _ = await conversation_with_turns(memory.stub, "s", 3, ALICE)
    store = await _store(memory)
    assert await _runs_of(target, store, 1, cid) == {
        "get_conversation": 2,
        "list_interactions": 2,
    }
    assert await _runs_of(target, store, 2, cid) == {
        "get_conversation": 2,
        "list_interactions": 2,
    }
    turn = pb.CreateInteractionRequest(conversation_id=cid, input="s3", request_id="s3")
    await memory.stub.CreateInteraction(turn, metadata=ALICE)
    assert await _runs_of(target, store, 1, cid) == {
        "get_conversation": 2,
        "list_interactions": 2,
    }
    assert await _history(store, cid) == (4, ["s3", "s2", "s1", "s0"])
    assert await _runs_of(target, store, 1, cid) == {
        "get_conversation": 1,
        "list_interactions": 1,
    }


async def test_a_long_conversations_window_is_named_one_call_ahead(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """A conversation longer than GetConversation's window (here 4 turns of 9): the
    window is drawn one call ahead, so after a first read each read takes one run, this
    replica's turns written in between included, and the count stays exact."""
    memory = await memory_factory()
    cid, _ = await conversation_with_turns(memory.stub, "w", 9, ALICE)
    store = await _store(memory, gone_check_turns=4)
    await _history(store, cid)
    assert await _runs_of_reads_between_writes(target, store, cid, "w", range(9, 13)) == {
        "get_conversation": 4,
        "list_interactions": 4,
    }


async def test_reads_under_concurrent_writes_of_two_replicas_are_exact(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """Each of an Ask's reads made while two replicas write a turn each: every page is the
    newest turns as they were at some moment, newest first, every count within what was
    written, and no script touches a key its run did not declare, whatever the guesses
    (stale by the other replica's turn, or by ours landing between two runs). Two writes
    per read, so no read is starved into ABORTED (eight runs that each meet a new turn:
    RUN_ATTEMPTS)."""
    memory = await memory_factory()
    store = await _store(memory)
    made = await store.create_interaction(
        OWNER, "", pb.Interaction(input="c0"), "c0", new=NewConversation("c", Retention())
    )
    cid = made.conversation_id
    pages: list[tuple[int, list[str]]] = []

    async def read() -> None:
        pages.append(await _history(store, cid))

    async def ours(n: int) -> None:
        await store.create_interaction(OWNER, cid, pb.Interaction(input=f"a{n}"), f"a{n}")

    async def theirs(n: int) -> None:
        turn = pb.CreateInteractionRequest(conversation_id=cid, input=f"b{n}")
        await memory.stub.CreateInteraction(turn, metadata=ALICE)

    async with ScriptKeys(*script_server(target, store.tag(OWNER))) as watch:
        for n in range(1, 16):
            await asyncio.gather(read(), ours(n), theirs(n))
        runs = await watch.runs()
        assert not await watch.undeclared(runs)
    final = [pb.Interaction.FromString(d).input for d in (
        await store.list_interactions(OWNER, cid, 100, None, 1 << 20)
    ).items][::-1]  # fmt: skip
    assert len(final) == 31
    for count, inputs in pages:
        assert 1 <= count <= 31
        # The newest turns at one moment: the last of the first `shown` written.
        shown = final.index(inputs[0]) + 1
        assert inputs == final[:shown][::-1][:PAGE]
    assert await _history(store, cid) == (31, final[::-1][:PAGE])


@pytest.mark.parametrize("other", [Owner("alice", "default"), Owner("bob", "bob")])
async def test_another_owner_is_not_found_whatever_the_store_expects(
    memory_factory: MemoryFactory, other: Owner
) -> None:
    """The store's expectations are kept by key, under the owner's tag, and every script
    checks the caller owns the conversation before it reads a turn: the other legacy
    owner of the same tag (alice of default) and another user find the conversation
    alice of alice just read NOT_FOUND, as a missing one."""
    memory = await memory_factory()
    store = await _store(memory)
    made = await store.create_interaction(
        OWNER, "", pb.Interaction(input="p0"), "p0", new=NewConversation("p", Retention())
    )
    cid = made.conversation_id
    assert await _history(store, cid) == (1, ["p0"])
    with pytest.raises(NotFound) as page:
        await store.list_interactions(other, cid, PAGE, None, 1 << 20)
    with pytest.raises(NotFound) as record:
        await store.get_conversation(other, cid)
    missing = "0" * 8 + cid[8:]
    with pytest.raises(NotFound) as absent:
        await store.get_conversation(other, missing)
    assert str(page.value) == str(record.value) == str(absent.value).replace(missing, cid)
