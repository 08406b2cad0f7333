"""``kill -9`` of the memory service and of its embedded Redis right after acknowledged
writes: every one is there after a restart, and search finds the turns (eventually)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from google.protobuf import field_mask_pb2

from tests.support.memory_process import start_memory
from tests.support.processes import descendants

# Longer than the retry period and a restart, far shorter than the sweep's hour.
SEARCH_WAIT_SECONDS = 30.0


async def _start(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    # Its own embedded Redis: the test kills that too.
    return await start_memory(data_dir, search_index="keyword", search_retry_seconds="0.5")


def _kill_9(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def _found(stub: pb_grpc.MemoryServiceStub, word: str) -> list[str]:
    """The ids of the turns a keyword search for ``word`` finds, once it finds any (or
    none after SEARCH_WAIT_SECONDS)."""
    deadline = time.monotonic() + SEARCH_WAIT_SECONDS
    while True:
        found = await stub.SearchInteractions(
            pb.SearchInteractionsRequest(query=word, mode=pb.SEARCH_MODE_KEYWORD)
        )
        if found.hits or time.monotonic() > deadline:
            return [hit.interaction.interaction_id for hit in found.hits]
        await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_kill_9_of_memory_and_redis_right_after_acknowledged_writes(
    tmp_path: Path,
) -> None:
    proc, address = await _start(tmp_path)
    try:
        redis_pids = descendants(proc.pid)
        assert redis_pids, "no embedded Redis"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            made = await stub.CreateConversation(pb.CreateConversationRequest(name="kept"))
            cid = made.conversation.conversation_id
            first = (
                await stub.CreateInteraction(
                    pb.CreateInteractionRequest(
                        conversation_id=cid, input="about kumquats", response="sour", request_id="a"
                    )
                )
            ).interaction
            first.additional_info.update({"rating": "good"})
            await stub.UpdateInteraction(
                pb.UpdateInteractionRequest(
                    interaction=first,
                    update_mask=field_mask_pb2.FieldMask(paths=["additional_info"]),
                )
            )
            await stub.UpdateConversationSummary(
                pb.UpdateConversationSummaryRequest(
                    conversation_id=cid,
                    text="kumquats so far",
                    through_interaction_id=first.interaction_id,
                    summarised_turns=1,
                )
            )
            # The last acknowledgement, then kill -9 at once: its index job had no time.
            last = (
                await stub.CreateInteraction(
                    pb.CreateInteractionRequest(
                        conversation_id=cid, input="about zebras", response="striped"
                    )
                )
            ).interaction
        _kill_9({proc.pid, *redis_pids})
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    proc, address = await _start(tmp_path)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            got = (
                await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))
            ).conversation
            assert got.interaction_count == 2
            assert got.summary.text == "kumquats so far"
            assert got.summary.through_interaction_id == first.interaction_id
            listed = await stub.ListInteractions(pb.ListInteractionsRequest(conversation_id=cid))
            assert [i.interaction_id for i in listed.interactions] == [
                last.interaction_id,
                first.interaction_id,
            ]
            assert dict(listed.interactions[1].additional_info) == {"rating": "good"}
            # A retried request_id is still known: the same turn, not a second one.
            again = await stub.CreateInteraction(
                pb.CreateInteractionRequest(
                    conversation_id=cid, input="about kumquats", response="sour", request_id="a"
                )
            )
            assert again.interaction.interaction_id == first.interaction_id
            # Both turns are found by search: the last one's job outlived the kill.
            assert await _found(stub, "kumquats") == [first.interaction_id]
            assert await _found(stub, "zebras") == [last.interaction_id]
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
