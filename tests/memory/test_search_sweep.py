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
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from qdrant_client import AsyncQdrantClient

from services.common.redis_client import connect
from services.memory.indexer import Indexer
from services.memory.search_index import InteractionIndex
from services.memory.store import MemoryStore, Owner
from services.retrieval.edge_store import EdgeStore
from services.retrieval.server_store import ServerStore
from tests.memory.conftest import Target

ALICE = Owner("acme", "alice")
BOB = Owner("acme", "bob")


@pytest.mark.parametrize("engine", ["edge", "server"])
async def test_the_sweep_removes_what_redis_no_longer_holds(
    target: Target, tmp_path: Path, engine: str
) -> None:
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"sweep-{uuid.uuid4().hex[:8]}")
    # The embedded engine, and the adapter used with a Qdrant server (qdrant-client's
    # local mode: the same adapter code, no server process); both scroll.
    vectors = (
        EdgeStore(tmp_path / "index")
        if engine == "edge"
        else ServerStore(AsyncQdrantClient(location=":memory:"))
    )
    index = InteractionIndex(vectors, None, "sweep")
    indexer = Indexer(store, index, retry_seconds=60.0)
    try:

        async def turn(owner: Owner, cid: str, text: str) -> str:
            stored = await store.create_interaction(
                owner, cid, pb.Interaction(input=text, response=f"about {text}"), ""
            )
            indexer.stored(owner, stored)
            return stored.interaction_id

        kept_conv = (await store.create_conversation(ALICE, "kept")).conversation_id
        gone_conv = (await store.create_conversation(ALICE, "gone")).conversation_id
        lapsed_conv = (await store.create_conversation(ALICE, "lapsed")).conversation_id
        bob_conv = (await store.create_conversation(BOB, "bob")).conversation_id
        kept = await turn(ALICE, kept_conv, "puffins")
        expired = await turn(ALICE, kept_conv, "gannets")
        deleted = await turn(ALICE, gone_conv, "terns")
        orphan = await turn(ALICE, lapsed_conv, "skuas")
        bobs = await turn(BOB, bob_conv, "puffins")
        await indexer.idle()
        turns = [(ALICE, kept), (ALICE, expired), (ALICE, deleted), (ALICE, orphan), (BOB, bobs)]
        counts = {iid: await index.count(o, iid) for o, iid in turns}
        assert set(counts.values()) == {2}  # input and response of each

        # Behind the index's back: Redis expires one turn, a whole conversation goes, and
        # another conversation's hash expires before its turn's key (retention's order).
        tag = store.tag(ALICE)
        for key in (f"{tag}:int:{expired}", f"{tag}:conv:{lapsed_conv}"):
            while await redis.exists(key):
                await redis.pexpire(key, 1)
        await store.delete_conversation(ALICE, gone_conv)
        assert await redis.exists(f"{tag}:int:{orphan}")

        assert await indexer.sweep() == 6
        counts = {iid: await index.count(o, iid) for o, iid in turns}
        assert counts == {kept: 2, expired: 0, deleted: 0, bobs: 2, orphan: 0}
        assert await indexer.sweep() == 0  # nothing left to do
    finally:
        await indexer.close()
        await redis.aclose()


async def test_the_sweep_catches_up_on_lost_index_jobs(target: Target, tmp_path: Path) -> None:
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"catchup-{uuid.uuid4().hex[:8]}")
    index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "catchup")
    indexer = Indexer(store, index, retry_seconds=60.0)
    try:

        async def turn(cid: str, text: str, *, indexed: bool) -> str:
            stored = await store.create_interaction(
                ALICE, cid, pb.Interaction(input=text, response="noted"), ""
            )
            if indexed:
                indexer.stored(ALICE, stored)
            # else: as if the replica was killed before its index job ran
            return stored.interaction_id

        old_conv = (await store.create_conversation(ALICE, "old")).conversation_id
        too_old = await turn(old_conv, "before the window", indexed=False)
        await asyncio.sleep(0.01)
        since = time.time_ns() // 1_000_000
        await asyncio.sleep(0.01)
        new_conv = (await store.create_conversation(ALICE, "new")).conversation_id
        known = await turn(new_conv, "indexed as usual", indexed=True)
        lost = await turn(new_conv, "its job was lost", indexed=False)
        lost_elsewhere = await turn(old_conv, "lost in an older conversation", indexed=False)
        await indexer.idle()
        assert [await index.count(ALICE, i) for i in (too_old, known, lost)] == [0, 2, 0]

        assert await indexer.sweep(since) == 0  # nothing to remove
        counts = [await index.count(ALICE, i) for i in (too_old, known, lost, lost_elsewhere)]
        # The recent lost ones are back, in whichever conversation; older ones are out of
        # the window it walks.
        assert counts == [0, 2, 2, 2]
    finally:
        await indexer.close()
        await redis.aclose()


async def test_the_sweep_catches_up_on_jobs_the_full_outbox_dropped(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job the bounded outbox refuses is dropped, left for the sweep. The catch-up
    walked only the owners the index knew: an owner none of whose turns had been indexed
    yet (all its jobs dropped) was never caught up. The refusal notes the owner for it."""
    from services.memory import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "MAX_RUNNING_JOBS", 0)  # every job to the outbox
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"dropped-{uuid.uuid4().hex[:8]}")
    index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "dropped")
    indexer = Indexer(
        store, index, retry_seconds=60.0, outbox_max_jobs=10, outbox_jobs_per_tenant=1
    )
    flood = Owner("acme", "carol")
    try:
        since = time.time_ns() // 1_000_000
        cid = (await store.create_conversation(flood, "flood")).conversation_id
        turns = []
        for n in range(3):
            stored = await store.create_interaction(
                flood, cid, pb.Interaction(input=f"kittiwake {n}", response="ledge"), ""
            )
            indexer.stored(flood, stored)
            turns.append(stored.interaction_id)
        await indexer.idle()
        assert await redis.zcard(store.outbox_key) == 1  # its share; two dropped
        assert [await index.count(flood, i) for i in turns] == [0, 0, 0]

        await indexer.sweep(since)
        # The dropped ones are indexed (the queued one waits for the retry loop, or was
        # caught up too: either way nothing of the owner's is missing).
        assert [await index.count(flood, i) for i in turns] == [2, 2, 2]
        assert await store.outbox_take_missed() == []  # noted once, caught up once
    finally:
        await indexer.close()
        await redis.aclose()


async def test_a_sweep_cancelled_midway_keeps_the_owners_it_had_to_catch_up(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep takes the owners whose index job the full outbox refused off their set,
    and put them back when it failed; but a sweep cancelled (the replica shutting down, a
    deploy) is no Exception: they were lost, their turns never indexed."""
    from services.memory import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "MAX_RUNNING_JOBS", 0)  # every job to the outbox
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"cancelled-{uuid.uuid4().hex[:8]}")
    index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "cancelled")
    indexer = Indexer(store, index, retry_seconds=60.0, outbox_max_jobs=1)
    flood = Owner("acme", "carol")
    try:
        since = time.time_ns() // 1_000_000
        cid = (await store.create_conversation(flood, "flood")).conversation_id
        for n in range(2):
            stored = await store.create_interaction(
                flood, cid, pb.Interaction(input=f"fulmar {n}", response="cliff"), ""
            )
            indexer.stored(flood, stored)
        await indexer.idle()  # one queued, one refused: its owner noted

        scrolling = asyncio.Event()

        async def stalled_scroll(*_: object) -> None:
            scrolling.set()
            await asyncio.Event().wait()  # a long walk of the index

        monkeypatch.setattr(index, "scroll", stalled_scroll)
        sweep = asyncio.create_task(indexer.sweep(since))
        await asyncio.wait_for(scrolling.wait(), 10)
        sweep.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweep
        assert await store.outbox_take_missed() == [flood]  # for the next sweep
    finally:
        await indexer.close()
        await redis.aclose()


async def test_a_job_dropped_for_its_tenants_share_is_logged_as_that(
    target: Target,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job past its tenant's share of the outbox was logged "the outbox is full" while
    the outbox had room: an operator looked at the wrong bound."""
    from services.memory import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "MAX_RUNNING_JOBS", 0)  # every job to the outbox
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"share-{uuid.uuid4().hex[:8]}")
    index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "share")
    indexer = Indexer(
        store, index, retry_seconds=60.0, outbox_max_jobs=10, outbox_jobs_per_tenant=1
    )
    flood = Owner("acme", "carol")
    try:
        cid = (await store.create_conversation(flood, "flood")).conversation_id
        with caplog.at_level(logging.WARNING, logger="gensearch.memory.indexer"):
            for n in range(2):
                stored = await store.create_interaction(
                    flood, cid, pb.Interaction(input=f"shag {n}", response="rock"), ""
                )
                indexer.stored(flood, stored)
            await indexer.idle()
        assert await redis.zcard(store.outbox_key) == 1  # room for nine more
        [line] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert "full" not in line
        assert "GENSEARCH_MEMORY_SEARCH_OUTBOX_JOBS_PER_TENANT" in line
    finally:
        await indexer.close()
        await redis.aclose()


async def test_the_sweep_takes_the_missed_owners_in_batches_and_puts_back_the_rest(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owners the full outbox's refusals noted (up to SEARCH_OUTBOX_MAX_JOBS) were
    read whole (SMEMBERS) and removed (SREM) before the sweep's long walk: one reply of
    the whole set, and a sweep that failed put every one back, caught up or not. Now a
    batch at a time (SPOP): the set still holds the owners of later batches while the
    first is caught up, and a sweep cancelled midway puts back only those not caught up."""
    from services.memory import indexer as indexer_module

    # (raising=False: the code before batches had no such constant, and fails below.)
    monkeypatch.setattr(indexer_module, "MISSED_BATCH", 2, raising=False)
    redis = connect(
        target.url, cluster=target.cluster is not None, socket_timeout=5, connect_timeout=2
    )
    store = MemoryStore(redis, key_prefix=f"batches-{uuid.uuid4().hex[:8]}")
    index = InteractionIndex(EdgeStore(tmp_path / "index"), None, "batches")
    indexer = Indexer(store, index, retry_seconds=60.0, outbox_max_jobs=1)
    owners = [Owner("acme", f"user-{n}") for n in range(5)]
    missed = store.outbox_key.removesuffix(":jobs") + ":missed"  # the refusals' notes
    try:
        await store.outbox_note_missed(owners)
        caught: list[Owner] = []
        left_then: list[int] = []
        stalled = asyncio.Event()

        async def catch_up(owner: Owner, since_ms: int) -> int:
            if len(caught) == 3:
                stalled.set()
                await asyncio.Event().wait()  # a long catch-up, cancelled
            left_then.append(await redis.scard(missed))
            caught.append(owner)
            return 0

        monkeypatch.setattr(indexer, "catch_up", catch_up)
        sweep = asyncio.create_task(indexer.sweep(time.time_ns() // 1_000_000))
        await asyncio.wait_for(stalled.wait(), 10)
        sweep.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweep
        # Batches of two: three owners left while the first batch was caught up, one
        # while the second was.
        assert left_then == [3, 3, 1]
        back = await store.outbox_take_missed()
        # The one whose catch-up was cancelled and the one not taken yet; not the three
        # caught up.
        assert len(back) == 2 and not set(back) & set(caught), (back, caught)
        assert set(back) | set(caught) == set(owners)
    finally:
        await indexer.close()
        await redis.aclose()


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
