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
payload (``SIZE_KEY``), so the ledger is derived from the engine's data: made whole at a
tenant's first store after a start (or after its ledger was dropped), then kept by this
replica's own stores and deletions. Every ``_RELOAD_SECONDS``, at the tenant's next store,
it re-reads at most ``_RELOAD_POINTS`` entries, going round the tenant's caches collection
by collection (a collection read over several periods goes on from where it stopped), so
that replicas on one Qdrant server each count the others' entries. Before, the whole
ledger was read again every minute: every entry of every collection of the tenant (10 000
a collection at most), at its first store of each minute. A replica cannot cheaply tell
which caches another one wrote (the engine keeps no version per collection; a count
misses replacements), and on one replica the ledger is exact without any re-read: so the
re-read is bounded, not skipped. One replica never counts below what the engine holds (the
re-read only adds what it read and removes, once a collection is read through, what it did
not find there and this replica did not write since). N replicas may hold a tenant at up to
N budgets until their re-reads have gone round its entries (``entries / _RELOAD_POINTS``
periods), and their next stores evict. Answers cached for a collection deleted without
its cache being dropped (``AnswerCache.drop`` failed) are not counted: nothing reaches
them any more. A read takes each entry's expiry and size, not its answer (an entry stored
before sizes were kept is read whole); the ledgers of at most ``_LEDGERS`` tenants, each
used within the last ``_IDLE_SECONDS``, are kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import NotFound
from services.retrieval.store import PROPS, VectorStore

# Ledgers kept in memory (least recently used dropped: made again from the engine), about
# 0.35 KB an entry; one unused for _IDLE_SECONDS is dropped anyway.
_LEDGERS = 256
_IDLE_SECONDS = 600.0
# A ledger's periodic re-read (for other replicas' writes): every _RELOAD_SECONDS at most
# _RELOAD_POINTS entries, round the tenant's caches: a tenant of 10 collections of 10 000
# answers is gone round in 50 minutes, at 2 000 entries a minute instead of 100 000.
_RELOAD_SECONDS = 60.0
_RELOAD_POINTS = 2048
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
class _Reread:
    """Where a ledger's re-read stands: the collections left this round, the one being
    read, its next page, and its entries found so far (or written here since it began)."""

    left: list[str] = field(default_factory=list)
    name: str | None = None
    offset: str | None = None
    found: set[str] = field(default_factory=set)


@dataclass
class _Ledger:
    """One tenant's entries: expiry and bytes, and a heap by expiry (a replaced or removed
    entry's item stays in it until popped: checked against ``entries``)."""

    reread_at: float
    used_at: float = 0.0
    entries: dict[Key, tuple[float, int]] = field(default_factory=dict)
    heap: list[tuple[float, Key]] = field(default_factory=list)
    total: int = 0
    # Entries per collection: a re-read looks for entries it did not find only if some are.
    counts: Counter[str] = field(default_factory=Counter)
    reread: _Reread = field(default_factory=_Reread)

    def written(self, key: Key, expires: float, size: int) -> None:
        """An entry this replica wrote: held now, whatever the re-read found before."""
        self.add(key, expires, size)
        if key[0] == self.reread.name:
            self.reread.found.add(key[1])

    def add(self, key: Key, expires: float, size: int) -> None:
        if self.entries.get(key) == (expires, size):
            return
        self.remove(key)
        self.entries[key] = (expires, size)
        self.total += size
        self.counts[key[0]] += 1
        heapq.heappush(self.heap, (expires, key))
        if len(self.heap) > 2 * len(self.entries) + 64:  # drop the outdated items
            self.heap = [(e, k) for k, (e, _) in self.entries.items()]
            heapq.heapify(self.heap)

    def remove(self, key: Key) -> None:
        held = self.entries.pop(key, None)
        if held is not None:
            self.total -= held[1]
            self.counts[key[0]] -= 1
            if not self.counts[key[0]]:
                del self.counts[key[0]]

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
            ledger.written(key, expires, size)

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
        now = time.monotonic()
        ledger = self._ledgers.get(tenant)
        if ledger is None:
            ledger = _Ledger(now)
            for name in names():
                offset: str | None = None
                while True:
                    try:
                        page, offset = await self._page(name, offset, _PAGE, dimensions)
                    except NotFound:
                        break  # nothing cached for that collection (yet, or any more)
                    for entry_id, expires, size in page:
                        ledger.add((name, entry_id), expires, size)
                    if offset is None:
                        break
            self._ledgers[tenant] = ledger
        elif now - ledger.reread_at >= _RELOAD_SECONDS:
            await self._reread(ledger, names, dimensions)
            ledger.reread_at = now
        ledger.used_at = now
        self._ledgers.move_to_end(tenant)
        for idle in [t for t, held in self._ledgers.items() if now - held.used_at >= _IDLE_SECONDS]:
            del self._ledgers[idle]
        while len(self._ledgers) > _LEDGERS:
            self._ledgers.popitem(last=False)
        return ledger

    async def _reread(
        self, ledger: _Ledger, names: Callable[[], Iterable[str]], dimensions: int
    ) -> None:
        """Reads at most ``_RELOAD_POINTS`` of the tenant's entries again, from where the
        last re-read stopped: what it finds is counted; a collection read through loses
        the entries it did not hold (deleted elsewhere) unless written here meanwhile."""
        state = ledger.reread
        left = _RELOAD_POINTS
        begun = False  # one round begun per call at most (caches may all be empty)
        while left > 0:
            if state.name is None:
                if not state.left:
                    if begun:
                        return
                    begun = True
                    state.left = sorted(set(names()), reverse=True)
                    # Entries of a collection the tenant no longer has: nothing reaches them.
                    current = set(state.left)
                    for key in [k for k in ledger.entries if k[0] not in current]:
                        ledger.remove(key)
                    if not state.left:
                        return
                state.name, state.offset, state.found = state.left.pop(), None, set()
            name = state.name
            try:
                page, offset = await self._page(name, state.offset, min(_PAGE, left), dimensions)
            except NotFound:
                page, offset = [], None
            left -= max(len(page), 1)
            for entry_id, expires, size in page:
                ledger.add((name, entry_id), expires, size)
                state.found.add(entry_id)
            if offset is not None:
                state.offset = offset
                continue
            held = sum(1 for i in state.found if (name, i) in ledger.entries)
            if ledger.counts[name] > held:  # some not found: deleted elsewhere
                for key in [k for k in ledger.entries if k[0] == name and k[1] not in state.found]:
                    ledger.remove(key)
            state.name, state.found = None, set()

    async def _page(
        self, name: str, offset: str | None, limit: int, dimensions: int
    ) -> tuple[list[tuple[str, float, int]], str | None]:
        """A page of collection ``name``'s entries (id, expiry, bytes) and the next page's
        offset. Read from their ``SIZE_KEY`` alone; an entry stored before it was kept is
        read whole. NotFound: no cache for that collection."""
        points, offset = await self._store.scroll(name, offset, limit, None, _FIELDS)
        whole = [p.id for p in points if not isinstance(p.payload.get(SIZE_KEY), int)]
        older = await self._store.retrieve(name, whole, False) if whole else []
        page = [
            (p.id, float(p.payload.get("exp", 0)), int(p.payload[SIZE_KEY]))
            for p in points
            if p.id not in whole
        ]
        page += [
            (p.id, float(p.payload.get("exp", 0)), entry_bytes(p.payload, dimensions))
            for p in older
        ]
        return page, offset

    async def _delete(self, keys: list[Key]) -> None:
        by_name: dict[str, list[str]] = {}
        for name, entry_id in keys:
            by_name.setdefault(name, []).append(entry_id)
        for name, ids in by_name.items():
            with contextlib.suppress(NotFound):
                await self._store.delete_ids(name, ids)
