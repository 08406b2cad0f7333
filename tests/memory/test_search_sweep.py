"""The index sweep: entries of turns that Redis no longer holds — expired by retention,
deleted or evicted by anything that did not tell the index — are removed, and live ones
kept. A turn whose conversation hash expired is gone even while its own key lingers.
Real Redis (standalone and cluster), the real qdrant-edge engine, no gRPC: the sweep's
effect is read in the engine itself."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from qdrant_client import AsyncQdrantClient

from services.common.redis_client import RedisClient, connect
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex
from services.memory.store import MemoryStore, Owner
from services.retrieval.edge_store import EdgeStore
from services.retrieval.server_store import ServerStore
from services.retrieval.store import VectorStore
from tests.memory.conftest import Target

ALICE = Owner("acme", "alice")
BOB = Owner("acme", "bob")
FLOOD = Owner("acme", "carol")  # the owner whose index jobs the outbox refuses


@dataclass
class Sweeping:
    """A store on the test's Redis, its search index and its indexer (whose sweep is
    called by hand: no retry loop runs in these tests)."""

    redis: RedisClient
    store: MemoryStore
    index: InteractionIndex
    indexer: Indexer

    async def turn(
        self, owner: Owner, cid: str, text: str, response: str = "noted", *, indexed: bool = True
    ) -> str:
        """A turn stored in ``cid``; its index job handed to the indexer unless not
        ``indexed`` (as if the replica was killed before the job ran). Its id."""
        stored = await self.store.create_interaction(
            owner, cid, pb.Interaction(input=text, response=response), ""
        )
        if indexed:
            await self.indexer.stored(owner, stored)
        return stored.interaction_id

    async def conversation(self, owner: Owner, name: str) -> str:
        return (await self.store.create_conversation(owner, name)).conversation_id


StartSweeping = Callable[..., Sweeping]


@pytest.fixture
async def sweeping(target: Target, tmp_path: Path) -> AsyncIterator[StartSweeping]:
    """Starts a Sweeping named ``name`` (its key prefix and collection), on the embedded
    engine unless given ``vectors``, its Indexer given ``options``; closed after the test."""
    started: list[Sweeping] = []

    def start(name: str, *, vectors: VectorStore | None = None, **options: Any) -> Sweeping:
        redis = connect(
            target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
        )
        store = MemoryStore(redis, key_prefix=f"{name}-{uuid.uuid4().hex[:8]}")
        if vectors is None:
            vectors = EdgeStore(tmp_path / "index")
        index = InteractionIndex(vectors, None, name)
        started.append(
            Sweeping(redis, store, index, Indexer(store, index, retry_seconds=60.0, **options))
        )
        return started[-1]

    yield start
    for each in started:
        await each.indexer.close()
        await each.redis.aclose()


@pytest.fixture
def outbox_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every index job goes to the outbox (none runs at once), where the bounds apply."""
    from services.memory import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "MAX_RUNNING_JOBS", 0)


@pytest.mark.parametrize("engine", ["edge", "server"])
async def test_the_sweep_removes_what_redis_no_longer_holds(
    sweeping: StartSweeping, tmp_path: Path, engine: str
) -> None:
    # The embedded engine, and the adapter used with a Qdrant server (qdrant-client's
    # local mode: the same adapter code, no server process); both scroll.
    vectors = (
        EdgeStore(tmp_path / "index")
        if engine == "edge"
        else ServerStore(AsyncQdrantClient(location=":memory:"))
    )
    s = sweeping("sweep", vectors=vectors)
    kept_conv = await s.conversation(ALICE, "kept")
    gone_conv = await s.conversation(ALICE, "gone")
    lapsed_conv = await s.conversation(ALICE, "lapsed")
    bob_conv = await s.conversation(BOB, "bob")
    kept = await s.turn(ALICE, kept_conv, "puffins")
    expired = await s.turn(ALICE, kept_conv, "gannets")
    deleted = await s.turn(ALICE, gone_conv, "terns")
    orphan = await s.turn(ALICE, lapsed_conv, "skuas")
    bobs = await s.turn(BOB, bob_conv, "puffins")
    await s.indexer.idle()
    turns = [(ALICE, kept), (ALICE, expired), (ALICE, deleted), (ALICE, orphan), (BOB, bobs)]
    counts = {iid: await s.index.count(o, iid) for o, iid in turns}
    assert set(counts.values()) == {2}  # input and response of each

    # Behind the index's back: Redis expires one turn, a whole conversation goes, and
    # another conversation's hash expires before its turn's key (retention's order).
    tag = s.store.tag(ALICE)
    for key in (f"{tag}:int:{expired}", f"{tag}:conv:{lapsed_conv}"):
        while await s.redis.exists(key):
            await s.redis.pexpire(key, 1)
    await s.store.delete_conversation(ALICE, gone_conv)
    assert await s.redis.exists(f"{tag}:int:{orphan}")

    assert await s.indexer.sweep() == 6
    counts = {iid: await s.index.count(o, iid) for o, iid in turns}
    assert counts == {kept: 2, expired: 0, deleted: 0, bobs: 2, orphan: 0}
    assert await s.indexer.sweep() == 0  # nothing left to do


async def test_the_sweep_catches_up_on_lost_index_jobs(sweeping: StartSweeping) -> None:
    s = sweeping("catchup")
    old_conv = await s.conversation(ALICE, "old")
    too_old = await s.turn(ALICE, old_conv, "before the window", indexed=False)
    await asyncio.sleep(0.01)
    since = time.time_ns() // 1_000_000
    await asyncio.sleep(0.01)
    new_conv = await s.conversation(ALICE, "new")
    known = await s.turn(ALICE, new_conv, "indexed as usual")
    lost = await s.turn(ALICE, new_conv, "its job was lost", indexed=False)
    lost_elsewhere = await s.turn(ALICE, old_conv, "lost in an older conversation", indexed=False)
    await s.indexer.idle()
    assert [await s.index.count(ALICE, i) for i in (too_old, known, lost)] == [0, 2, 0]

    assert await s.indexer.sweep(since) == 0  # nothing to remove
    counts = [await s.index.count(ALICE, i) for i in (too_old, known, lost, lost_elsewhere)]
    # The recent lost ones are back, in whichever conversation; older ones are out of
    # the window it walks.
    assert counts == [0, 2, 2, 2]


async def test_the_sweep_catches_up_on_jobs_the_full_outbox_dropped(
    sweeping: StartSweeping, outbox_only: None
) -> None:
    """A job the bounded outbox refuses is dropped, left for the sweep. The catch-up
    walked only the owners the index knew: an owner none of whose turns had been indexed
    yet (all its jobs dropped) was never caught up. The refusal notes the owner for it."""
    s = sweeping("dropped", outbox_max_jobs=10, outbox_jobs_per_tenant=1)
    since = time.time_ns() // 1_000_000
    cid = await s.conversation(FLOOD, "flood")
    turns = [await s.turn(FLOOD, cid, f"kittiwake {n}", "ledge") for n in range(3)]
    await s.indexer.idle()
    assert await s.redis.zcard(s.store.outbox_key) == 1  # its share; two dropped
    assert [await s.index.count(FLOOD, i) for i in turns] == [0, 0, 0]

    await s.indexer.sweep(since)
    # The dropped ones are indexed (the queued one waits for the retry loop, or was
    # caught up too: either way nothing of the owner's is missing).
    assert [await s.index.count(FLOOD, i) for i in turns] == [2, 2, 2]
    assert await s.store.outbox_take_missed() == []  # noted once, caught up once


async def test_a_sweep_cancelled_midway_keeps_the_owners_it_had_to_catch_up(
    sweeping: StartSweeping, outbox_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep takes the owners whose index job the full outbox refused off their set,
    and put them back when it failed; but a sweep cancelled (the replica shutting down, a
    deploy) is no Exception: they were lost, their turns never indexed."""
    s = sweeping("cancelled", outbox_max_jobs=1)
    since = time.time_ns() // 1_000_000
    cid = await s.conversation(FLOOD, "flood")
    for n in range(2):
        await s.turn(FLOOD, cid, f"fulmar {n}", "cliff")
    await s.indexer.idle()  # one queued, one refused: its owner noted

    scrolling = asyncio.Event()

    async def stalled_scroll(*_: object) -> None:
        scrolling.set()
        await asyncio.Event().wait()  # a long walk of the index

    monkeypatch.setattr(s.index, "scroll", stalled_scroll)
    sweep = asyncio.create_task(s.indexer.sweep(since))
    await asyncio.wait_for(scrolling.wait(), 10)
    sweep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweep
    assert await s.store.outbox_take_missed() == [FLOOD]  # for the next sweep


async def test_a_job_dropped_for_its_tenants_share_is_logged_as_that(
    sweeping: StartSweeping, outbox_only: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A job past its tenant's share of the outbox was logged "the outbox is full" while
    the outbox had room: an operator looked at the wrong bound."""
    s = sweeping("share", outbox_max_jobs=10, outbox_jobs_per_tenant=1)
    cid = await s.conversation(FLOOD, "flood")
    with caplog.at_level(logging.WARNING, logger="gensearch.memory.indexer"):
        for n in range(2):
            await s.turn(FLOOD, cid, f"shag {n}", "rock")
        await s.indexer.idle()
    assert await s.redis.zcard(s.store.outbox_key) == 1  # room for nine more
    [line] = [r.getMessage() for r in caplog.records if "not kept in the outbox" in r.getMessage()]
    assert "full" not in line
    assert "GENSEARCH_MEMORY_SEARCH_OUTBOX_JOBS_PER_TENANT" in line


async def test_the_sweep_takes_the_missed_owners_in_batches_and_puts_back_the_rest(
    sweeping: StartSweeping, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owners the full outbox's refusals noted (up to SEARCH_OUTBOX_MAX_JOBS) were
    read whole (SMEMBERS) and removed (SREM) before the sweep's long walk: one reply of
    the whole set, and a sweep that failed put every one back, caught up or not. Now a
    batch at a time (SPOP): the set still holds the owners of later batches while the
    first is caught up, and a sweep cancelled midway puts back only those not caught up."""
    from services.memory import indexer as indexer_module

    # (raising=False: the code before batches had no such constant, and fails below.)
    monkeypatch.setattr(indexer_module, "MISSED_BATCH", 2, raising=False)
    s = sweeping("batches", outbox_max_jobs=1)
    owners = [Owner("acme", f"user-{n}") for n in range(5)]
    missed = s.store.outbox_key.removesuffix(":jobs") + ":missed"  # the refusals' notes
    await s.store.outbox_note_missed(owners)
    caught: list[Owner] = []
    left_then: list[int] = []
    stalled = asyncio.Event()

    async def catch_up(owner: Owner, since_ms: int) -> int:
        if len(caught) == 3:
            stalled.set()
            await asyncio.Event().wait()  # a long catch-up, cancelled
        left_then.append(await s.redis.scard(missed))
        caught.append(owner)
        return 0

    monkeypatch.setattr(s.indexer, "catch_up", catch_up)
    sweep = asyncio.create_task(s.indexer.sweep(time.time_ns() // 1_000_000))
    await asyncio.wait_for(stalled.wait(), 10)
    sweep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweep
    # Batches of two: three owners left while the first batch was caught up, one
    # while the second was.
    assert left_then == [3, 3, 1]
    back = await s.store.outbox_take_missed()
    # The one whose catch-up was cancelled and the one not taken yet; not the three
    # caught up.
    assert len(back) == 2 and not set(back) & set(caught), (back, caught)
    assert set(back) | set(caught) == set(owners)


PERIOD = 0.05  # GENSEARCH_MEMORY_SEARCH_SWEEP_SECONDS of the test's replicas


async def _sweep_when_free(indexer: Indexer) -> None:
    """One periodic sweep by ``indexer``, once the period's lock is free again."""
    for _ in range(1000):
        if await indexer.sweep_once():
            return
        await asyncio.sleep(PERIOD / 5)
    raise AssertionError("the sweep lock was never free")


async def test_catch_up_reaches_back_to_the_last_sweep_that_finished(
    target: Target, tmp_path: Path
) -> None:
    """An owner noted in the outbox's missed set, then two sweeps in a row failing: the
    next one looked back only two periods from now, and the owner's turn, older than that,
    was never indexed. Now its catch-up starts where the last sweep that finished began
    (kept in Redis, so any replica's sweep finds it)."""
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"window-{uuid.uuid4().hex[:8]}")
    index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "window")
    replica = Indexer(store, index, retry_seconds=60.0, sweep_seconds=PERIOD)
    # Another replica whose index cannot open (a file where its directory goes): every
    # sweep it takes fails.
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    broken_index = InteractionIndex(EdgeStore(blocked / "index"), None, "window")
    broken = Indexer(store, broken_index, retry_seconds=60.0, sweep_seconds=PERIOD)
    try:
        await _sweep_when_free(replica)  # a sweep that finishes
        cid = (await store.create_conversation(ALICE, "c")).conversation_id
        turn = await store.create_interaction(
            ALICE, cid, pb.Interaction(input="puffins", response="seabirds"), ""
        )
        # Its index job refused by the full outbox: the refusal notes its owner.
        await store.outbox_note_missed([ALICE])
        for _ in range(2):
            with pytest.raises(OSError):
                await _sweep_when_free(broken)
        await asyncio.sleep(3 * PERIOD)  # the turn is more than two periods old now
        assert await index.count(ALICE, turn.interaction_id) == 0

        await _sweep_when_free(replica)
        assert await index.count(ALICE, turn.interaction_id) == 2
        assert await store.outbox_missed_count() == 0
    finally:
        await replica.close()
        await broken.close()
        await redis.aclose()
