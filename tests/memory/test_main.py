"""`python -m services.memory` on its own: embedded Redis, SIGTERM, restart, no leftovers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.devlaunch.processes import free_port
from tests.support.processes import alive, descendants, wait_serving

ROOT = Path(__file__).resolve().parents[2]
MEMORY = "gensearch.memory.v1.MemoryService"


async def _start(data_dir: Path, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update(
        GENSEARCH_DATA_DIR=str(data_dir),
        GENSEARCH_MEMORY_PORT=str(port),
        GENSEARCH_MEMORY_METRICS_PORT="0",
        GENSEARCH_MEMORY_GRACE_PERIOD="2",
    )
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.memory", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _terminate(proc: asyncio.subprocess.Process) -> bytes:
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    return stderr


async def test_runs_alone_with_embedded_redis(tmp_path: Path) -> None:
    port = free_port()
    proc = await _start(tmp_path, port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(f"127.0.0.1:{port}", proc, service=MEMORY)
            redis_pids = descendants(proc.pid)
            assert redis_pids, "no embedded redis child process"
            stub = pb_grpc.MemoryServiceStub(channel)
            conv = (
                await stub.CreateConversation(pb.CreateConversationRequest(name="n"))
            ).conversation
            assert conv.user == "anonymous"
            made = await stub.CreateInteraction(
                pb.CreateInteractionRequest(conversation_id=conv.conversation_id, input="q")
            )
        stderr = await _terminate(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"Traceback" not in stderr
    for pid in redis_pids:
        assert not alive(pid), "embedded redis left running"
    assert (tmp_path / "redis").is_dir()

    # Restart of both: the acknowledged interaction is there.
    proc = await _start(tmp_path, port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(f"127.0.0.1:{port}", proc, service=MEMORY)
            stub = pb_grpc.MemoryServiceStub(channel)
            listed = await stub.ListInteractions(
                pb.ListInteractionsRequest(conversation_id=conv.conversation_id)
            )
            assert [i.interaction_id for i in listed.interactions] == [
                made.interaction.interaction_id
            ]
            redis_pids = descendants(proc.pid)
        await _terminate(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for pid in redis_pids:
        assert not alive(pid)
