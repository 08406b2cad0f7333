"""``kill -9`` of the memory service right after a deletion ran on Redis, before its search
index drop job was sent: the next replica's drain drops the entries. Before, the job lived
only in the killed process's memory (sent after the deletion, in the background), and the
deleted turns stayed in the index until the sweep (hourly by default).

The relay runs the deletion's script on Redis itself, then kills the replica before it
sees the answer: the exact interleaving, every time."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from redis.exceptions import ResponseError

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.settings import MemorySettings
from services.memory.store import lua_source
from services.retrieval.edge_store import EdgeStore
from services.retrieval.filters import Match
from tests.support.memory_process import kill, start_memory
from tests.support.redis_relay import relaying

OUTBOX = "gensearch:{search-outbox}:jobs"
# Bounds on the waits (every 0.1 s) for the index and the drain, not timing assertions.
WAIT_ROUNDS = 600


async def _start(redis_url: str, data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    return await start_memory(
        data_dir, redis_url=redis_url, search_index="keyword", search_retry_seconds="0.3"
    )


async def _indexed(data_dir: Path, field: str, values: list[str]) -> dict[str, int]:
    """The index's entries (two a turn) whose ``field`` is each of ``values``, read by the
    test's own engine (no replica running: the files are free)."""
    engine = EdgeStore(data_dir / "memory-index")
    await engine.open()
    try:
        collection = MemorySettings().search_collection
        return {v: await engine.count(collection, Match(field, v)) for v in values}
    finally:
        await engine.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "deletion_runs"),
    [("conversation", True), ("interaction", True), ("conversation", False)],
)
async def test_a_replica_killed_right_after_a_deletion_leaves_its_drop_job(
    redis_server: RedisProcess, tmp_path: Path, what: str, deletion_runs: bool
) -> None:
    """``deletion_runs`` False: killed just before the deletion's script, which never runs:
    the job written ahead of it drops nothing (the conversation is still there)."""
    sha = hashlib.sha1(lua_source(f"delete_{what}").encode()).hexdigest().encode()
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    armed = killed = False
    held = asyncio.Event()  # never set: the killed replica's command goes nowhere
    dying: asyncio.subprocess.Process | None = None

    async def kill_at_the_deletion(args: list[bytes]) -> None:
        nonlocal killed
        if not (armed and args[0].upper() == b"EVALSHA" and args[1] == sha):
            return
        if deletion_runs:
            try:
                answer = await redis.execute_command(*args)  # the deletion, on Redis, here
            except ResponseError:
                return  # a run asking for more keys first (it wrote nothing)
            if isinstance(answer, list) and answer[0] != 1:
                return  # DeleteInteraction's run naming its turn's keys (nothing written)
        assert dying is not None
        os.kill(dying.pid, signal.SIGKILL)
        killed = True
        await held.wait()

    data = tmp_path / "replica"
    try:
        async with relaying(redis_server.url, kill_at_the_deletion) as relay_url:
            dying, address = await _start(relay_url, data)
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = pb_grpc.MemoryServiceStub(channel)
                    made = await stub.CreateConversation(pb.CreateConversationRequest())
                    cid = made.conversation.conversation_id
                    iids = [
                        (
                            await stub.CreateInteraction(
                                pb.CreateInteractionRequest(
                                    conversation_id=cid, input=f"pelican {n}", response="pouch"
                                )
                            )
                        ).interaction.interaction_id
                        for n in range(2)
                    ]
                    for _ in range(WAIT_ROUNDS):  # indexed, and no job left in the outbox
                        found = await stub.SearchInteractions(
                            pb.SearchInteractionsRequest(
                                query="pelican", mode=pb.SEARCH_MODE_KEYWORD
                            )
                        )
                        if len(found.hits) == 2 and await redis.zcard(OUTBOX) == 0:
                            break
                        await asyncio.sleep(0.1)
                    assert len(found.hits) == 2
                    armed = True
                    with pytest.raises(grpc.aio.AioRpcError):
                        if what == "conversation":
                            await stub.DeleteConversation(
                                pb.DeleteConversationRequest(conversation_id=cid), timeout=30
                            )
                        else:
                            await stub.DeleteInteraction(
                                pb.DeleteInteractionRequest(interaction_id=iids[0]), timeout=30
                            )
                assert killed
            finally:
                await kill(dying)

        survivor, _ = await _start(redis_server.url, data)
        try:
            for _ in range(WAIT_ROUNDS):  # its drain runs what the killed replica left
                if await redis.zcard(OUTBOX) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await redis.zcard(OUTBOX) == 0
        finally:
            survivor.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(survivor.wait(), 30)
            await kill(survivor)

        if not deletion_runs:
            assert await _indexed(data, "c", [cid]) == {cid: 4}
        elif what == "conversation":
            assert await _indexed(data, "c", [cid]) == {cid: 0}
        else:
            assert await _indexed(data, "i", iids) == {iids[0]: 0, iids[1]: 2}
    finally:
        await redis.aclose()
