"""Reads that race a stream of writes to the same conversation answer, never ABORTED.

ListConversations and GetConversation check a window of each conversation's turns for
gone keys (lua/read.lua's missing_turn), every turn key declared: a run asks for the
window's turns, the next declares them. Eight writers adding turns meanwhile put a new,
undeclared turn in the window before nearly every run, and a read used up its
RUN_ATTEMPTS and answered ABORTED ("kept changing meanwhile", found flaky in
test_durability's kill test). The check is a sample of the turns: the last runs of a
read leave it out (store.py's SAMPLE_RUNS) and answer.
"""

from __future__ import annotations

import asyncio

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb

from tests.memory.conftest import ALICE, Memory

WRITERS = 8
READS = 40


async def test_reads_racing_a_stream_of_writes_answer(memory: Memory) -> None:
    s = memory.stub
    created = await s.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    cid = created.conversation.conversation_id
    stop = asyncio.Event()
    written = 0

    async def writer(w: int) -> None:
        nonlocal written
        n = 0
        while not stop.is_set():
            n += 1
            await s.CreateInteraction(
                pb.CreateInteractionRequest(conversation_id=cid, input=f"w{w}-{n}"),
                metadata=ALICE,
            )
            written += 1

    writing = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    aborted: list[str] = []
    try:
        await asyncio.sleep(0.2)
        for _ in range(READS):
            calls = (
                s.ListConversations(pb.ListConversationsRequest(), metadata=ALICE),
                s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE),
            )
            for call in calls:
                try:
                    await call
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.ABORTED, err
                    aborted.append(err.details() or "")
    finally:
        stop.set()
        await asyncio.gather(*writing)
    assert written > READS  # the writes really ran beside the reads
    assert not aborted, f"{len(aborted)} of {2 * READS} reads ABORTED: {aborted[0]}"
    conv = await s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE)
    assert conv.conversation.interaction_count == written
