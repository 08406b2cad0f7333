"""A turn's index job is in the outbox before the turn is acknowledged (so a replica killed
before the index took it loses nothing: tests/memory/test_kill_9.py), and leaves it once
the index holds the turn. A drain finding the job due while it still runs in this replica
moves it on rather than indexing the turn a second time beside it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import NotFound
from services.common.redis_client import connect
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex
from services.memory.store import MemoryStore, Owner
from services.retrieval.edge_store import EdgeStore
from tests.memory.conftest import Target

BACKENDS = ("standalone",)
ALICE = Owner("acme", "alice")
FAR = 2**62  # a due time every job is before


class _HeldIndex(InteractionIndex):
    """The real index, whose writes wait until ``go`` is set (an embedder slower than the
    retry period), counted."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.go = asyncio.Event()
        self.adds = 0

    async def add(self, owner: Owner, interaction: pb.Interaction) -> None:
        self.adds += 1
        await self.go.wait()
        await super().add(owner, interaction)


@contextlib.asynccontextmanager
async def held_indexer(
    url: str, tmp_path: Path, retry_seconds: float
) -> AsyncIterator[tuple[MemoryStore, _HeldIndex, Indexer]]:
    """A store on its own key prefix and an indexer of a ``_HeldIndex``, closed after."""
    redis = connect(url, cluster=False, socket_timeout=5, connect_timeout=2)
    store = MemoryStore(redis, key_prefix=f"ahead-{uuid.uuid4().hex[:8]}")
    index = _HeldIndex(EdgeStore(tmp_path / "index"), None, "ahead")
    indexer = Indexer(store, index, retry_seconds=retry_seconds)
    try:
        yield store, index, indexer
    finally:
        await indexer.close()
        await redis.aclose()


async def test_the_job_is_written_ahead_run_once_and_then_removed(
    target: Target, tmp_path: Path
) -> None:
    async with held_indexer(target.url, tmp_path, 0.05) as (store, index, indexer):
        cid = (await store.create_conversation(ALICE, "c")).conversation_id
        turn = await store.create_interaction(ALICE, cid, pb.Interaction(input="kumquats"), "")
        before = time.time_ns() // 1_000_000
        await indexer.stored(ALICE, turn)
        job = json.dumps(["index", ALICE.tenant, ALICE.user, turn.interaction_id])
        assert await store.outbox_due(FAR, 10) == [job]  # there before the acknowledgement
        assert await store.outbox_due(before, 10) == []  # due a retry period later

        await asyncio.sleep(0.1)  # due now, still running here
        assert await store.outbox_due(time.time_ns() // 1_000_000, 10) == [job]
        # (Run again, it would wait here for `go`: the same write twice.)
        assert await asyncio.wait_for(indexer.drain(), 10) == 0
        assert index.adds == 1  # not run again beside itself
        assert await store.outbox_due(time.time_ns() // 1_000_000, 10) == []  # moved on

        index.go.set()
        await indexer.idle()
        assert await index.indexed([turn.interaction_id]) == {turn.interaction_id}
        assert await store.outbox_due(FAR, 10) == []  # done: out of the outbox


async def test_a_deletions_drop_job_has_a_reserve_past_the_outbox_bounds(target: Target) -> None:
    """A deletion's drop job written ahead (``deletion=True``) is queued past the outbox's
    most jobs and past its tenant's share, up to twice each; other jobs are refused at the
    bounds as before. Before, the full outbox refused a deletion's drop job too, and it was
    run from the replica's memory only (lost with a kill -9). The reserve has a bound per
    tenant (twice its share): a deletion of a missing id keeps its job until the drop ran
    (it may be a racing deletion's), so without one, a tenant deleting made-up ids while
    the index was down filled the whole reserve, and every other tenant's jobs were
    refused."""
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis)
    try:
        await store.load_scripts()

        async def add(
            name: str, *, deletion: bool, owner: Owner = ALICE, index: bool = False
        ) -> int:
            job = json.dumps(["drop-conversation", owner.tenant, owner.user, name])
            return await store.outbox_add(
                job, FAR, owner, max_jobs=3, per_tenant=1, index=index, deletion=deletion
            )

        bob, carol, dave = (Owner(f"t-{n}", n) for n in ("bob", "carol", "dave"))
        assert await add("a", deletion=False) == 1
        assert await add("b", deletion=False) == -1  # the tenant's share
        assert await add("b", deletion=True) == 1  # a deletion's drop: twice the share
        assert await add("c", deletion=True) == -1  # the tenant holds twice its share
        assert await add("c", deletion=False, owner=bob) == 1
        assert await add("d", deletion=False, owner=bob) == 0  # the outbox holds its most
        assert await add("d", deletion=True, owner=bob) == 1
        assert await add("e", deletion=True, owner=carol) == 1
        assert await add("f", deletion=True, owner=carol) == 1
        assert await add("g", deletion=True, owner=dave) == 0  # twice its most jobs
        # There already: queued (1), once; only its due time moves, its tenant's count not.
        assert await add("a", deletion=True) == 1
        assert await redis.zcard(store.outbox_key) == 6
        tenants = store.outbox_key.removesuffix(":jobs") + ":tenants"
        assert await redis.hget(tenants, ALICE.tenant) == b"2"
    finally:
        await store.close()


async def test_a_delete_losing_a_race_to_another_leaves_the_turn_dropped(
    target: Target, tmp_path: Path
) -> None:
    """Two DeleteInteraction of one turn at once (a client's retry on another replica while
    its first call still runs): this call writes the drop job ahead first, the other finds
    it there (queued once), deletes the turn, and its replica is killed before its drop ran. This
    call then finds nothing (NOT_FOUND). The job is the other's too: the turn's entries
    must still leave the index. Before, this call took the job out as one it had put there
    for nothing (``fresh``), and the index kept the deleted turn until the sweep."""
    async with held_indexer(target.url, tmp_path, 3600) as (store, index, indexer):
        index.go.set()
        cid = (await store.create_conversation(ALICE, "c")).conversation_id
        turn = await store.create_interaction(ALICE, cid, pb.Interaction(input="quinces"), "")
        iid = turn.interaction_id
        await indexer.stored(ALICE, turn)
        await indexer.idle()
        assert await index.indexed([iid]) == {iid}
        job = json.dumps(["drop-interaction", ALICE.tenant, ALICE.user, iid])

        async def beaten_by_the_other_replica() -> str:
            # The other replica: its write-ahead finds this call's job, its deletion runs,
            # then it is killed (its drop never runs).
            there = await store.outbox_add(
                job, FAR - 1, ALICE, max_jobs=100, per_tenant=0, index=False, deletion=True
            )
            assert there == 1 and await store.outbox_due(FAR, 10) == [job]  # queued, once
            await store.delete_interaction(ALICE, iid)
            return await store.delete_interaction(ALICE, iid)  # this call's own: NOT_FOUND

        with pytest.raises(NotFound):
            await indexer.dropping(ALICE, beaten_by_the_other_replica, iid=iid)
        await indexer.idle()
        assert await index.indexed([iid]) == set()
        assert await store.outbox_due(FAR, 10) == []  # done: out of the outbox


async def test_a_resume_finding_its_deletion_done_by_another_leaves_the_drop_job(
    target: Target, tmp_path: Path
) -> None:
    """The resume of an interrupted DeleteConversation writes the drop job ahead first; a
    client's retry of the call on another replica finds it there (queued once), finishes the
    deletion, and is killed before its drop ran. The resume then finds nothing left (its
    deletion answers False). The job is the other's too: the conversation's entries must
    still leave the index, by the next drain. Before, the resume took the job out as one
    it had put there for nothing (``fresh``), and the index kept every turn until the
    sweep."""
    async with held_indexer(target.url, tmp_path, 0.05) as (store, index, indexer):
        index.go.set()
        cid = (await store.create_conversation(ALICE, "c")).conversation_id
        iids = []
        for word in ("sloes", "rowans"):
            turn = await store.create_interaction(ALICE, cid, pb.Interaction(input=word), "")
            await indexer.stored(ALICE, turn)
            iids.append(turn.interaction_id)
        await indexer.idle()
        assert await index.indexed(iids) == set(iids)
        job = json.dumps(["drop-conversation", ALICE.tenant, ALICE.user, cid])

        async def finished_by_the_other_replica() -> bool:
            due = time.time_ns() // 1_000_000 + 50  # its retry period, as this indexer's
            there = await store.outbox_add(
                job, due, ALICE, max_jobs=100, per_tenant=0, index=False, deletion=True
            )
            assert there == 1 and await store.outbox_due(FAR, 10) == [job]  # queued, once
            assert await store.delete_conversation(ALICE, cid)
            made_by = time.time_ns() // 1_000_000
            return await store.delete_conversation(ALICE, cid, finish_only=made_by)

        assert await indexer.dropping(ALICE, finished_by_the_other_replica, cid=cid) is False
        await indexer.idle()
        await asyncio.sleep(0.1)  # the job due (a retry period of 0.05 s)
        await asyncio.wait_for(indexer.drain(), 10)
        await indexer.idle()
        assert await index.indexed(iids) == set()
        assert await store.outbox_due(FAR, 10) == []  # done: out of the outbox
