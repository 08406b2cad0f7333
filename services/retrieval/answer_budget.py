"""The semantic answer cache's byte budget per tenant
(``max_cached_answer_bytes_per_tenant``): the bytes of a tenant's entries over all its
collections' caches stay within it. Before, only ``max_cached_answers`` (per collection)
bounded them: 10 000 answers of up to 1 MiB, times every collection of the tenant, on the
disk every tenant shares.

Policy, as the gateway's generation cache: a store first deletes the tenant's expired
entries, then, over the budget, the tenant's own soonest-expiring entries until the new one
fits (another tenant's are never read, counted nor deleted: each tenant has its ledger, of
its own collections' caches). An entry larger than the whole budget is refused
(INVALID_ARGUMENT, ``answer``, like an answer over ``max_cached_answer_bytes``); the
gateway stores after the answer went out, so that is only logged.

What an entry costs (``entry_bytes``: its payload as stored and its vector) is kept in its
payload (``SIZE_KEY``), so the ledger is derived from the engine's data: made at a tenant's
first store after a start, and made again every ``_RELOAD_SECONDS`` (replicas on one Qdrant
server each count the others' entries from then on). Between reloads a replica knows only
its own writes: N replicas may hold a tenant at up to N budgets for a minute, till their
next reload counts everything and their next store evicts. Answers cached for a collection
deleted without its cache being dropped (``AnswerCache.drop`` failed) are not counted:
nothing reaches them any more. A reload reads each entry's expiry and size, not its answer
(an entry stored before sizes were kept is read whole); the ledgers of at most ``_LEDGERS``
tenants, each used within the last reload period, are kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import NotFound
from services.retrieval.store import PROPS, VectorStore

# Ledgers kept in memory (least recently used dropped: made again from the engine), about
# 0.35 KB an entry; one due for a reload is dropped anyway.
_LEDGERS = 256
_RELOAD_SECONDS = 60.0
# Entries read per engine page while making a ledger (an entry stored before SIZE_KEY was
# kept is read whole: up to a 1 MiB answer).
_PAGE = 64
# The payload key an entry's bytes are kept under, so a ledger is made from it alone.
SIZE_KEY = "bytes"
_FIELDS = ("exp", SIZE_KEY)
# Beside the answer, question, context key and sources: the point's id, expiry and layout.
_OVERHEAD = 64
_FLOAT_BYTES = 4

# (cache collection, entry id)
Key = tuple[str, str]


def entry_bytes(payload: Mapping[str, Any], dimensions: int) -> int:
    """The bytes an entry takes as stored: its payload's texts (the answer as base64) and
    its vector."""
    props = payload.get(PROPS) or {}
    sources = props.get("s")
    size = len(str(props.get("a", ""))) + len(str(props.get("q", "")).encode())
    size += len(str(payload.get("k", "")))
    if isinstance(sources, dict):
        size += sum(len(str(k)) + len(str(v)) for k, v in sources.items())
    return size + _FLOAT_BYTES * dimensions + _OVERHEAD


@dataclass
class _Ledger:
    """One tenant's entries: expiry and bytes, and a heap by expiry (a replaced or removed
    entry's item stays in it until popped: checked against ``entries``)."""

    loaded_at: float
    entries: dict[Key, tuple[float, int]] = field(default_factory=dict)
    heap: list[tuple[float, Key]] = field(default_factory=list)
    total: int = 0

    def add(self, key: Key, expires: float, size: int) -> None:
        self.remove(key)
        self.entries[key] = (expires, size)
        self.total += size
        heapq.heappush(self.heap, (expires, key))
        if len(self.heap) > 2 * len(self.entries) + 64:  # drop the outdated items
            self.heap = [(e, k) for k, (e, _) in self.entries.items()]
            heapq.heapify(self.heap)

    def remove(self, key: Key) -> None:
        held = self.entries.pop(key, None)
        if held is not None:
            self.total -= held[1]

    def take(self, keep: Callable[[float, int], bool]) -> list[Key]:
        """Removes entries soonest-expiring first while ``keep(expires, total)`` is false."""
        taken: list[Key] = []
        while self.heap:
            expires, key = self.heap[0]
            if self.entries.get(key, (None,))[0] != expires:
                heapq.heappop(self.heap)  # outdated item
                continue
            if keep(expires, self.total):
                break
            heapq.heappop(self.heap)
            self.remove(key)
            taken.append(key)
        return taken


class AnswerBudget:
    def __init__(self, store: VectorStore, budget: int) -> None:
        self._store = store
        self._budget = budget
        self._ledgers: OrderedDict[str, _Ledger] = OrderedDict()
        # One store per tenant at a time (its eviction, write and count go together).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @property
    def budget(self) -> int:
        return self._budget

    async def store(
        self,
        tenant: str,
        key: Key,
        expires: float,
        size: int,
        names: Callable[[], Iterable[str]],
        dimensions: int,
        write: Callable[[], Awaitable[None]],
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Makes room for an entry of ``size`` bytes in ``tenant``'s budget, then ``write``s
        it. ``names``: the tenant's cache collections (to make its ledger from). ``check``
        may refuse the entry first (raising): then nothing is evicted for it."""
        lock = self._locks.get(tenant)
        if lock is None:
            lock = self._locks[tenant] = asyncio.Lock()
        async with lock:
            if check is not None:
                await check()
            ledger = await self._ledger(tenant, names, dimensions)
            try:
                ledger.remove(key)  # a replacement takes the room of the entry it replaces
                now = time.time()
                room = self._budget - size
                gone = ledger.take(lambda exp, total: exp > now and total <= room)
                await self._delete(gone)
                await write()
            except BaseException:
                # Failed or cancelled part way (the replaced entry may still be stored, an
                # eviction half done, the entry written): what the engine holds is not
                # known here any more, so the next store makes the ledger again from it.
                if self._ledgers.get(tenant) is ledger:
                    del self._ledgers[tenant]
                raise
            ledger.add(key, expires, size)

    def forget(self, tenant: str, name: str, ids: Iterable[str]) -> None:
        """Entries deleted by the cache itself (expired or stale at a lookup)."""
        ledger = self._ledgers.get(tenant)
        if ledger is not None:
            for entry_id in ids:
                ledger.remove((name, entry_id))

    def forget_collection(self, tenant: str, name: str) -> None:
        ledger = self._ledgers.get(tenant)
        if ledger is not None:
            for key in [k for k in ledger.entries if k[0] == name]:
                ledger.remove(key)

    async def _ledger(
        self, tenant: str, names: Callable[[], Iterable[str]], dimensions: int
    ) -> _Ledger:
        ledger = self._ledgers.get(tenant)
        if ledger is None or time.monotonic() - ledger.loaded_at >= _RELOAD_SECONDS:
            ledger = _Ledger(time.monotonic())
            for name in names():
                async for point_id, expires, size in self._entries(name, dimensions):
                    ledger.add((name, point_id), expires, size)
            self._ledgers[tenant] = ledger
        self._ledgers.move_to_end(tenant)
        # A ledger due for a reload is never read again as it is: no use keeping it.
        now = time.monotonic()
        for stale in [
            t for t, held in self._ledgers.items() if now - held.loaded_at >= _RELOAD_SECONDS
        ]:
            del self._ledgers[stale]
        while len(self._ledgers) > _LEDGERS:
            self._ledgers.popitem(last=False)
        return ledger

    async def _entries(self, name: str, dimensions: int) -> AsyncIterator[tuple[str, float, int]]:
        """Collection ``name``'s entries: id, expiry, bytes. Read from their ``SIZE_KEY``
        alone; an entry stored before it was kept is read whole, once a reload."""
        offset: str | None = None
        while True:
            try:
                points, offset = await self._store.scroll(name, offset, _PAGE, None, _FIELDS)
                whole = [p.id for p in points if not isinstance(p.payload.get(SIZE_KEY), int)]
                older = await self._store.retrieve(name, whole, False) if whole else []
            except NotFound:
                return  # nothing cached for that collection (yet, or any more)
            for point in points:
                if point.id not in whole:
                    expires = float(point.payload.get("exp", 0))
                    yield point.id, expires, int(point.payload[SIZE_KEY])
            for point in older:
                expires = float(point.payload.get("exp", 0))
                yield point.id, expires, entry_bytes(point.payload, dimensions)
            if offset is None:
                return

    async def _delete(self, keys: list[Key]) -> None:
        by_name: dict[str, list[str]] = {}
        for name, entry_id in keys:
            by_name.setdefault(name, []).append(entry_id)
        for name, ids in by_name.items():
            with contextlib.suppress(NotFound):
                await self._store.delete_ids(name, ids)
