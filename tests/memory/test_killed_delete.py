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
import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from redis.exceptions import ResponseError

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.settings import MemorySettings
from services.memory.store import DELETE_BATCH, lua_source
from services.retrieval.edge_store import EdgeStore
from services.retrieval.filters import Match
from tests.support.memory_process import kill, start_memory
from tests.support.redis_relay import relaying

OUTBOX = "gensearch:{search-outbox}:jobs"
PENDING = "gensearch:{deletes}:pending"
# Bounds on the waits (every 0.1 s) for the index and the drain, not timing assertions.
WAIT_ROUNDS = 600


async def _start(
    redis_url: str, data_dir: Path, *, resume_seconds: str = "3600", outbox_jobs: int = 100_000
) -> tuple[asyncio.subprocess.Process, str]:
    return await start_memory(
        data_dir,
        redis_url=redis_url,
        search_index="keyword",
        search_retry_seconds="0.3",
        delete_resume_seconds=resume_seconds,
        search_outbox_max_jobs=str(outbox_jobs),
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
    ("what", "deletion_runs", "outbox_full"),
    [
        ("conversation", True, False),
        ("interaction", True, False),
        ("conversation", False, False),
        ("conversation", True, True),
        ("interaction", True, True),
    ],
)
async def test_a_replica_killed_right_after_a_deletion_leaves_its_drop_job(
    redis_server: RedisProcess, tmp_path: Path, what: str, deletion_runs: bool, outbox_full: bool
) -> None:
    """``deletion_runs`` False: killed just before the deletion's script, which never runs:
    the job written ahead of it drops nothing (the conversation is still there).

    ``outbox_full``: the outbox holds its most jobs (GENSEARCH_MEMORY_SEARCH_OUTBOX_MAX_JOBS,
    here 1: another job, not due): a deletion's drop job takes the outbox's reserve for
    deletions. Before, the outbox refused it, the call answered OK all the same and ran
    the drop from memory, and a replica killed before it ran left the entries in the index
    until the sweep."""
    most = 1 if outbox_full else 100_000
    # Not due within the test: it stays, and holds the outbox's one place.
    filler = json.dumps(["index", "other-tenant", "other-user", "not-due"])
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
            dying, address = await _start(relay_url, data, outbox_jobs=most)
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
                    if outbox_full:
                        await redis.zadd(OUTBOX, {filler: time.time() * 1000 + 3_600_000})
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

        survivor, _ = await _start(redis_server.url, data, outbox_jobs=most)
        left = 1 if outbox_full else 0  # the filler, never due
        try:
            for _ in range(WAIT_ROUNDS):  # its drain runs what the killed replica left
                if await redis.zcard(OUTBOX) == left:
                    break
                await asyncio.sleep(0.1)
            assert await redis.zcard(OUTBOX) == left
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


@pytest.mark.slow
async def test_a_resume_killed_after_its_deletion_leaves_its_drop_job(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """The twice-killed resume. A DeleteConversation of a conversation longer than a batch
    is slower than a retry period: a drain finds the conversation still there and takes
    its drop job out (it would drop nothing). Its first batch runs, and the replica is
    killed before the next (kill -9 one: the call's own rewrite of the job is lost with
    it). Another replica's resume finishes the deletion and is killed right after its run
    (kill -9 two). A third replica then leaves the conversation's turns in neither search
    nor the index. Before, the resume sent its drop job from memory after the run: it was
    lost with the second kill, and the index kept every turn's entries until the sweep
    (hourly by default)."""
    turns = DELETE_BATCH + 1
    delete_sha = hashlib.sha1(lua_source("delete_conversation").encode()).hexdigest().encode()
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    held = asyncio.Event()  # never set: a killed replica's command goes nowhere
    data = tmp_path / "replica"

    async def outbox_empty() -> bool:
        for _ in range(WAIT_ROUNDS):
            if await redis.zcard(OUTBOX) == 0:
                return True
            await asyncio.sleep(0.1)
        return False

    # Kill one: the call's first run waits until a drain took its job out (the
    # conversation still there), then runs; the replica dies before its second batch.
    first = {"armed": False, "drained_first": False, "ints_reads": 0}
    dying: asyncio.subprocess.Process | None = None

    async def slow_then_killed(args: list[bytes]) -> None:
        if not first["armed"]:
            return
        command = args[0].upper()
        if command == b"EVALSHA" and args[1] == delete_sha and not first["drained_first"]:
            first["drained_first"] = await outbox_empty()
        elif command == b"ZRANGE" and args[1].endswith(b":ints"):
            first["ints_reads"] += 1
            if first["ints_reads"] == 2 and dying is not None:
                os.kill(dying.pid, signal.SIGKILL)
                await held.wait()

    try:
        async with relaying(redis_server.url, slow_then_killed) as relay_url:
            dying, address = await _start(relay_url, data)
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = pb_grpc.MemoryServiceStub(channel)
                    made = await stub.CreateConversation(pb.CreateConversationRequest())
                    cid = made.conversation.conversation_id
                    for start in range(0, turns, 50):
                        await asyncio.gather(
                            *(
                                stub.CreateInteraction(
                                    pb.CreateInteractionRequest(
                                        conversation_id=cid, input=f"pelican {n}", response="pouch"
                                    )
                                )
                                for n in range(start, min(start + 50, turns))
                            )
                        )
                    assert await outbox_empty()  # every turn indexed
                    found = await stub.SearchInteractions(
                        pb.SearchInteractionsRequest(query="pelican", mode=pb.SEARCH_MODE_KEYWORD)
                    )
                    assert len(found.hits) > 0
                    first["armed"] = True
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.DeleteConversation(
                            pb.DeleteConversationRequest(conversation_id=cid), timeout=60
                        )
                assert first["drained_first"] and first["ints_reads"] == 2
            finally:
                await kill(dying)
        assert await redis.zcard(OUTBOX) == 0  # the call's job: drained, not rewritten
        assert await redis.zcard(PENDING) == 1  # its mark, for a resume

        # Kill two: the resume's run of the deletion goes to Redis from the relay, and
        # the replica is killed before it reads the answer.
        serving = asyncio.Event()
        resumed: list[object] = []
        resumer: asyncio.subprocess.Process | None = None

        async def resumed_then_killed(args: list[bytes]) -> None:
            if not (args[0].upper() == b"EVALSHA" and args[1] == delete_sha):
                return
            await serving.wait()
            try:
                resumed.append(await redis.execute_command(*args))  # the resume's run, here
            except ResponseError:
                return  # a run asking for more keys first (it wrote nothing)
            assert resumer is not None
            os.kill(resumer.pid, signal.SIGKILL)
            await held.wait()

        async with relaying(redis_server.url, resumed_then_killed) as relay_url:
            resumer, _ = await _start(relay_url, data, resume_seconds="0.2")
            try:
                serving.set()
                for _ in range(WAIT_ROUNDS):
                    if resumed:
                        break
                    await asyncio.sleep(0.1)
                assert resumed == [1]  # it deleted the last turn, and was killed
                assert await resumer.wait() == -signal.SIGKILL
            finally:
                await kill(resumer)
        assert [k async for k in redis.scan_iter(match="*:int:*", count=1000)] == []

        survivor, address = await _start(redis_server.url, data, resume_seconds="0.2")
        try:
            for _ in range(WAIT_ROUNDS):  # its drain, and its resume of the mark left
                if await redis.zcard(OUTBOX) == 0 and await redis.zcard(PENDING) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await redis.zcard(OUTBOX) == 0
            assert await redis.zcard(PENDING) == 0
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.MemoryServiceStub(channel)
                found = await stub.SearchInteractions(
                    pb.SearchInteractionsRequest(query="pelican", mode=pb.SEARCH_MODE_KEYWORD)
                )
                assert list(found.hits) == []
        finally:
            survivor.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(survivor.wait(), 30)
            await kill(survivor)
        assert await _indexed(data, "c", [cid]) == {cid: 0}
    finally:
        await redis.aclose()
