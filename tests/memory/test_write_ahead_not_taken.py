"""A write ahead that Redis did not take (a socket timeout here: the relay in front of a
real Redis holds its command) is not written again, however long it took. A write ahead
slower than half a retry period is written again only because a drain may have taken the
queued job out meanwhile; one Redis did not take was in no outbox. Before, a turn's or a
deletion's job whose first write failed slowly was sent a second time before the call
could answer: a second wait for Redis and a second WARNING. The job still runs from the
replica's memory: the turn is indexed, the deleted turn's entries dropped."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex
from services.memory.store import MemoryStore, Owner, lua_source
from services.retrieval.edge_store import EdgeStore
from tests.support.redis_relay import relaying

OWNER = Owner("acme", "alice")
_OUTBOX_ADD = hashlib.sha1(lua_source("outbox_add").encode()).hexdigest().encode()
# Past the client's socket timeout: the first write ahead fails (Redis did not take it).
_SOCKET_TIMEOUT = 0.3


def _outbox_add(args: list[bytes]) -> bool:
    op = args[0].upper()
    if op == b"EVALSHA":
        return args[1] == _OUTBOX_ADD
    return op == b"EVAL" and hashlib.sha1(args[1]).hexdigest().encode() == _OUTBOX_ADD


@pytest.mark.parametrize("job", ["turn", "deletion"])
async def test_a_write_ahead_redis_did_not_take_is_not_sent_again(
    redis_server: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture, job: str
) -> None:
    caplog.set_level(logging.WARNING)
    sent = 0
    released = asyncio.Event()

    async def step(args: list[bytes]) -> None:
        nonlocal sent
        if _outbox_add(args):
            sent += 1
            if sent == 1:  # the first write ahead: held past the client's timeout
                await released.wait()

    async with relaying(redis_server.url, step) as url:
        redis = connect(url, cluster=False, socket_timeout=_SOCKET_TIMEOUT, connect_timeout=2)
        store = MemoryStore(redis, key_prefix=f"taken-{uuid.uuid4().hex[:8]}")
        index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "taken")
        # A retry period of a millisecond: any write ahead is slower than half of it.
        indexer = Indexer(store, index, 0.001)
        iid = str(uuid.uuid4())
        turn = pb.Interaction(interaction_id=iid, conversation_id="c", input="kumquat")
        try:
            if job == "turn":
                ahead = indexer.write_ahead(OWNER)
                ahead(iid)
                await indexer.stored(OWNER, turn, ahead)
            else:
                await index.add(OWNER, turn)

                async def deletion() -> bool:
                    return True

                await indexer.dropping(OWNER, deletion, iid=iid)
            await indexer.idle()
            # Run from memory all the same.
            assert await index.indexed([iid]) == ({iid} if job == "turn" else set())
        finally:
            released.set()
            await indexer.close()
            await redis.aclose()
    assert sent == 1, f"the job's outbox script was sent {sent} times"
    warned = [r.getMessage() for r in caplog.records if "not written ahead" in r.getMessage()]
    assert len(warned) == 1, warned
