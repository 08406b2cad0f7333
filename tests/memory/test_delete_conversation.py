"""DeleteConversation in batches of declared keys (store.delete_conversation): a long
conversation takes several script runs, a call that failed between them is finished by a
retry, and a turn written between the read and the delete is deleted too."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from prometheus_client import REGISTRY

from services.common.auth import DEFAULT_TENANT
from services.common.errors import NotFound, Unavailable
from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory import keys
from services.memory import store as store_module
from services.memory.deletions import DeletionResumer
from services.memory.metrics import DELETIONS_PENDING
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import Memory, MemoryFactory
from tests.memory.test_search_interactions import ALICE as ALICE_RPC
from tests.memory.test_search_interactions import conversation as search_conversation
from tests.memory.test_search_interactions import (
    eventually,
    indexed_after_stop,
    keyword_memory,
    search,
    search_until,
    turn,
)
from tests.support.redis_relay import relaying
from tests.support.waiting import until

ALICE = Owner(DEFAULT_TENANT, "alice")


async def _conversation(store: MemoryStore, turns: int, name: str = "d") -> str:
    cid = (await store.create_conversation(ALICE, name)).conversation_id
    for n in range(turns):
        await store.create_interaction(ALICE, cid, pb.Interaction(input=f"t{n}"), f"{name}{n}")
    return cid


async def _cut_after_first_batch(store: MemoryStore, *cids: str) -> None:
    """A DeleteConversation of each of ``cids`` whose call is gone after its first batch
    (run on the real Redis): marked, its later batches left to the resume. Each mark
    made after the one before (the oldest first)."""
    script = store._delete_conversation

    async def then_die(**kwargs: Any) -> object:
        await script(**kwargs)
        raise asyncio.CancelledError

    store._delete_conversation = then_die  # type: ignore[assignment]
    try:
        for cid in cids:
            with pytest.raises(asyncio.CancelledError):
                await store.delete_conversation(ALICE, cid)
            await asyncio.sleep(0.01)  # the next mark is later
    finally:
        store._delete_conversation = script  # type: ignore[assignment]


async def _left(memory: Memory, store: MemoryStore, cid: str) -> list[str]:
    """The owner's keys of a conversation, its turns or their request ids."""
    tag = store.tag(ALICE)
    found = [
        bytes(key).decode() async for key in memory.redis.scan_iter(match=f"{tag}:*", count=1000)
    ]
    return sorted(k for k in found if cid in k or ":int:" in k or ":req:" in k)


async def test_a_conversation_longer_than_a_batch_is_deleted_whole(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    store = MemoryStore(memory.redis)
    keep = await _conversation(store, 1, "keep")
    cid = await _conversation(store, 10)
    runs: list[object] = []
    script = store._delete_conversation

    async def counted(**kwargs: Any) -> object:
        runs.append(await script(**kwargs))
        return runs[-1]

    store._delete_conversation = counted  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)
    assert runs == [3, 3, 1]  # 4 + 4 + 2 turns
    left = await _left(memory, store, cid)
    assert [k for k in left if cid in k] == []
    assert len([k for k in left if ":int:" in k]) == 1  # keep's only
    assert len([k for k in left if ":req:" in k]) == 1
    with pytest.raises(NotFound):
        await store.delete_conversation(ALICE, cid)
    usage = await store.check_storage(ALICE, "", 0)
    assert usage.conversations == 1
    await store.delete_conversation(ALICE, keep)
    assert await _left(memory, store, keep) == []


async def test_a_delete_that_failed_after_its_first_run_is_finished_by_a_retry(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 10)
    script = store._delete_conversation

    async def then_fail(**kwargs: Any) -> object:
        await script(**kwargs)  # the real run, on the real Redis; its answer lost
        raise Unavailable("lost", reason="STORE_UNAVAILABLE")

    store._delete_conversation = then_fail  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await store.delete_conversation(ALICE, cid)
    # Gone for every reader from the first run on, though turns are still stored.
    with pytest.raises(NotFound):
        await store.get_conversation(ALICE, cid)
    assert (await store.list_conversations(ALICE, 10, None)).items == []
    assert len([k for k in await _left(memory, store, cid) if ":int:" in k]) == 6
    store._delete_conversation = script  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)  # OK, not NOT_FOUND: it finished it
    assert await _left(memory, store, cid) == []
    with pytest.raises(NotFound):
        await store.delete_conversation(ALICE, cid)


async def test_a_turn_written_between_the_read_and_the_delete_is_deleted_too(
    memory: Memory,
) -> None:
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 3)
    read = store._turn_requests
    written: list[str] = []

    async def then_write(**kwargs: Any) -> object:
        out = await read(**kwargs)
        if not written:
            made = await store.create_interaction(ALICE, cid, pb.Interaction(input="x"), "late")
            written.append(made.interaction_id)
        return out

    store._turn_requests = then_write  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)
    assert written
    assert await _left(memory, store, cid) == []


async def test_a_writer_that_writes_after_every_read_cannot_hold_the_delete_off(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run removes the conversation whatever was written since the read (no
    compare-and-retry a busy conversation could starve): later writes find it gone."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 2)
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 3)
    read = store._turn_requests
    answers: list[str] = []

    async def then_write(**kwargs: Any) -> object:
        out = await read(**kwargs)
        try:
            await store.create_interaction(
                ALICE, cid, pb.Interaction(input="x"), f"w{len(answers)}"
            )
            answers.append("written")
        except NotFound:
            answers.append("gone")
        return out

    store._turn_requests = then_write  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)
    assert answers[0] == "written"
    assert answers[1:] and set(answers[1:]) == {"gone"}
    assert await _left(memory, store, cid) == []
    assert (await store.list_conversations(ALICE, 10, None)).items == []


async def test_an_interrupted_delete_nobody_retries_is_finished_by_the_resume(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete that failed after its first batch and whose caller never came back (the
    process died, Redis failed, the client gave up) left its turns stored for good:
    another replica's resume loop (deletions.py) finishes it. The conversation stays
    NOT_FOUND from the first batch to the last."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    dying = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    cid = await _conversation(dying, 10)
    turn = (await dying.list_interactions(ALICE, cid, 1, None, 1 << 20)).items[0]
    iid = pb.Interaction.FromString(turn).interaction_id
    await _cut_after_first_batch(dying, cid)

    survivor = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    await survivor.load_scripts()

    async def gone_for_readers() -> None:
        with pytest.raises(NotFound):
            await survivor.get_conversation(ALICE, cid)
        with pytest.raises(NotFound):
            await survivor.get_interaction(ALICE, iid)
        assert (await survivor.list_conversations(ALICE, 10, None)).items == []

    await gone_for_readers()
    assert len([k for k in await _left(memory, survivor, cid) if ":int:" in k]) == 6
    assert await survivor.deletions_pending() == 1
    runs: list[object] = []
    resumed = survivor._delete_conversation

    async def checked(**kwargs: Any) -> object:
        runs.append(await resumed(**kwargs))
        await gone_for_readers()  # between the resume's batches too
        return runs[-1]

    survivor._delete_conversation = checked  # type: ignore[assignment]
    resumer = DeletionResumer(survivor, 0.01)
    resumer.start()
    try:
        for _ in range(500):  # a bound on the wait, not a timing assertion
            if await survivor.deletions_pending() == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        await resumer.close()
    assert runs == [3, 1]  # 4 + 2 turns were left
    assert await _left(memory, survivor, cid) == []
    assert await survivor.deletions_pending() == 0
    await gone_for_readers()


async def test_the_resume_leaves_a_conversation_whose_delete_never_began(
    memory: Memory,
) -> None:
    """Marked, then the call failed before its first batch: the caller was not told it
    was deleted, and the resume does not delete it on its own (only finishes)."""
    store = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    cid = await _conversation(store, 3)

    async def refused(**kwargs: Any) -> object:
        raise Unavailable("lost", reason="STORE_UNAVAILABLE")

    script = store._delete_conversation
    store._delete_conversation = refused  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await store.delete_conversation(ALICE, cid)
    store._delete_conversation = script  # type: ignore[assignment]
    await asyncio.sleep(0.01)  # past the mark's due time (1 ms)
    assert await store.resume_deletions() == 0
    assert await store.deletions_pending() == 0
    assert (await store.get_conversation(ALICE, cid)).interaction_count == 3


async def test_the_resume_keeps_the_mark_of_a_delete_that_began_meanwhile(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume finds a conversation never deleted and removes the mark; a call that
    marked it again in between (and died after its first batch) keeps its mark, so the
    next resume still finishes that call's deletion."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    store = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    cid = await _conversation(store, 10)
    script = store._delete_conversation

    async def refused(**kwargs: Any) -> object:
        raise Unavailable("lost", reason="STORE_UNAVAILABLE")

    store._delete_conversation = refused  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await store.delete_conversation(ALICE, cid)  # marked; nothing deleted
    store._delete_conversation = script  # type: ignore[assignment]
    await asyncio.sleep(0.01)  # past the mark's due time (1 ms)

    caller = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    first = caller._delete_conversation

    async def then_die(**kwargs: Any) -> object:
        await first(**kwargs)
        raise asyncio.CancelledError

    caller._delete_conversation = then_die  # type: ignore[assignment]
    unmark = store._unmark_deletion
    began: list[bool] = []

    async def delete_begins_first(**kwargs: Any) -> object:
        if not began:  # the resume found it untouched; now a call marks and begins
            began.append(True)
            with pytest.raises(asyncio.CancelledError):
                await caller.delete_conversation(ALICE, cid)
        return await unmark(**kwargs)

    store._unmark_deletion = delete_begins_first  # type: ignore[assignment]
    assert await store.resume_deletions() == 0  # untouched when it looked
    assert began
    assert await store.deletions_pending() == 1  # the call's mark
    with pytest.raises(NotFound):
        await store.get_conversation(ALICE, cid)
    await asyncio.sleep(0.01)  # past the call's mark's due time
    assert await store.resume_deletions() == 1
    assert await _left(memory, store, cid) == []
    assert await store.deletions_pending() == 0


async def test_a_full_redis_still_deletes(redis_server: RedisProcess, memory: Memory) -> None:
    """Deleting is how an owner frees room in a Redis at its maxmemory: its steps only
    remove keys, which a full Redis takes. The deletion's mark (a ZADD, refused there)
    is not what the call waits on: the call deletes unmarked (before, every
    DeleteConversation of a full Redis answered UNAVAILABLE)."""
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 3)
    await memory.redis.config_set("maxmemory", 1)  # every write that grows is refused
    try:
        await store.delete_conversation(ALICE, cid)
    finally:
        await memory.redis.config_set("maxmemory", 0)
    with pytest.raises(NotFound):
        await store.get_conversation(ALICE, cid)
    assert await _left(memory, store, cid) == []


def _failing(
    commands: set[bytes], failed: list[bytes] | None = None
) -> Callable[[list[bytes]], Awaitable[None]]:
    """A relay step that drops the connection of a command on the deletion marks' key
    among ``commands`` (its Redis node gone, as a Cluster master may be alone), noting
    each such command in ``failed``."""

    async def step(args: list[bytes]) -> None:
        if args[0].upper() in commands and any(b"{deletes}" in arg for arg in args):
            if failed is not None:
                failed.append(args[0].upper())
            raise ConnectionError("the marks' node is down")

    return step


async def test_the_marks_node_down_is_no_failure_of_the_delete(
    redis_server: RedisProcess, memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Redis Cluster the marks (``P:{deletes}:pending``) live on one master: down,
    it took every owner's DeleteConversation down with it (UNAVAILABLE at the mark),
    where before only its own owners' were. The deletion goes on unmarked, trying the
    mark once, not before each of its steps (a hung node: a socket timeout each)."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    failed: list[bytes] = []
    step = _failing({b"ZADD", b"EVALSHA", b"EVAL"}, failed)
    async with relaying(redis_server.url, step) as url:
        redis = connect(url, cluster=False, socket_timeout=5, connect_timeout=2)
        try:
            store = MemoryStore(redis)
            cid = await _conversation(store, 10)  # three steps
            await store.delete_conversation(ALICE, cid)
            assert failed.count(b"ZADD") == 1
            with pytest.raises(NotFound):
                await store.get_conversation(ALICE, cid)
        finally:
            await redis.aclose()
    assert await _left(memory, store, cid) == []


async def test_a_delete_done_in_one_run_writes_no_mark(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run reading fewer than DELETE_BATCH turns deletes them all at once: nothing for
    the resume to finish, so no mark. Every call marked, and one cut off after its mark (a
    short deadline, a cancel) left it behind: a client sending deletes of conversations
    that do not exist piled marks up faster than the resume clears them."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    seen: list[bytes] = []

    async def step(args: list[bytes]) -> None:
        if any(b"{deletes}" in arg for arg in args):
            seen.append(args[0].upper())

    async with relaying(redis_server.url, step) as url:
        redis = connect(url, cluster=False, socket_timeout=5, connect_timeout=2)
        try:
            store = MemoryStore(redis)
            small = await _conversation(store, 3)
            await store.delete_conversation(ALICE, small)
            with pytest.raises(NotFound):
                await store.delete_conversation(ALICE, str(uuid.uuid4()))
            assert seen == []
            large = await _conversation(store, 10)  # three runs: marked before each
            await store.delete_conversation(ALICE, large)
            assert seen.count(b"ZADD") == 3
            assert await store.deletions_pending() == 0
        finally:
            await redis.aclose()


async def test_a_first_run_that_leaves_turns_is_marked_before_the_call_goes_on(
    redis_server: RedisProcess, memory: Memory
) -> None:
    """A conversation of one batch is deleted unmarked; a turn written between the
    run's read and the run is left to a later one, the conversation already gone. A call
    cut there (here: Redis unreachable for its next read) left that turn to no one: the
    resume never saw it. The call marks the deletion as soon as its first run says so."""
    cid = ""
    ints = ""
    phase = "before"

    async def step(args: list[bytes]) -> None:
        nonlocal phase
        command = args[0].upper()
        if phase == "armed" and command in (b"EVALSHA", b"EVAL") and cid.encode() in args:
            # A turn listed between the read and the run: the run leaves it (status 3).
            await memory.redis.zadd(ints, {"0190d2e5-late-turn": 1})
            phase = "ran"
        elif phase == "ran" and not (command == b"ZADD" and b"{deletes}" in args[1]):
            raise ConnectionError("Redis gone after the first run")

    async with relaying(redis_server.url, step) as url:
        redis = connect(url, cluster=False, socket_timeout=5, connect_timeout=2)
        try:
            store = MemoryStore(redis)
            cid = await _conversation(store, 3)
            ints = keys.conversation_interactions(store.tag(ALICE), cid)
            phase = "armed"
            with pytest.raises(Unavailable):
                await store.delete_conversation(ALICE, cid)
        finally:
            await redis.aclose()
    survivor = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    assert await survivor.deletions_pending() == 1
    await asyncio.sleep(0.01)  # past the mark's due time (1 ms)
    assert await survivor.resume_deletions() == 1
    assert await survivor.deletions_pending() == 0
    assert await _left(memory, survivor, cid) == []


async def test_a_delete_done_whose_unmark_failed_answers_ok(
    redis_server: RedisProcess, memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletion done, its unmark failed: the call answered UNAVAILABLE for a delete
    that happened, and its retry NOT_FOUND. It answers OK; the mark left is the resume's
    to clear (nothing left to finish)."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    async with relaying(redis_server.url, _failing({b"EVALSHA", b"EVAL"})) as url:
        redis = connect(url, cluster=False, socket_timeout=5, connect_timeout=2)
        try:
            store = MemoryStore(redis)
            cid = await _conversation(store, 10)  # three runs, so marked
            await store.delete_conversation(ALICE, cid)
        finally:
            await redis.aclose()
    survivor = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    assert await _left(memory, survivor, cid) == []
    assert await survivor.deletions_pending() == 1
    await asyncio.sleep(0.01)  # past the mark's due time (1 ms)
    assert await survivor.resume_deletions() == 0  # nothing was left to finish: the mark goes
    assert await survivor.deletions_pending() == 0
    assert await _left(memory, survivor, cid) == []


async def test_one_deletion_the_resume_cannot_finish_holds_no_other_back(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume takes the oldest marks first: one it cannot finish (its owner's Redis
    Cluster master down, say) stopped the whole resume there, every period, so no other
    owner's interrupted deletion was finished while it lasted. It finishes the others,
    then raises what failed (that one stays marked, for the next resume)."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    dying = MemoryStore(memory.redis)
    stuck = await _conversation(dying, 10, "stuck")
    other = await _conversation(dying, 10, "other")
    await _cut_after_first_batch(dying, stuck, other)  # stuck's mark the older

    survivor = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    resumed = survivor._delete_conversation

    async def stuck_fails(**kwargs: Any) -> object:
        if stuck in kwargs["args"]:
            raise Unavailable("memory store unavailable; try again", reason="STORE_UNAVAILABLE")
        return await resumed(**kwargs)

    survivor._delete_conversation = stuck_fails  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await survivor.resume_deletions()
    left = await _left(memory, survivor, other)
    assert [k for k in left if other in k] == []  # its list went with its last turn
    assert len([k for k in left if ":int:" in k]) == 6  # stuck's 4 + 2, none of other's
    assert await survivor.deletions_pending() == 1  # stuck's, for the next resume


async def test_a_resumed_deletion_drops_the_conversation_from_the_search_index(
    memory_factory: MemoryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DeleteConversation cut after its first batch never sent the search index its
    drop job (the servicer sends it once the deletion is done): the replica whose resume
    finishes the deletion sends it. Before, the conversation's turns stayed in the index
    until a sweep (hourly by default) found them gone."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    memory = await keyword_memory(memory_factory, tmp_path, delete_resume_seconds=0.05)
    cid = await search_conversation(memory, ALICE_RPC)
    iids = [await turn(memory, ALICE_RPC, cid, f"pelican {n}", "pouch") for n in range(10)]
    assert set(await search_until(memory, ALICE_RPC, "pelican", iids)) == set(iids)
    dying = MemoryStore(memory.redis)
    await _cut_after_first_batch(dying, cid)
    for _ in range(500):  # a bound on the wait for the service's resume, not a timing one
        if await dying.deletions_pending() == 0:
            break
        await asyncio.sleep(0.02)
    assert await dying.deletions_pending() == 0
    assert await _left(memory, dying, cid) == []
    assert await indexed_after_stop(memory, tmp_path, "c", [cid]) == {cid: 0}


PENDING = "gensearch_memory_deletions_pending"
RESUMED = "gensearch_memory_deletions_resumed_total"


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@asynccontextmanager
async def _resuming(store: MemoryStore) -> AsyncIterator[None]:
    """A replica's resume loop (a round every 10 ms) running for the block."""
    resumer = DeletionResumer(store, 0.01)
    resumer.start()
    try:
        yield
    finally:
        await resumer.close()


async def _gauge_reads(value: float, what: str) -> None:
    """Waits (bounded) for the pending gauge to read ``value``. Called while a resume
    loop runs, from a value no round sets (-1): what it reads, a round of that loop
    set, not its start, its close or an earlier test."""

    async def reads() -> bool:
        return _metric(PENDING) == value

    await until(reads, what)


async def test_the_resume_counts_the_marked_deletions_and_those_it_finished(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gensearch_memory_deletions_pending: the deletions marked (here one interrupted, not
    due yet for a replica whose resume waits an hour); gensearch_memory_deletions_resumed_total:
    those a replica's resume finished. Before, neither existed: an interrupted deletion
    the resume could not finish went unseen. The gauge is read while each loop runs: one
    set only when the loop starts or closes would read 1 (or -1) where it must read 0
    (or 1)."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    dying = MemoryStore(memory.redis)
    cid = await _conversation(dying, 10)
    await _cut_after_first_batch(dying, cid)
    resumed = _metric(RESUMED)

    DELETIONS_PENDING.set(-1)
    patient = MemoryStore(memory.redis, delete_resume_seconds=3600)
    async with _resuming(patient):
        await _gauge_reads(1, "the interrupted deletion counted as pending")
        assert _metric(RESUMED) == resumed  # a round ran, and finished nothing
        assert await patient.deletions_pending() == 1

    DELETIONS_PENDING.set(-1)
    survivor = MemoryStore(memory.redis, delete_resume_seconds=0.001)
    async with _resuming(survivor):
        await _gauge_reads(0, "the resumed deletion no longer counted as pending")
        assert _metric(RESUMED) == resumed + 1
    assert await survivor.deletions_pending() == 0
    assert await _left(memory, survivor, cid) == []


async def test_a_half_deleted_conversations_turns_are_never_search_hits(
    memory_factory: MemoryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a DeleteConversation's first batch and the resume (its turns still in Redis
    and in the index, no drop run yet), search answers none of them: every hit is read
    again as the caller, and a turn whose conversation hash is gone is gone. A guard (it
    held before): search must never depend on the drop job having run."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    memory = await keyword_memory(memory_factory, tmp_path, delete_resume_seconds=3600)
    cid = await search_conversation(memory, ALICE_RPC)
    kept_cid = await search_conversation(memory, ALICE_RPC)
    iids = [await turn(memory, ALICE_RPC, cid, f"heron {n}", "wading") for n in range(6)]
    kept = await turn(memory, ALICE_RPC, kept_cid, "heron nest", "reeds")
    assert set(await search_until(memory, ALICE_RPC, "heron", [*iids, kept])) == {*iids, kept}
    dying = MemoryStore(memory.redis)
    await _cut_after_first_batch(dying, cid)
    left = [k for k in await _left(memory, dying, cid) if ":int:" in k and k.split(":")[-1] in iids]
    assert len(left) == 2  # the window: turns still stored, their conversation gone
    assert await search(memory, ALICE_RPC, "heron") == [kept]
    assert await search(memory, ALICE_RPC, "wading") == []


async def test_a_delete_of_nothing_leaves_no_drop_job_behind(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    """A deletion's drop job is written to the outbox before the deletion runs; one that
    found nothing to delete (NOT_FOUND) runs its drop (of nothing) and takes it out, so
    deletes of missing ids do not fill the outbox (its bounds are shared with the tenant's
    index jobs)."""
    # No drain (retry period of an hour): only the call itself takes its job out.
    memory = await memory_factory(
        search_index="keyword", data_dir=tmp_path, search_retry_seconds=3600
    )
    outbox = "gensearch:{search-outbox}:jobs"
    for request in (
        pb.DeleteConversationRequest(conversation_id=str(uuid.uuid4())),
        pb.DeleteInteractionRequest(interaction_id=str(uuid.uuid4())),
    ):
        call = (
            memory.stub.DeleteConversation
            if isinstance(request, pb.DeleteConversationRequest)
            else memory.stub.DeleteInteraction
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=ALICE_RPC)  # type: ignore[operator]
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert await eventually(lambda: _outbox_empty(memory, outbox))
    # A deletion that did delete leaves its job only until its drop ran.
    cid = await search_conversation(memory, ALICE_RPC)
    await turn(memory, ALICE_RPC, cid, "egret", "white")
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE_RPC
    )
    assert await eventually(lambda: _outbox_empty(memory, outbox))


async def _outbox_empty(memory: Memory, outbox: str) -> bool:
    return await memory.redis.zcard(outbox) == 0


async def test_a_retried_delete_finding_nothing_leaves_the_killed_calls_drop_job(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    """A DeleteConversation whose replica was killed after the deletion ran, before its
    drop: its job waits in the outbox. The client, told UNAVAILABLE, sends the call again,
    which finds nothing (NOT_FOUND). Its own write-ahead of the same job found it there:
    the drop still runs. Before, the retry took the job out as one it had put there for
    nothing, and the index kept the conversation's entries until the sweep."""
    memory = await keyword_memory(memory_factory, tmp_path)
    cid = await search_conversation(memory, ALICE_RPC)
    iids = [await turn(memory, ALICE_RPC, cid, f"pelican {n}", "pouch") for n in range(2)]
    assert set(await search_until(memory, ALICE_RPC, "pelican", iids)) == set(iids)
    killed = MemoryStore(memory.redis)  # the killed replica: its job, then its deletion
    job = json.dumps(["drop-conversation", ALICE.tenant, ALICE.user, cid])
    not_due = time.time_ns() // 1_000_000 + 3_600_000  # not drained before the retry
    assert await killed.outbox_add(job, not_due, ALICE, max_jobs=100, per_tenant=0, index=False)
    await killed.delete_conversation(ALICE, cid)

    with pytest.raises(grpc.aio.AioRpcError) as retried:
        await memory.stub.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE_RPC
        )
    assert retried.value.code() == grpc.StatusCode.NOT_FOUND

    async def drained() -> bool:
        return await memory.redis.zcard(killed.outbox_key) == 0

    assert await eventually(drained)
    assert await indexed_after_stop(memory, tmp_path, "c", [cid]) == {cid: 0}
