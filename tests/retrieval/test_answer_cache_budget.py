"""The semantic answer cache's per-tenant byte budget
(GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWER_BYTES_PER_TENANT), through real engines: a tenant's
entries, over all its collections, stay within it; the soonest-expiring go first; another
tenant's are never touched; the accounting is read back from the engine after a restart."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from pydantic import SecretStr

from services.common.errors import NotFound
from services.retrieval import answer_budget
from services.retrieval.answer_budget import SIZE_KEY, AnswerBudget
from services.retrieval.answer_cache import cache_store_name
from services.retrieval.catalog import is_collection_schema
from services.retrieval.embedders import LocalEmbedder
from services.retrieval.schema import Schema
from services.retrieval.store import PROPS, FoundPoint, StoredPoint, VectorStore
from tests.retrieval.conftest import (
    MakeRetrieval,
    Retrieval,
    hold_embedding,
    store_racing_delete,
    vector_collection,
)
from tests.retrieval.test_answer_cache import ACME, GLOBEX, TOKEN, lookup, store
from tests.support.rpc import error_info

ANSWER = 20_000  # bytes of each answer: ~27 KB stored (base64), with its question and vector
BUDGET = 90_000  # three such entries fit, four do not
SETTING = "GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWER_BYTES_PER_TENANT"
Metadata = tuple[tuple[str, str], ...]


def question(n: int) -> str:
    return f"What does entry number {n} of this budget test say about dunes?"


def put(n: int, seconds: float, collection: str = "Docs") -> pb.StoreCachedAnswerRequest:
    request = store(question(n), bytes([65 + n]) * ANSWER, seconds)
    request.collection = collection
    return request


async def held(r: Retrieval, tenant: str) -> dict[str, int]:
    """Question -> answer bytes of every entry the engine holds in ``tenant``'s caches (of
    all its collections)."""
    out: dict[str, int] = {}
    for data in await r.store.schemas():
        if not is_collection_schema(data) or Schema.from_json(data).tenant != tenant:
            continue
        name, offset = cache_store_name(Schema.from_json(data)), None
        while True:
            try:
                points, offset = await r.store.scroll(name, offset, 64)
            except NotFound:
                break  # nothing cached for that collection
            for point in points:
                props = point.payload[PROPS]
                out[props["q"]] = len(base64.b64decode(props["a"]))
            if offset is None:
                break
    return out


async def cache_name(r: Retrieval, tenant: str, collection: str) -> str:
    for data in await r.store.schemas():
        if is_collection_schema(data):
            schema = Schema.from_json(data)
            if (schema.tenant, schema.name) == (tenant, collection):
                return cache_store_name(schema)
    raise AssertionError(f"no collection {collection!r} of {tenant!r}")


async def found(r: Retrieval, who: Metadata, n: int, collection: str = "Docs") -> bool:
    request = lookup(question(n), similarity=0.99)
    request.collection = collection
    return (await r.stub.LookupCachedAnswer(request, metadata=who)).found


async def start(make_retrieval: MakeRetrieval, adapter: str, data_dir: Path) -> Retrieval:
    return await make_retrieval(
        adapter,
        data_dir=data_dir,
        internal_token=SecretStr(TOKEN),
        max_cached_answer_bytes_per_tenant=BUDGET,
    )


async def create(r: Retrieval, who: Metadata, name: str) -> None:
    request = pb.CreateCollectionRequest(collection=vector_collection(name))
    await r.stub.CreateCollection(request, metadata=who)


@pytest.mark.parametrize("adapter", ("edge", "server"))
async def test_a_tenant_s_answers_stay_within_its_budget_the_soonest_expiring_go_first(
    make_retrieval: MakeRetrieval, adapter: str, tmp_path: Path
) -> None:
    """Before, only MAX_CACHED_ANSWERS (10 000 a collection) bounded the cache: 10 000
    answers of up to 1 MiB each, times every collection of the tenant, on the disk every
    tenant shares."""
    r = await start(make_retrieval, adapter, tmp_path / "data")
    for who in (ACME, GLOBEX):
        await create(r, who, "Docs")
    await create(r, ACME, "Notes")
    for n in range(3):  # the other tenant's, stored first: the oldest, soonest-expiring
        await r.stub.StoreCachedAnswer(put(n, 60), metadata=GLOBEX)
    # Across two collections, stored in another order than they expire.
    ttls = {0: 600, 1: 300, 2: 900, 3: 1200, 4: 1500}
    for n, seconds in ttls.items():
        collection = "Notes" if n % 2 else "Docs"
        await r.stub.StoreCachedAnswer(put(n, seconds, collection), metadata=ACME)
        stored = await held(r, "acme")
        assert sum(stored.values()) * 4 / 3 <= BUDGET, stored  # as stored: base64
    assert set(await held(r, "acme")) == {question(n) for n in (2, 3, 4)}
    assert not await found(r, ACME, 0) and not await found(r, ACME, 1, "Notes")
    assert await found(r, ACME, 2) and await found(r, ACME, 3, "Notes") and await found(r, ACME, 4)
    # The other tenant's entries: neither evicted nor counted.
    assert set(await held(r, "globex")) == {question(n) for n in range(3)}
    assert all([await found(r, GLOBEX, n) for n in range(3)])
    # Replacing an entry takes the room of the one it replaces: nothing else goes.
    await r.stub.StoreCachedAnswer(put(4, 1500), metadata=ACME)
    assert set(await held(r, "acme")) == {question(n) for n in (2, 3, 4)}


async def test_an_entry_larger_than_the_whole_budget_is_refused_and_evicts_nothing(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    r = await start(make_retrieval, "edge", tmp_path / "data")
    await create(r, ACME, "Docs")
    await r.stub.StoreCachedAnswer(put(0, 60), metadata=ACME)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.StoreCachedAnswer(store(question(1), b"x" * BUDGET), metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "TOO_LARGE" and info.metadata["field"] == "answer"
    assert info.metadata["setting"] == SETTING
    assert set(await held(r, "acme")) == {question(0)}


async def test_the_budget_is_read_back_from_the_engine_after_a_restart(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await start(make_retrieval, "edge", data)
    await create(first, ACME, "Docs")
    for n, seconds in ((0, 900), (1, 300), (2, 600)):
        await first.stub.StoreCachedAnswer(put(n, seconds), metadata=ACME)
    # Entry 1 as stored before sizes were kept: it is read whole to be counted.
    name = await cache_name(first, "acme", "Docs")
    entry_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"k\0{question(1)}"))
    (entry,) = await first.store.retrieve(name, [entry_id], True)
    del entry.payload[SIZE_KEY]
    await first.store.upsert(name, [StoredPoint(entry.id, entry.payload, entry.dense)])
    await first.stop()
    second = await start(make_retrieval, "edge", data)
    await second.stub.StoreCachedAnswer(put(3, 1200), metadata=ACME)
    # Known from the engine's data, not this process's memory: the soonest-expiring went.
    assert set(await held(second, "acme")) == {question(n) for n in (0, 2, 3)}


async def test_a_store_refused_for_a_full_collection_evicts_nothing(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    """The budget made room (deleting the tenant's soonest-expiring entries, in any of its
    collections) before the collection's MAX_CACHED_ANSWERS check refused the store: a
    refused store still cost the tenant answers it had."""
    r = await make_retrieval(
        "edge",
        data_dir=tmp_path / "data",
        internal_token=SecretStr(TOKEN),
        max_cached_answer_bytes_per_tenant=BUDGET,
        max_cached_answers=2,
    )
    await create(r, ACME, "Docs")
    await create(r, ACME, "Notes")
    await r.stub.StoreCachedAnswer(put(0, 60, "Notes"), metadata=ACME)  # soonest-expiring
    for n in (1, 2):
        await r.stub.StoreCachedAnswer(put(n, 600), metadata=ACME)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.stub.StoreCachedAnswer(put(3, 900), metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "COLLECTION_FULL"
    assert set(await held(r, "acme")) == {question(n) for n in (0, 1, 2)}


async def test_a_failed_write_leaves_the_ledger_counting_what_the_engine_holds(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    """A replacement's old entry left the ledger before its write; when the write failed
    (or was cancelled) the entry stayed in the engine uncounted, and the tenant could hold
    past its budget till the next reload."""
    r = await start(make_retrieval, "edge", tmp_path / "data")
    await create(r, ACME, "Docs")
    for n, seconds in ((0, 300), (1, 600)):
        await r.stub.StoreCachedAnswer(put(n, seconds), metadata=ACME)
    name = await cache_name(r, "acme", "Docs")
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"k\0{question(n)}")) for n in (0, 1)]
    entries = {p.id: p.payload for p in await r.store.retrieve(name, ids, False)}
    sizes = [int(entries[i][SIZE_KEY]) for i in ids]
    budget = AnswerBudget(r.store, BUDGET)

    async def failing() -> None:
        raise OSError("the engine went away")

    async def written() -> None:
        return None

    exp0 = float(entries[ids[0]]["exp"])
    with pytest.raises(OSError):
        await budget.store("acme", (name, ids[0]), exp0, sizes[0], lambda: [name], 384, failing)
    assert set(await held(r, "acme")) == {question(0), question(1)}  # both still stored
    # Fits beside entry 1 alone: entry 0, still stored, must make room for it.
    new = (name, str(uuid.uuid4()))
    await budget.store("acme", new, exp0 + 3600, BUDGET - sizes[1], lambda: [name], 384, written)
    assert set(await held(r, "acme")) == {question(1)}


class _Reads:
    """The real engine, and the ids of the cache entries each call reads (scroll and
    retrieve) since ``take``: what a ledger's re-read costs."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store
        self.ids: list[str] = []

    def take(self) -> list[str]:
        ids, self.ids = self.ids, []
        return ids

    async def scroll(self, *args: Any, **kwargs: Any) -> tuple[list[FoundPoint], str | None]:
        points, offset = await self._store.scroll(*args, **kwargs)
        self.ids += [p.id for p in points]
        return points, offset

    async def retrieve(self, *args: Any, **kwargs: Any) -> list[FoundPoint]:
        points = await self._store.retrieve(*args, **kwargs)
        self.ids += [p.id for p in points]
        return points

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def _entries(r: Retrieval, name: str) -> dict[str, tuple[float, int, FoundPoint]]:
    """Entry id -> expiry, bytes and the entry itself (with its vector), as the engine holds
    them."""
    out: dict[str, tuple[float, int, FoundPoint]] = {}
    offset: str | None = None
    while True:
        points, offset = await r.store.scroll(name, offset, 64)
        for point in await r.store.retrieve(name, [p.id for p in points], True):
            out[point.id] = (float(point.payload["exp"]), int(point.payload[SIZE_KEY]), point)
        if offset is None:
            return out


async def _held_bytes(r: Retrieval, names: list[str]) -> int:
    held_now = [await _entries(r, n) for n in names]
    return sum(size for entries in held_now for _, size, _ in entries.values())


async def _fill(r: Retrieval, collections: tuple[str, ...], per_collection: int) -> list[str]:
    """``per_collection`` small answers in each of ACME's ``collections``: their caches."""
    for c in collections:
        await create(r, ACME, c)
        for n in range(per_collection):
            request = store(f"{c} question {n} about dunes?", b"short", 3600)
            request.collection = c
            await r.stub.StoreCachedAnswer(request, metadata=ACME)
    return [await cache_name(r, "acme", c) for c in collections]


async def test_a_ledgers_periodic_re_read_reads_a_bounded_number_of_entries(
    make_retrieval: MakeRetrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger was made again, whole, at the tenant's first store of every minute: every
    entry of every one of its collections' caches (up to 10 000 each) read again. Now each
    period re-reads at most _RELOAD_POINTS entries, going round its collections, and the
    count stays exact on one replica."""
    monkeypatch.setattr(answer_budget, "_RELOAD_SECONDS", 0.0)  # a re-read at every store
    monkeypatch.setattr(answer_budget, "_RELOAD_POINTS", 5)
    r = await start(make_retrieval, "edge", tmp_path / "data")
    names = await _fill(r, ("Docs", "Notes", "Faq"), 6)
    held_now = {n: await _entries(r, n) for n in names}
    reads = _Reads(r.store)
    budget = AnswerBudget(cast(VectorStore, reads), BUDGET)

    async def written() -> None:
        return None

    # Storing an entry again as it is (the engine already holds it: nothing to write).
    entry_id, (exp, size, _) = next(iter(held_now[names[0]].items()))
    again = ((names[0], entry_id), exp, size, lambda: names, 384, written)
    await budget.store("acme", *again)  # the first store makes the ledger: reads it all
    assert len(reads.take()) == 18
    seen: set[str] = set()
    for _ in range(4):  # 18 entries, 5 a period: each read again within 4 periods
        await budget.store("acme", *again)
        period = reads.take()
        assert len(period) <= 5
        seen.update(period)
    assert seen == {i for n in names for i in held_now[n]}
    # On one replica the count stays exact: its own writes and what the engine holds.
    truth = sum(size for n in names for _, size, _ in held_now[n].values())
    assert budget._ledgers["acme"].total == truth
    # An entry another replica deleted leaves the count within a round too.
    gone_id, (_, gone_size, _) = list(held_now[names[2]].items())[-1]
    await r.store.delete_ids(names[2], [gone_id])
    for _ in range(4):
        await budget.store("acme", *again)
        assert len(reads.take()) <= 5
    assert budget._ledgers["acme"].total == truth - gone_size


async def test_entries_another_replica_wrote_are_counted_within_a_round_and_evicted(
    make_retrieval: MakeRetrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas on one engine: another's entries come into a ledger as its re-read goes
    round the tenant's caches, within (entries / _RELOAD_POINTS) periods; then a store
    evicts down to the budget."""
    monkeypatch.setattr(answer_budget, "_RELOAD_SECONDS", 0.0)
    monkeypatch.setattr(answer_budget, "_RELOAD_POINTS", 4)
    r = await start(make_retrieval, "edge", tmp_path / "data")
    names = await _fill(r, ("Docs", "Notes"), 4)
    entries = {n: await _entries(r, n) for n in names}
    this, other = AnswerBudget(r.store, BUDGET), AnswerBudget(r.store, BUDGET)
    template = next(iter(entries[names[1]].values()))[2]
    size = int(template.payload[SIZE_KEY])

    def writer(name: str, entry_id: str, exp: float) -> Callable[[], Awaitable[None]]:
        async def write() -> None:
            payload = {**template.payload, "exp": exp}
            await r.store.upsert(name, [StoredPoint(entry_id, payload, template.dense)])

        return write

    async def put_entry(budget: AnswerBudget, name: str, exp: float) -> str:
        entry_id = str(uuid.uuid4())
        write = writer(name, entry_id, exp)
        await budget.store("acme", (name, entry_id), exp, size, lambda: names, 384, write)
        return entry_id

    now = time.time()
    first = await put_entry(this, names[0], now + 7200)  # this replica's ledger made
    # The other replica fills the tenant's budget, in the second collection's cache.
    while await _held_bytes(r, names) + size <= BUDGET:
        await put_entry(other, names[1], now + 9000)
    # This replica, knowing only its own, stores on; within a round (the entries / 4
    # periods) its re-read has counted the others' and it evicts down to the budget.
    total = sum([len(await _entries(r, n)) for n in names])
    for _ in range(-(-total // 4) + 1):
        await put_entry(this, names[0], now + 8000)
    assert await _held_bytes(r, names) <= BUDGET
    held_now = {n: await _entries(r, n) for n in names}
    # The soonest-expiring went first: the small answers (an hour), then this replica's
    # first one (two hours); the other replica's (2.5 hours) stay.
    assert first not in held_now[names[0]]
    assert all(exp > now + 7200 for n in names for exp, _, _ in held_now[n].values())


@pytest.mark.parametrize("adapter", ("edge", "server"))
async def test_a_store_into_a_deleted_collection_evicts_nothing(
    make_retrieval: MakeRetrieval,
    local_embedder: LocalEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    adapter: str,
    tmp_path: Path,
) -> None:
    """A collection's first store (no cache yet) whose collection is deleted while it
    embeds the question: its check found no cache to count and let the budget evict the
    tenant's soonest-expiring entry (of another collection) to make room, before the write
    found the collection gone. Now it is refused first, and every other entry stays."""
    r = await start(make_retrieval, adapter, tmp_path / "data")
    await create(r, ACME, "Docs")
    await create(r, ACME, "Notes")
    for n in range(3):  # the budget's whole room
        await r.stub.StoreCachedAnswer(put(n, 60, "Notes"), metadata=ACME)
    entered, release = hold_embedding(monkeypatch, local_embedder)
    await store_racing_delete(r, put(3, 600), ACME, entered, release)
    assert sorted(await held(r, "acme")) == [question(n) for n in range(3)]
