"""SearchInteractions on the memory service alone: real Redis (standalone and a 3-master
cluster) and the real Qdrant engine (qdrant-edge in the test's directory).

The index is written after the turn, in the background: tests wait until search shows
what they expect (a bounded wait, not a timing assertion)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest
from gensearch.client.errors import InvalidModeError, from_rpc_error
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2

from services.retrieval.edge_store import EdgeStore
from services.retrieval.filters import Match
from tests.memory.conftest import INTERNAL_TOKEN, Memory, MemoryFactory
from tests.memory.helpers import expect_error, rpc_error
from tests.support.forwarded import forwarded
from tests.support.rpc import error_info

Metadata = tuple[tuple[str, str], ...]
WAIT_SECONDS = 60.0


def as_(user: str, tenant: str = "default") -> Metadata:
    return forwarded(INTERNAL_TOKEN, user, tenant, "writer")


ALICE = as_("alice")
BOB = as_("bob")


async def keyword_memory(factory: MemoryFactory, tmp_path: Path, **overrides: object) -> Memory:
    return await factory(
        search_index="keyword", data_dir=tmp_path, search_retry_seconds=0.2, **overrides
    )


async def conversation(memory: Memory, who: Metadata) -> str:
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=who)
    return made.conversation.conversation_id


async def turn(memory: Memory, who: Metadata, cid: str, question: str, answer: str) -> str:
    made = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input=question, response=answer),
        metadata=who,
    )
    return made.interaction.interaction_id


async def indexed_after_stop(
    memory: Memory, tmp_path: Path, field: str, values: Sequence[str]
) -> dict[str, int]:
    """The index's entries (two a turn: its input and its response) whose ``field`` ("i":
    the turn, "c": its conversation) is each of ``values``, read by the test's own engine
    once the service stopped (which ends its index jobs under way and frees the files)."""
    await memory.server.stop(0)
    engine = EdgeStore(tmp_path / "memory-index")
    await engine.open()
    try:
        return {
            value: await engine.count(memory.settings.search_collection, Match(field, value))
            for value in values
        }
    finally:
        await engine.close()


async def search(memory: Memory, who: Metadata, query: str, **fields: object) -> list[str]:
    found = await memory.stub.SearchInteractions(
        pb.SearchInteractionsRequest(query=query, **fields),  # type: ignore[arg-type]
        metadata=who,
    )
    return [hit.interaction.interaction_id for hit in found.hits]


async def search_until(
    memory: Memory, who: Metadata, query: str, expected: Sequence[str], **fields: object
) -> list[str]:
    """Searches until the result (as a set) is ``expected``; the last result."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_SECONDS
    while True:
        got = await search(memory, who, query, **fields)
        if set(got) == set(expected) or loop.time() > end:
            return got
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
    """Whether ``check`` came true within WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_SECONDS
    while True:
        if await check():
            return True
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)


async def test_keyword_search_finds_only_the_callers_turns(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await keyword_memory(memory_factory, tmp_path)
    a1, a2 = await conversation(memory, ALICE), await conversation(memory, ALICE)
    b1 = await conversation(memory, BOB)
    bread = await turn(memory, ALICE, a1, "How do I bake sourdough?", "Feed the starter first.")
    paris = await turn(memory, ALICE, a2, "Capital of France?", "Paris, on the Seine.")
    other = await turn(memory, ALICE, a2, "More sourdough tips?", "Longer proofing.")
    bobs = await turn(memory, BOB, b1, "Sourdough starter smells odd", "Feed it sourdough flour.")

    assert await search_until(memory, ALICE, "sourdough", [bread, other]) in (
        [bread, other],
        [other, bread],
    )
    assert await search_until(memory, BOB, "sourdough", [bobs]) == [bobs]
    # By the response's words too, and within one conversation.
    assert await search(memory, ALICE, "Seine") == [paris]
    assert await search(memory, ALICE, "sourdough", conversation_id=a2) == [other]
    found = await memory.stub.SearchInteractions(
        pb.SearchInteractionsRequest(query="sourdough", limit=1), metadata=ALICE
    )
    assert len(found.hits) == 1 and found.hits[0].score > 0
    assert found.hits[0].interaction.input in ("How do I bake sourdough?", "More sourdough tips?")
    # Only stop words: nothing to look for, nothing found.
    assert await search(memory, ALICE, "the of and") == []

    # Another user's conversation as a filter is NOT_FOUND, like a missing one.
    await expect_error(
        memory.stub.SearchInteractions(
            pb.SearchInteractionsRequest(query="sourdough", conversation_id=b1), metadata=ALICE
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_same_user_name_in_another_tenant_sees_nothing(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await keyword_memory(memory_factory, tmp_path)
    acme, globex = as_("alice", "acme"), as_("alice", "globex")
    mine = await turn(memory, acme, await conversation(memory, acme), "quarterly revenue", "up")
    assert await search_until(memory, acme, "revenue", [mine]) == [mine]
    theirs = await turn(
        memory, globex, await conversation(memory, globex), "revenue forecast", "flat"
    )
    assert await search_until(memory, globex, "revenue", [theirs]) == [theirs]
    assert await search(memory, acme, "revenue") == [mine]
    assert await search(memory, as_("alice", "initech"), "revenue") == []


async def test_many_users_never_see_each_other(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    """A randomized property (fixed seed): for every user and every word, search returns
    exactly that user's turns holding the word — never another's, none of its own lost."""
    memory = await keyword_memory(memory_factory, tmp_path)
    rng = random.Random(14)
    words = ["apple", "harbor", "violin", "glacier", "pepper", "saturn", "meadow"]
    users = [as_(f"user{n}", rng.choice(["acme", "globex"])) for n in range(5)]
    users.append(as_("user0", "initech"))  # a name reused in a third tenant
    owned: dict[int, dict[str, set[str]]] = {n: {w: set() for w in words} for n in range(6)}
    for n, who in enumerate(users):
        cid = await conversation(memory, who)
        for _ in range(rng.randint(1, 5)):
            picked = rng.sample(words, 2)
            iid = await turn(memory, who, cid, f"tell me about {picked[0]}", f"{picked[1]} it is")
            for word in picked:
                owned[n][word].add(iid)
    for n, who in enumerate(users):
        for word in words:
            got = await search_until(memory, who, word, sorted(owned[n][word]), limit=50)
            assert set(got) == owned[n][word], (n, word)


async def test_deleted_conversations_and_expired_turns_leave_search(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await keyword_memory(memory_factory, tmp_path)
    cid = await conversation(memory, ALICE)
    keep_cid = await conversation(memory, ALICE)
    gone = await turn(memory, ALICE, cid, "tulip bulbs", "plant in autumn")
    # Never searched for after the deletion: only the deletion itself can drop it.
    unseen = await turn(memory, ALICE, cid, "daffodil care", "deadhead them")
    kept = await turn(memory, ALICE, keep_cid, "tulip colors", "red and yellow")
    expiring = await turn(memory, ALICE, keep_cid, "tulip water", "moderately")
    assert len(await search_until(memory, ALICE, "tulip", [gone, kept, expiring])) == 3
    assert await search_until(memory, ALICE, "daffodil", [unseen]) == [unseen]

    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    # At once: hits are checked against Redis, whatever the index still holds.
    assert set(await search(memory, ALICE, "tulip")) == {kept, expiring}

    # A turn that Redis expires (retention) goes the same way, with no call to memory.
    keys = [k async for k in memory.redis.scan_iter(match=f"*:int:{expiring}")]
    assert len(keys) == 1
    await memory.redis.pexpire(keys[0], 1)
    assert await eventually(lambda: _gone(memory, keys[0]))
    assert await search(memory, ALICE, "tulip") == [kept]

    # And the index itself forgot them: the deleted conversation's entries at once, the
    # expired turn's when a search met it. (Stopping the service ends its index jobs and
    # frees the engine's files for a look of our own.)
    count = await indexed_after_stop(memory, tmp_path, "i", [gone, unseen, kept, expiring])
    # Two entries a turn: its input and its response.
    assert count == {gone: 0, unseen: 0, kept: 2, expiring: 0}


async def test_a_failing_index_never_loses_the_turn(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    # The embedded index cannot open: its directory is taken by a file.
    blocker = tmp_path / "memory-index"
    blocker.write_text("not a directory")
    memory = await keyword_memory(memory_factory, tmp_path)
    cid = await conversation(memory, ALICE)
    iid = await turn(memory, ALICE, cid, "hedgehog hibernation", "from November")
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert got.interaction.input == "hedgehog hibernation"
    await expect_error(
        memory.stub.SearchInteractions(
            pb.SearchInteractionsRequest(query="hedgehog"), metadata=ALICE
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    # The failed job waits in the outbox in Redis...
    outbox = f"{memory.settings.key_prefix}:{{search-outbox}}:jobs"
    assert await eventually(lambda: _size_is(memory, outbox, 1))
    # ...and lands once the index is back.
    blocker.unlink()
    assert await search_until(memory, ALICE, "hedgehog", [iid]) == [iid]
    assert await eventually(lambda: _size_is(memory, outbox, 0))


async def _gone(memory: Memory, key: bytes) -> bool:
    return not await memory.redis.exists(key)


async def _size_is(memory: Memory, key: str, size: int) -> bool:
    return bool(await memory.redis.zcard(key) == size)


async def test_search_arguments_and_modes(memory_factory: MemoryFactory, tmp_path: Path) -> None:
    off = await memory_factory()
    disabled = await expect_error(
        off.stub.SearchInteractions(pb.SearchInteractionsRequest(query="x"), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The client cannot turn search on: the refusal names the setting its operator sets.
    assert error_info(disabled).reason == "SEARCH_DISABLED"
    assert "GENSEARCH_MEMORY_SEARCH_INDEX" in (disabled.details() or "")
    assert error_info(disabled).metadata["setting"] == "GENSEARCH_MEMORY_SEARCH_INDEX"
    # The variable it names is the one that turns search on: set in the environment, as
    # the operator would, a service started with no search setting of its own finds turns.
    with pytest.MonkeyPatch.context() as env:
        env.setenv(error_info(disabled).metadata["setting"], "keyword")
        on = await memory_factory(data_dir=tmp_path / "named", search_retry_seconds=0.2)
    cid = await conversation(on, ALICE)
    iid = await turn(on, ALICE, cid, "narwhal tusks", "are teeth")
    assert await search_until(on, ALICE, "narwhal", [iid]) == [iid]
    memory = await keyword_memory(memory_factory, tmp_path, max_search_limit=5)
    for request, field in (
        (pb.SearchInteractionsRequest(query=""), "query"),
        (pb.SearchInteractionsRequest(query="  "), "query"),
        (pb.SearchInteractionsRequest(query="x" * 5000), "query"),
        (pb.SearchInteractionsRequest(query="x", limit=6), "limit"),
        (pb.SearchInteractionsRequest(query="x", limit=-1), "limit"),
        (pb.SearchInteractionsRequest(query="x", conversation_id="nope"), "conversation_id"),
    ):
        await expect_error(
            memory.stub.SearchInteractions(request, metadata=ALICE),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    # The bounds say which they are and the setting that sets them.
    for request, bound, setting in (
        (pb.SearchInteractionsRequest(query="x" * 4097), ("limit_bytes", "4096"), "QUERY_BYTES"),
        (pb.SearchInteractionsRequest(query="x", limit=6), ("max", "5"), "LIMIT"),
    ):
        err = await rpc_error(memory.stub.SearchInteractions(request, metadata=ALICE))
        metadata = dict(error_info(err).metadata)
        assert metadata[bound[0]] == bound[1], metadata
        assert metadata["setting"] == f"GENSEARCH_MEMORY_MAX_SEARCH_{setting}", metadata
    # A mode the enum does not have is the caller's mistake: INVALID_ARGUMENT naming it
    # (it was FAILED_PRECONDITION, as if the service were in the wrong state).
    for mode in (99, -1):
        err = await expect_error(
            memory.stub.SearchInteractions(
                pb.SearchInteractionsRequest(query="x", mode=mode),  # type: ignore[arg-type]
                metadata=ALICE,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mode",
        )
        assert error_info(err).reason == "INVALID_MODE"
        # The Python client's class for it.
        assert isinstance(from_rpc_error(err), InvalidModeError)
        assert str(mode) in (err.details() or "")
    # Keyword-only index: meaning-based modes are refused, naming the field.
    for mode in (pb.SEARCH_MODE_SEMANTIC, pb.SEARCH_MODE_HYBRID):
        await expect_error(
            memory.stub.SearchInteractions(
                pb.SearchInteractionsRequest(query="x", mode=mode), metadata=ALICE
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "mode",
        )


@pytest.mark.slow
async def test_hybrid_search_finds_a_turn_by_meaning(
    memory_factory: MemoryFactory, tmp_path: Path, backend: str
) -> None:
    if backend == "cluster":
        pytest.skip("the index is the same on both backends; the model loads once here")
    memory = await memory_factory(search_index="hybrid", data_dir=tmp_path)
    cid = await conversation(memory, ALICE)
    bread = await turn(
        memory, ALICE, cid, "How do I bake sourdough bread?", "Feed the starter, knead, bake."
    )
    paris = await turn(memory, ALICE, cid, "What is the capital of France?", "Paris.")
    bobs = await turn(
        memory, BOB, await conversation(memory, BOB), "Best loaf recipe?", "Bake bread."
    )
    assert await search_until(memory, ALICE, "bread", [bread], mode=pb.SEARCH_MODE_KEYWORD) == [
        bread
    ]
    # No word in common with the turn: found by meaning, and the right one first.
    semantic = await search(memory, ALICE, "recipe for making a loaf", mode=pb.SEARCH_MODE_SEMANTIC)
    assert semantic[0] == bread and set(semantic) == {bread, paris}
    assert bobs not in semantic
    hybrid = await search(memory, ALICE, "French city on the Seine")
    assert hybrid[0] == paris
    assert await search(memory, BOB, "recipe for making a loaf") == [bobs]


async def test_jobs_beyond_the_running_limit_wait_in_the_outbox(
    memory_factory: MemoryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.memory import indexer

    monkeypatch.setattr(indexer, "MAX_RUNNING_JOBS", 0)  # every job is one too many
    memory = await keyword_memory(memory_factory, tmp_path)
    cid = await conversation(memory, ALICE)
    iid = await turn(memory, ALICE, cid, "otter habitats", "rivers and coasts")
    # Deferred, not dropped: the retry loop indexes it.
    assert await search_until(memory, ALICE, "otter", [iid]) == [iid]


async def test_the_qdrant_server_adapter_serves_search_too(memory_factory: MemoryFactory) -> None:
    # ServerStore, the adapter used with GENSEARCH_MEMORY_SEARCH_QDRANT_URL (":memory:" is
    # qdrant-client's local mode: the same adapter code, no server process).
    memory = await memory_factory(search_index="keyword", search_qdrant_url=":memory:")
    cid = await conversation(memory, ALICE)
    iid = await turn(memory, ALICE, cid, "lighthouse keepers", "on rocky islands")
    bobs = await turn(memory, BOB, await conversation(memory, BOB), "lighthouse", "beam")
    assert await search_until(memory, ALICE, "lighthouse", [iid]) == [iid]
    assert await search_until(memory, BOB, "lighthouse", [bobs]) == [bobs]
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert await search(memory, ALICE, "lighthouse") == []


async def test_the_service_sweeps_its_index_periodically(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await keyword_memory(memory_factory, tmp_path, search_sweep_seconds=0.2)
    cid = await conversation(memory, ALICE)
    iid = await turn(memory, ALICE, cid, "walrus tusks", "ivory")
    assert await search_until(memory, ALICE, "walrus", [iid]) == [iid]
    # A sweep took the lock (one replica a period) and ran; what it removes is
    # test_search_sweep.py's subject.
    lock = f"{memory.settings.key_prefix}:lock:search-sweep"
    assert await eventually(lambda: _exists(memory, lock))
    assert await search(memory, ALICE, "walrus") == [iid]  # a live turn is never swept


async def _exists(memory: Memory, key: str) -> bool:
    return bool(await memory.redis.exists(key))


async def test_a_tenants_flood_of_turns_leaves_running_room_for_another_tenants(
    memory_factory: MemoryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs running at once were first come, first served: a tenant writing turns
    faster than the index takes them (here while the model loads) held them all, and
    another tenant's turn went to the outbox behind its backlog, not found until a retry
    reached it. A tenant now runs at most GENSEARCH_MEMORY_SEARCH_JOBS_PER_TENANT."""
    from services.memory import indexer

    monkeypatch.setattr(indexer, "MAX_RUNNING_JOBS", 3)
    memory = await memory_factory(
        search_index="hybrid",
        data_dir=tmp_path,
        search_jobs_per_tenant=1,
        search_retry_seconds=3600,  # nothing deferred is retried within the test
    )
    acme, beta = as_("alice", "acme"), as_("bob", "beta")
    cid = await conversation(memory, acme)
    for n in range(3):  # their jobs wait for the model, loading on first use
        await turn(memory, acme, cid, f"harbour seals {n}", "on sandbanks")
    bobs = await turn(memory, beta, await conversation(memory, beta), "puffin burrows", "cliffs")
    assert await search_until(memory, beta, "puffin burrows", [bobs]) == [bobs]


async def test_the_outbox_is_bounded_with_a_share_per_tenant(
    memory_factory: MemoryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox was one queue with no size limit: a tenant writing turns faster than the
    index took them grew it without end in Redis, and its backlog was every tenant's.
    Now it holds GENSEARCH_MEMORY_SEARCH_OUTBOX_MAX_JOBS, of one tenant
    GENSEARCH_MEMORY_SEARCH_OUTBOX_JOBS_PER_TENANT; a job past them is dropped and counted,
    its turn stored all the same."""
    from services.memory import indexer

    monkeypatch.setattr(indexer, "MAX_RUNNING_JOBS", 0)  # every job goes to the outbox
    memory = await memory_factory(
        search_index="keyword",
        data_dir=tmp_path,
        search_outbox_max_jobs=4,
        search_outbox_jobs_per_tenant=2,
        search_retry_seconds=3600,  # nothing leaves the outbox within the test
    )
    dropped = _dropped()
    acme, beta = as_("alice", "acme"), as_("bob", "beta")
    flood_conv = await conversation(memory, acme)
    flood = [await turn(memory, acme, flood_conv, f"seal {n}", "sandbank") for n in range(5)]
    outbox = f"{memory.settings.key_prefix}:{{search-outbox}}:jobs"
    # acme's share taken, the rest of its jobs dropped: room left for beta.
    assert await eventually(lambda: _size_is(memory, outbox, 2))
    assert await eventually(lambda: _dropped_since(dropped, "tenant_share", 3))
    beta_conv = await conversation(memory, beta)
    betas = [await turn(memory, beta, beta_conv, f"puffin {n}", "cliff") for n in range(2)]
    assert await eventually(lambda: _size_is(memory, outbox, 4))
    queued = [json.loads(m) for m in await memory.redis.zrange(outbox, 0, -1)]
    assert sorted(job[3] for job in queued if job[1] == "beta") == sorted(betas)
    # Full: the next job of a tenant under its share is dropped too.
    gamma = as_("carol", "gamma")
    late = await turn(memory, gamma, await conversation(memory, gamma), "gannet", "rock")
    assert await eventually(lambda: _dropped_since(dropped, "outbox_full", 1))
    assert await memory.redis.zcard(outbox) == 4
    # Never the turn: every one is stored.
    for who, iid in [*((acme, i) for i in flood), *((beta, i) for i in betas), (gamma, late)]:
        got = await memory.stub.GetInteraction(
            pb.GetInteractionRequest(interaction_id=iid), metadata=who
        )
        assert got.interaction.interaction_id == iid


def _dropped() -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {
        reason: REGISTRY.get_sample_value(
            "gensearch_memory_search_jobs_dropped_total", {"reason": reason}
        )
        or 0.0
        for reason in ("tenant_share", "outbox_full")
    }


async def _dropped_since(before: dict[str, float], reason: str, count: int) -> bool:
    return _dropped()[reason] - before[reason] == count


async def test_evicted_turns_and_expired_conversations_leave_search(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    """Retention deletes turns without a call (DeleteInteraction deletes one on request:
    test_delete_interaction.py): a turn evicted by max_turns, and a conversation whose
    time to live ran out, are never found again, by Redis itself (no call)."""
    memory = await keyword_memory(memory_factory, tmp_path)
    capped = (
        await memory.stub.CreateConversation(
            pb.CreateConversationRequest(max_turns=2, summary_disabled=True), metadata=ALICE
        )
    ).conversation.conversation_id
    oldest = await turn(memory, ALICE, capped, "walrus tusks", "ivory")
    middle = await turn(memory, ALICE, capped, "walrus diet", "clams")
    assert set(await search_until(memory, ALICE, "walrus", [oldest, middle])) == {oldest, middle}
    newest = await turn(memory, ALICE, capped, "walrus weight", "a ton")
    # The third turn evicted the oldest in the same write: gone from search at once.
    assert set(await search_until(memory, ALICE, "walrus", [middle, newest])) == {middle, newest}
    await expect_error(
        memory.stub.GetInteraction(pb.GetInteractionRequest(interaction_id=oldest), metadata=ALICE),
        grpc.StatusCode.NOT_FOUND,
    )

    short = (
        await memory.stub.CreateConversation(
            pb.CreateConversationRequest(ttl=duration_pb2.Duration(seconds=1)), metadata=ALICE
        )
    ).conversation
    assert short.HasField("expire_time")
    brief = await turn(memory, ALICE, short.conversation_id, "narwhal horn", "a tooth")
    assert await search_until(memory, ALICE, "narwhal", [brief]) == [brief]

    async def expired() -> bool:
        try:
            await memory.stub.GetConversation(
                pb.GetConversationRequest(conversation_id=short.conversation_id), metadata=ALICE
            )
        except grpc.aio.AioRpcError as err:
            return err.code() == grpc.StatusCode.NOT_FOUND
        return False

    assert await eventually(expired)
    assert await search(memory, ALICE, "narwhal") == []
    await expect_error(
        memory.stub.SearchInteractions(
            pb.SearchInteractionsRequest(query="narwhal", conversation_id=short.conversation_id),
            metadata=ALICE,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
