"""The search index's jobs a short call starts, on the real 3-node Redis Cluster, while the
slot those jobs write to in Redis (the outbox's, ``{search-outbox}``) is mid-move past that
call's deadline: once the move has ended, the turn is found by search, and a deleted
conversation's entries are gone from the index.

A job runs as a task of its own, which copies the call's context, the call's deadline
cutoff with it, unless ``call_deadline.context_past_the_call`` drops it (``Indexer.
_outliving``). A job a call starts touches Redis only through the outbox (its write ahead,
its removal once done); the index is the embedded engine. The owner's own slot is read by a
job only in a drain (``Indexer._apply``), whose task no call started. So the first test is
a guard: it passed before ``context_past_the_call`` too.

The outbox's writes wait for a slot move (``_redis_waiting``): the write ahead within the
call's deadline (the call awaits it), the work after the call with no call deadline. The
second test holds a move shorter than the call's deadline: the job is written ahead. It
failed before, when the outbox's writes never waited."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from redis.crc import key_slot

from tests.memory.helpers import conversation_with_turns
from tests.memory.test_cluster_migration import WHO, _memory_server, _slot_refusals
from tests.memory.test_killed_delete import _indexed
from tests.support.redis_cluster import LocalCluster

BACKENDS = ("cluster",)
CALL_SECONDS = 1.0  # the short deadline of the call that starts the job
# The outbox's slot (the service's default key prefix), and a key of the test's own in it:
# the outbox holds no key once its jobs are done, and a move of an empty slot has no middle.
OUTBOX_SLOT = key_slot(b"search-outbox")
FILLER = "gensearch:{search-outbox}:filler"
WAIT_SECONDS = 15.0


async def _found(stub: pb_grpc.MemoryServiceStub, query: str) -> list[str]:
    """The ids SearchInteractions finds for ``query``, once any (at most WAIT_SECONDS)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_SECONDS
    while True:
        request = pb.SearchInteractionsRequest(query=query)
        found = await stub.SearchInteractions(request, metadata=WHO)
        ids = [hit.interaction.interaction_id for hit in found.hits]
        if ids or loop.time() > end:
            return ids
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("call", ["CreateInteraction", "DeleteConversation"])
async def test_an_index_job_a_short_call_starts_is_done_after_the_outbox_slot_move(
    own_cluster: LocalCluster, tmp_path: Path, call: str
) -> None:
    """The call (a 1 s deadline) is sent while the outbox's slot is mid-move, which Redis
    refuses the outbox's scripts for (TRYAGAIN); the move is held past the call's
    deadline, then ends. The call is answered (its write ahead waits for the move only
    within the call's deadline, then gives up: it does not keep the caller past it). The
    turn is then found by search; the deleted conversation has no entry left in the
    index."""
    server = await _memory_server(
        own_cluster, search_index="keyword", data_dir=tmp_path, search_retry_seconds=3600
    )
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            cid, iids = await conversation_with_turns(stub, "heron", 1, WHO)
            assert await _found(stub, "heron0") == iids  # indexed before the move
            source = next(node for node in own_cluster.nodes if node.owns(OUTBOX_SLOT))
            target = next(node for node in own_cluster.nodes if node is not source)
            async with source.client() as client:
                await client.set(FILLER, "x")
            made: list[str] = []
            refused: list[float] = []

            async def hold() -> None:
                if made:
                    return
                before = _slot_refusals()
                if call == "CreateInteraction":
                    turn = pb.CreateInteractionRequest(conversation_id=cid, input="kumquat")
                    answer = await stub.CreateInteraction(turn, metadata=WHO, timeout=CALL_SECONDS)
                    made.append(answer.interaction.interaction_id)
                else:
                    gone = pb.DeleteConversationRequest(conversation_id=cid)
                    await stub.DeleteConversation(gone, metadata=WHO, timeout=CALL_SECONDS)
                    made.append(cid)
                refused.append(_slot_refusals() - before)
                await asyncio.sleep(CALL_SECONDS * 1.5)  # past the call's deadline, mid-move

            await own_cluster.migrate_slot(
                OUTBOX_SLOT, source, target, batch=1000, between=hold, first=[FILLER]
            )
            assert made, "the move never reached its middle"
            assert refused[0] >= 1  # the call's job met the move (its write ahead refused)
            if call == "CreateInteraction":
                assert await _found(stub, "kumquat") == made
                return
        await server.stop(0)  # waits for the index's jobs; frees the index's files
        stopped = True
        assert await _indexed(tmp_path, "c", [cid]) == {cid: 0}
    finally:
        if not stopped:
            await server.stop(0)


@pytest.mark.parametrize("call", ["CreateInteraction", "DeleteConversation"])
async def test_a_job_is_written_ahead_once_a_move_of_the_outbox_slot_ends(
    own_cluster: LocalCluster, tmp_path: Path, call: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The call is sent while the outbox's slot is mid-move, which Redis refuses the
    outbox's write ahead for (TRYAGAIN: it declares keys that do not exist); the move ends
    while the call waits, within its deadline. The job is written ahead (no "not written
    ahead" WARNING, which says a kill -9 would lose it) and the routine reshard is no
    outage (no "memory store unavailable" WARNING); the call is answered. Before, the
    write ahead was refused at once, both WARNINGs logged, for every call of the move."""
    server = await _memory_server(
        own_cluster, search_index="keyword", data_dir=tmp_path, search_retry_seconds=3600
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            cid, _ = await conversation_with_turns(stub, "heron", 1, WHO)
            source = next(node for node in own_cluster.nodes if node.owns(OUTBOX_SLOT))
            target = next(node for node in own_cluster.nodes if node is not source)
            async with source.client() as client:
                await client.set(FILLER, "x")
            calls: list[asyncio.Future[Any]] = []
            refused: list[float] = []

            async def hold() -> None:
                if calls:
                    return
                before = _slot_refusals()
                if call == "CreateInteraction":
                    turn = pb.CreateInteractionRequest(conversation_id=cid, input="kumquat")
                    sent = stub.CreateInteraction(turn, metadata=WHO, timeout=30)
                else:
                    gone = pb.DeleteConversationRequest(conversation_id=cid)
                    sent = stub.DeleteConversation(gone, metadata=WHO, timeout=30)
                calls.append(asyncio.ensure_future(sent))
                loop = asyncio.get_running_loop()
                end = loop.time() + WAIT_SECONDS
                # Held until the write ahead has met the move (or the call was answered).
                while _slot_refusals() == before and not calls[0].done():
                    assert loop.time() < end, "the call never met the move"
                    await asyncio.sleep(0.02)
                refused.append(_slot_refusals() - before)

            caplog.clear()
            await own_cluster.migrate_slot(
                OUTBOX_SLOT, source, target, batch=1000, between=hold, first=[FILLER]
            )
            assert calls, "the move never reached its middle"
            await calls[0]  # answered: not UNAVAILABLE, nor past its deadline
            assert refused[0] >= 1  # the write ahead met the move
    finally:
        await server.stop(0)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in messages if "not written ahead" in m], messages
    assert not [m for m in messages if "memory store unavailable" in m], messages
