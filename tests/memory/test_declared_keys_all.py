"""Every key any memory script touches is declared in its KEYS, on every path of every
store call (docs/memory.md#storage-limits): the MONITOR check of test_declared_keys.py
(tests/support/script_keys.py) over every script call the service makes, on a standalone
server and on the cluster node holding the owner's slot."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import NotFound, ResourceExhausted
from services.memory import keys
from services.memory.store import (
    ConversationUpdate,
    MemoryStore,
    NewConversation,
    Owner,
    Retention,
    lua_source,
)
from tests.memory.conftest import ALICE, MemoryFactory, Target
from tests.memory.helpers import conversation_with_turns, script_server
from tests.support.script_keys import ScriptKeys

OWNER = Owner("alice", "alice")  # the key "alice:ka"
_SCRIPTS = [p.stem for p in (Path(__file__).parents[2] / "services/memory/lua").glob("*.lua")]


def _sha(name: str) -> str:
    return hashlib.sha1(lua_source(name).encode()).hexdigest()


async def test_every_store_call_touches_only_declared_keys(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """Every store call a servicer, the gateway or the indexer makes, on the paths that
    read keys a script derives (a turn's conversation, a request_id's turn, a page's
    turns, a page's conversations and their turns, a conversation stored before the
    accounting), each with a key gone where the path reads one: no script run touches a
    key its call did not declare. Before, list_interactions.lua, get_conversation.lua,
    list_conversations.lua, get_interaction.lua (and the other reads by interaction id)
    and create_interaction.lua (a retry's request_id) read undeclared keys."""
    memory = await memory_factory()
    cid, iids = await conversation_with_turns(memory.stub, "d", 5, ALICE)
    other, others = await conversation_with_turns(memory.stub, "e", 3, ALICE)
    store = MemoryStore(memory.redis)
    tag = store.tag(OWNER)
    async with ScriptKeys(*script_server(target, tag)) as watch:
        # Reads by interaction id (each turn's conversation hash), one gone turn among them.
        await store.get_interaction(OWNER, iids[0])
        await store.get_interaction_traces(OWNER, iids[1])
        assert [i is not None for i in await store.get_interactions(OWNER, [iids[0], others[0]])]
        assert await store.interactions_exist(OWNER, [iids[2], others[1]]) == [True, True]
        # Pages of turns and of conversations, a conversation read whole.
        page = await store.list_interactions(OWNER, cid, 2, None, 1 << 20)
        assert len(page.items) == 2 and page.next_cursor
        page = await store.list_interactions(OWNER, cid, 2, page.next_cursor, 1 << 20)
        assert len(page.items) == 2
        convs = await store.list_conversations(OWNER, 1, None)
        assert len(convs.items) == 1 and convs.next_cursor
        convs = await store.list_conversations(OWNER, 5, convs.next_cursor)
        assert len(convs.items) == 1
        record = await store.get_conversation(OWNER, cid)
        assert record.interaction_count == 5
        # Writes, and idempotent retries: the turn a request_id names, another conversation's.
        await store.update_interaction(OWNER, iids[0], lambda t: t.additional_info.update({"a": 1}))
        again = await store.create_interaction(OWNER, cid, pb.Interaction(input="x"), "d1")
        assert again.interaction_id == iids[1]
        again = await store.create_interaction(
            OWNER, "", pb.Interaction(input="x"), "e0", new=NewConversation("n", Retention())
        )
        assert again.interaction_id == others[0]
        assert (await store.stored_request(OWNER, "d2")) is not None
        assert (await store.claim_request(OWNER, "d3", "tok", 30)) is not False
        assert (await store.claim_request(OWNER, "new", "tok", 30)) is True
        await store.release_request(OWNER, "new", "tok")
        await store.check_storage(OWNER, cid, 10)
        # Eviction (max_turns, unsummarised turns evicted at once) and a walk of the turns'
        # expiry (a new ttl).
        update = ConversationUpdate(name="m", ttl_ms=3_600_000, max_turns=3, summary_disabled=True)
        assert (await store.update_conversation(OWNER, cid, update)).interaction_count == 3
        await store.update_conversation(OWNER, cid, ConversationUpdate(summary_disabled=False))
        made = await store.create_interaction(OWNER, cid, pb.Interaction(input="z"), "z")
        # A turn read by the store that wrote it takes one run: its conversation's hash is
        # declared up front (by id, several by id, whether they exist).
        async with ScriptKeys(*script_server(target, tag)) as once:
            await store.get_interaction(OWNER, made.interaction_id)
            assert await store.get_interactions(OWNER, [made.interaction_id]) != [None]
            assert await store.interactions_exist(OWNER, [made.interaction_id]) == [True]
            assert len(await once.runs()) == 3
        await store.update_summary(
            OWNER, cid, expected_through="", through=made.interaction_id, text="s", turns=1,
            prompt_tokens=1, completion_tokens=1,
        )  # fmt: skip
        # One turn deleted (its conversation's hash and list, its request_id key "z"), and
        # again: gone.
        assert await store.delete_interaction(OWNER, made.interaction_id) == cid
        with pytest.raises(NotFound):
            await store.delete_interaction(OWNER, made.interaction_id)
        # A conversation made, and one stored before the accounting (measured at its write).
        await store.create_conversation(OWNER, "c")
        await memory.redis.hdel(keys.usage(tag), other)
        await store.create_interaction(OWNER, other, pb.Interaction(input="w"), "")
        # A request_id whose turn is gone: a retry writes it again.
        await memory.redis.delete(keys.interaction(tag, others[0]))
        again = await store.create_interaction(OWNER, other, pb.Interaction(input="x"), "e0")
        assert again.interaction_id != others[0]
        # A turn gone: the reads find it and drop it.
        await memory.redis.delete(keys.interaction(tag, others[2]))
        assert (await store.get_conversation(OWNER, other)).interaction_count == 3  # -2, +2
        await memory.redis.delete(keys.interaction(tag, others[1]))
        page = await store.list_interactions(OWNER, other, 5, None, 1 << 20)
        assert len(page.items) == 2
        await store.delete_conversation(OWNER, other)
        runs = await watch.runs()
        undeclared = await watch.undeclared(runs)
    named = {_sha(name): name for name in _SCRIPTS}
    assert undeclared == [], sorted({(named.get(runs[n].sha), c, k) for n, c, k in undeclared})
    ran = {named.get(run.sha) for run in runs}
    assert {
        "measure",
        "drop_missing",
        "retention_step",
        "create_conversation",
        "delete_interaction",
    } <= ran, ran


async def test_reconcile_touches_only_declared_keys(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """reconcile.lua, both ways the store runs it: the whole walk a write at the byte
    limit asks for (next_expiry due), and the drop of the members a ListConversations
    page found without a hash; each with a hash gone (deleted by hand, as expiry does),
    so the walk drops a member and gives its bytes back. Not covered before."""
    limit = 20_000
    memory = await memory_factory(max_bytes_per_owner=limit)
    store = MemoryStore(memory.redis, max_bytes_per_owner=limit)
    tag = store.tag(OWNER)
    kept, _ = await conversation_with_turns(memory.stub, "k", 2, ALICE)
    walked, _ = await conversation_with_turns(memory.stub, "w", 1, ALICE)
    paged, _ = await conversation_with_turns(memory.stub, "p", 1, ALICE)
    async with ScriptKeys(*script_server(target, tag)) as watch:
        # The whole walk: a write that does not fit, a walk due (next_expiry 0).
        await memory.redis.delete(keys.conversation(tag, walked))
        await memory.redis.hset(keys.usage(tag), "next_expiry", "0")
        with pytest.raises(ResourceExhausted):
            await store.check_storage(OWNER, kept, limit)
        # The drop of a page's gone members (no walk due: next_expiry far ahead).
        await memory.redis.delete(keys.conversation(tag, paged))
        await memory.redis.hset(keys.usage(tag), "next_expiry", str(1 << 50))
        page = await store.list_conversations(OWNER, 10, None)
        assert [c.conversation_id for c in page.items] == [kept]
        runs = await watch.runs()
        undeclared = await watch.undeclared(runs)
    named = {_sha(name): name for name in _SCRIPTS}
    assert undeclared == [], sorted({(named.get(runs[n].sha), c, k) for n, c, k in undeclared})
    # Not vacuous: reconcile ran both ways, and dropped both members and their bytes.
    reconciles = [run for run in runs if named.get(run.sha) == "reconcile"]
    first_commands = {run.commands[0][0] for run in reconciles if run.commands}
    assert first_commands >= {b"TIME", b"EXISTS"}
    members = [m.decode()[16:] for m in await memory.redis.zrange(keys.conversations(tag), 0, -1)]
    assert members == [kept]
    assert await memory.redis.hkeys(keys.usage(tag)) != []
    assert await memory.redis.hget(keys.usage(tag), walked) is None
    assert await memory.redis.hget(keys.usage(tag), paged) is None
