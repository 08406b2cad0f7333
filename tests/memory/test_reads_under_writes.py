"""Reads that race a stream of writes to the same conversation answer, never ABORTED.

ListConversations and GetConversation check a window of each conversation's turns for
gone keys (lua/read.lua's missing_turn), every turn key declared: a run asks for the
window's turns, the next declares them. Writers adding turns meanwhile put a new,
undeclared turn in the window before nearly every run, and a read used up its
RUN_ATTEMPTS and answered ABORTED ("kept changing meanwhile", found flaky in
test_durability's kill test). The check is a sample of the turns: the last runs of a
read leave it out (store.py's SAMPLE_RUNS) and answer.

The race is made to happen every time: the reading store talks to Redis through a relay
(tests/support/redis_relay.py) that holds each run of the read's script until another
store (another replica) has written a turn, straight to Redis. A real Redis, real
stores, nothing of the store replaced. Standalone only: the relay fronts one server.
"""

from __future__ import annotations

import hashlib

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.store import RUN_ATTEMPTS, SAMPLE_RUNS, MemoryStore, Owner, lua_source
from tests.support.redis_relay import relaying

ALICE = Owner("acme", "alice")


def _sha(script: str) -> bytes:
    return hashlib.sha1(lua_source(script).encode()).hexdigest().encode()


async def _interaction_count(store: MemoryStore, script: str, cid: str) -> int:
    """The conversation's count as the read ``script`` answers it."""
    if script == "get_conversation":
        return (await store.get_conversation(ALICE, cid)).interaction_count
    page = await store.list_conversations(ALICE, 10, None)
    [record] = [c for c in page.items if c.conversation_id == cid]
    return record.interaction_count


@pytest.mark.parametrize("script", ["get_conversation", "list_conversations"])
async def test_a_read_meeting_a_new_turn_before_each_run_answers(
    redis_server: RedisProcess, script: str
) -> None:
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    writer = MemoryStore(direct, key_prefix="raced")  # another replica, straight to Redis
    reading = False
    written = 0

    async def write_a_turn(command: list[bytes]) -> None:
        nonlocal written
        if reading and command[0].upper() == b"EVALSHA" and command[1] == _sha(script):
            written += 1
            turn = pb.Interaction(input=f"written before run {written}")
            await writer.create_interaction(ALICE, cid, turn, "")

    try:
        cid = (await writer.create_conversation(ALICE, "raced")).conversation_id
        await writer.create_interaction(ALICE, cid, pb.Interaction(input="first"), "")
        async with relaying(redis_server.url, write_a_turn) as url:
            relayed = connect(url, cluster=False, socket_timeout=5, connect_timeout=2)
            reader = MemoryStore(relayed, key_prefix="raced")
            try:
                await reader.load_scripts()  # (a NOSCRIPT retry is no run of the read's)
                reading = True
                # Before: ABORTED ("kept changing meanwhile") after RUN_ATTEMPTS runs.
                count = await _interaction_count(reader, script, cid)
                reading = False
            finally:
                await relayed.aclose()
        # Each run met a turn written since the one before (the race, every time), and
        # the first run that left the check out answered.
        assert written == RUN_ATTEMPTS - SAMPLE_RUNS + 1
        # The answering run came after every write: it counts them all.
        assert count == 1 + written
        # The check the last runs left out is the next read's: it answers the same.
        assert await _interaction_count(writer, script, cid) == count
    finally:
        await direct.aclose()
