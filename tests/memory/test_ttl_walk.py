"""A ttl change sets every turn's expiry in bounded batches, one per script run.

Before, UpdateConversation changing ``ttl`` set the expiry of every turn's key in the one
script run (~40 ms of a blocked Redis at 10,000 turns): the work of a run grew with the
conversation. Now each run walks at most RETENTION_BATCH turns (lua/retention.lua) and the
service runs the next batch until done; meanwhile no turn expires before its conversation.
Counted, not timed: the PEXPIREAT/PERSIST commands per script run, from Redis's own
command statistics. Standalone Redis and the cluster (every key of a conversation in one
slot, so each batch is one script on one node).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2, field_mask_pb2

from services.common.errors import Internal
from services.devlaunch.redis_server import RedisProcess
from services.memory import keys
from services.memory.store import ConversationUpdate, MemoryStore, Owner
from tests.memory.conftest import ALICE, Memory, MemoryFactory

OWNER = Owner("alice", "alice")  # the key "alice:ka" (conftest ALICE)
BATCH = 500  # RETENTION_BATCH in services/memory/lua/retention.lua
TURNS = 2 * BATCH + 100  # three batches
HOUR_MS = 3_600_000


async def _conversation_with_turns(memory: Memory, turns: int, ttl_s: int = 0) -> str:
    create = pb.CreateConversationRequest(name="long")
    if ttl_s:
        create.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_s))
    created = await memory.stub.CreateConversation(create, metadata=ALICE)
    cid = created.conversation.conversation_id
    for start in range(0, turns, 50):
        await asyncio.gather(
            *(
                memory.stub.CreateInteraction(
                    pb.CreateInteractionRequest(conversation_id=cid, input=f"q{n}"),
                    metadata=ALICE,
                )
                for n in range(start, min(start + 50, turns))
            )
        )
    return cid


async def _set_ttl(memory: Memory, cid: str, seconds: int) -> pb.Conversation:
    update = pb.UpdateConversationRequest(
        conversation_id=cid,
        ttl=duration_pb2.Duration(seconds=seconds),
        update_mask=field_mask_pb2.FieldMask(paths=["ttl"]),
    )
    return (await memory.stub.UpdateConversation(update, metadata=ALICE)).conversation


async def _turn_keys(memory: Memory, cid: str) -> list[str]:
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    ids = await memory.redis.zrange(keys.conversation_interactions(tag, cid), 0, -1)
    return [keys.interaction(tag, iid.decode()) for iid in ids]


async def _expiries(memory: Memory, cid: str) -> tuple[int, set[int]]:
    """The conversation hash's expiry and the set of its turns' expiries (ms, -1: none)."""
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    conversation = await memory.redis.pexpiretime(keys.conversation(tag, cid))
    turns = {await memory.redis.pexpiretime(key) for key in await _turn_keys(memory, cid)}
    return conversation, turns


def _stats(info: dict[str, dict[str, int]]) -> dict[str, int]:
    return {name: int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in _COUNTED}


_COUNTED = ("pexpireat", "persist", "evalsha", "eval")


async def test_a_ttl_change_walks_the_turns_in_bounded_batches(
    redis_server: RedisProcess, memory_factory: MemoryFactory
) -> None:
    memory = await memory_factory()
    cid = await _conversation_with_turns(memory, TURNS, ttl_s=3600)
    stats = memory.redis  # standalone here: one server counts every command
    for seconds in (30 * 86400, 0, 7200):  # longer, none, a ttl again
        await stats.config_resetstat()
        await _set_ttl(memory, cid, seconds)
        counts = _stats(await stats.info("commandstats"))
        runs = counts["evalsha"] + counts["eval"]
        per_run = (counts["pexpireat"] + counts["persist"]) / runs
        # Each run: at most one batch of turns plus the conversation's own keys.
        assert per_run <= BATCH + 10, (seconds, counts)
        assert runs >= TURNS // BATCH + 1, (seconds, counts)


async def test_every_turn_follows_each_ttl_change_and_none_is_lost(memory: Memory) -> None:
    cid = await _conversation_with_turns(memory, TURNS, ttl_s=3600)

    # Longer: every turn's key outlives the conversation's new expiry.
    longer = await _set_ttl(memory, cid, 30 * 86400)
    conversation, turns = await _expiries(memory, cid)
    assert conversation == longer.expire_time.ToMilliseconds()
    assert len(turns) == 1 and min(turns) >= conversation + 29 * 86400_000, (conversation, turns)

    # None: nothing of the conversation expires any more.
    kept = await _set_ttl(memory, cid, 0)
    assert not kept.HasField("expire_time")
    assert await _expiries(memory, cid) == (-1, {-1})

    # Shorter again: the turns get expiries within two ttl of the conversation's.
    shorter = await _set_ttl(memory, cid, 60)
    conversation, turns = await _expiries(memory, cid)
    assert conversation == shorter.expire_time.ToMilliseconds()
    assert len(turns) == 1
    assert conversation <= min(turns) <= conversation + 2 * 60_000

    # Much shorter than that: lowered, not left at the longer ttl's.
    await _set_ttl(memory, cid, 30 * 86400)
    shortest = await _set_ttl(memory, cid, 60)
    conversation, turns = await _expiries(memory, cid)
    assert conversation == shortest.expire_time.ToMilliseconds()
    assert len(turns) == 1 and min(turns) <= conversation + 2 * 60_000

    listed = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert listed.conversation.interaction_count == TURNS
    assert len(await _turn_keys(memory, cid)) == TURNS


async def test_a_turn_that_renews_every_turns_expiry_gets_its_full_ttl(memory: Memory) -> None:
    """Once per ttl of activity a turn renews every turn's expiry (retention.lua): a walk
    of several batches, finished before the turn is acknowledged. Left to later activity,
    the conversation would expire at its turns' old expiry, before its sliding ttl."""
    cid = await _conversation_with_turns(memory, TURNS, ttl_s=3600)
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    conversation = keys.conversation(tag, cid)
    # As if the turns were last renewed a ttl ago (their keys expire later: harmless):
    # the next turn's expire_time passes renewed_until, which starts the walk.
    soon = int(await memory.redis.hget(conversation, "expire_time")) - HOUR_MS + 60_000
    await memory.redis.hset(conversation, "renewed_until", soon)
    await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="renews"), metadata=ALICE
    )
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    expire = got.conversation.expire_time.ToMilliseconds()
    assert expire == got.conversation.update_time.ToMilliseconds() + HOUR_MS
    assert not await memory.redis.hexists(conversation, "walk_after")
    held, turns = await _expiries(memory, cid)
    assert held == expire and len(turns) == 1 and min(turns) == expire + HOUR_MS


async def test_a_walk_still_pending_after_its_bound_fails_loudly(
    memory: Memory, caplog: pytest.LogCaptureFixture
) -> None:
    """The service runs the walk while each run says it is pending, up to a bound no
    conversation within the turn cap reaches (the cap + 2 runs); past it, an error logged
    and INTERNAL, not an answer with the walk silently unfinished. A store whose cap is 0
    allows 2 runs after UpdateConversation's own: too few for four batches."""
    turns = 3 * BATCH + 100
    cid = await _conversation_with_turns(memory, turns, ttl_s=3600)
    store = MemoryStore(
        memory.redis, key_prefix=memory.settings.key_prefix, max_interactions_per_conversation=0
    )
    longer = ConversationUpdate(ttl_ms=30 * 86400_000)
    with caplog.at_level(logging.ERROR, "gensearch.memory.store"), pytest.raises(Internal):
        await store.update_conversation(OWNER, cid, longer)
    assert "still pending after 2 runs" in caplog.text
    # Cut short, it is safe: the next update (the service's own store) finishes it.
    conversation = await _set_ttl(memory, cid, 30 * 86400)
    expire, expiries = await _expiries(memory, cid)
    assert expire == conversation.expire_time.ToMilliseconds()
    assert len(expiries) == 1 and min(expiries) > expire, (expire, expiries)
