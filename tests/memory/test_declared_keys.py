"""Every key a write script touches at the owner's byte limit is declared in its KEYS
(docs/memory.md#storage-limits): Redis Cluster routes, locks and migrates a script by its
declared keys, and script-routing proxies route by them. Neither Redis nor the bundled
Valkey refuses an undeclared key of the script's slot, so the test reads what each script
ran from the server's MONITOR stream (tests/support/script_keys.py) and asks the server
which keys each command names. On a standalone server and on the node of a real cluster
that holds the owner's slot."""

from __future__ import annotations

import hashlib

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import ResourceExhausted
from services.memory import keys
from services.memory.store import MemoryStore, Owner, lua_source
from tests.memory.conftest import ALICE, MemoryFactory, Target
from tests.memory.helpers import conversation_with_turns, script_server, usage_bytes
from tests.support.script_keys import ScriptKeys

OWNER = Owner("alice", "alice")  # the key "alice:ka": alice alone in a tenant of her name
LIMIT = 20_000
# The write scripts under test (a read made on the way, get_interaction.lua's, is not).
WATCHED = {
    hashlib.sha1(lua_source(name).encode()).hexdigest()
    for name in ("check_storage", "update_interaction", "create_interaction")
}


async def test_writes_at_the_byte_limit_touch_only_declared_keys(
    memory_factory: MemoryFactory, target: Target
) -> None:
    """CheckStorage, UpdateInteraction and CreateInteraction at the owner's byte limit, a
    turn of the conversation gone (its key deleted): the look for gone turns reads the
    conversation's list and a window of its turns, every one declared (asked for by a
    first run, lua/usage.lua's gone_turns); the gone turn is dropped and the writes are
    refused as full. The look at the owner's other conversations (here one) declares
    their hashes, lists and turns the same way. Before, check_storage.lua and
    update_interaction.lua read the list and the turn keys undeclared
    (update_interaction.lua the owner's list too)."""
    memory = await memory_factory(max_bytes_per_owner=LIMIT)
    cid, iids = await conversation_with_turns(memory.stub, "d", 6, ALICE)
    # Another conversation: a write refused at the limit looks at its turns too.
    other, others = await conversation_with_turns(memory.stub, "e", 2, ALICE)
    store = MemoryStore(memory.redis, max_bytes_per_owner=LIMIT)
    tag = store.tag(OWNER)
    await memory.redis.delete(keys.interaction(tag, iids[2]))

    def grow(turn: pb.Interaction) -> None:
        turn.additional_info.update({"big": "x" * LIMIT})

    async with ScriptKeys(*script_server(target, tag)) as watch:
        with pytest.raises(ResourceExhausted):
            await store.check_storage(OWNER, cid, LIMIT)
        with pytest.raises(ResourceExhausted):
            await store.update_interaction(OWNER, iids[0], grow)
        with pytest.raises(ResourceExhausted):
            big = pb.Interaction(input="y" * LIMIT)
            await store.create_interaction(OWNER, cid, big, "")
        runs = [run for run in await watch.runs() if run.sha in WATCHED]
        undeclared = await watch.undeclared(runs)
    assert undeclared == []
    # Not vacuous: the look for gone turns ran, reading turn keys (EXISTS), and the gone
    # turn was dropped.
    for turn_key in (keys.interaction(tag, iids[0]), keys.interaction(tag, others[0])):
        looked = [
            run
            for run in runs
            for c in run.commands
            if c[0] == b"EXISTS" and turn_key.encode() in c
        ]
        assert len(looked) >= 3, (turn_key, runs)
    listed = [m.decode() for m in await memory.redis.zrange(f"{tag}:conv:{cid}:ints", 0, -1)]
    assert listed == iids[:2] + iids[3:]
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    other_field, _, other_measured = await usage_bytes(memory.redis, tag, other)
    assert field == measured and other_field == other_measured
    assert total == field + other_field
