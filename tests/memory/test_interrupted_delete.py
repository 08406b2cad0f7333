"""``kill -9`` of the memory service in the middle of a DeleteConversation of a
conversation longer than a batch (store.DELETE_BATCH): another replica finishes the
deletion on its own (services/memory/deletions.py), no turn key is left, and the
conversation answers NOT_FOUND from the moment the first batch ran. Before, the turns
of the later batches stayed in Redis for good unless the client retried the call."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.store import DELETE_BATCH
from tests.support.memory_process import kill, start_memory
from tests.support.redis_relay import relaying

TURNS = DELETE_BATCH + 20
# A bound on the wait for the survivor's resume (every 0.2 s), not a timing assertion.
RESUME_WAIT_ROUNDS = 300


async def _start(
    redis_url: str, data_dir: Path, resume_seconds: str
) -> tuple[asyncio.subprocess.Process, str]:
    return await start_memory(data_dir, redis_url=redis_url, delete_resume_seconds=resume_seconds)


@pytest.mark.slow
async def test_kill_9_between_the_batches_of_a_delete(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    armed = False
    ints_reads = 0
    held = asyncio.Event()  # never set: the killed process's next command goes nowhere
    dying: asyncio.subprocess.Process | None = None

    async def kill_after_the_first_batch(args: list[bytes]) -> None:
        # The delete reads each batch's turn ids (ZRANGE of the conversation's list)
        # before its run; the second read comes right after the first run answered.
        nonlocal ints_reads
        if not (armed and args[0].upper() == b"ZRANGE" and args[1].endswith(b":ints")):
            return
        ints_reads += 1
        if ints_reads == 2 and dying is not None:
            os.kill(dying.pid, signal.SIGKILL)
            await held.wait()

    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=2)
    async with relaying(redis_server.url, kill_after_the_first_batch) as relay_url:
        dying, address = await _start(relay_url, tmp_path / "a", "3600")
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.MemoryServiceStub(channel)
                made = await stub.CreateConversation(pb.CreateConversationRequest(name="long"))
                cid = made.conversation.conversation_id
                for n in range(TURNS):
                    await stub.CreateInteraction(
                        pb.CreateInteractionRequest(
                            conversation_id=cid, input=f"turn {n}", request_id=f"r{n}"
                        )
                    )
                armed = True
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.DeleteConversation(
                        pb.DeleteConversationRequest(conversation_id=cid), timeout=30
                    )
            assert ints_reads == 2  # killed between its first and second batch
        finally:
            await kill(dying)

    async def turn_keys() -> list[bytes]:
        return [key async for key in redis.scan_iter(match="*:int:*", count=1000)]

    left = await turn_keys()
    assert 0 < len(left) <= TURNS - DELETE_BATCH  # the first batch went, the rest stayed
    survivor, address = await _start(redis_server.url, tmp_path / "b", "0.2")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            for _ in range(RESUME_WAIT_ROUNDS):
                with pytest.raises(grpc.aio.AioRpcError) as gone:
                    await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))
                assert gone.value.code() == grpc.StatusCode.NOT_FOUND
                if not await turn_keys():
                    break
                await asyncio.sleep(0.1)
            assert await turn_keys() == []
            assert [k async for k in redis.scan_iter(match="*:req:*", count=1000)] == []
            assert await redis.zcard("gensearch:{deletes}:pending") == 0
            listed = await stub.ListConversations(pb.ListConversationsRequest())
            assert list(listed.conversations) == []
    finally:
        await kill(survivor)
        await redis.aclose()
