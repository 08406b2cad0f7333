"""The exact generation cache: a per-hit or grouped answer kept in Redis and reused when
everything that decides it is the same.

The key is built from one thing: the generation request itself (``cache_request_message``), the
``gensearch.generation.v1.GenerateRequest`` the gateway would send, serialised
deterministically — provider, model, every sampling parameter and the rendered messages.
Nothing is picked field by field, so a field added to GenerateRequest later (top_p, stop,
a seed, a response format, a fallback chain…) is part of the key without touching this
module; only per-call switches that do not change the answer (``debug``) are cleared. A
changed object renders another prompt, so it misses.

Scope: the key also carries the tenant, the collection and the collection's creation time
(``Scope``), hashed. So an answer never serves another tenant and a collection recreated
under the same name starts cold. Every key of a tenant (entries, indexes, its budget's
bookkeeping) shares one Redis Cluster hash tag, the tenant's: one MGET reads a request's
keys, and one Lua script keeps a tenant's budget atomically, on a cluster too.

Budget: a tenant's entries hold at most ``cache_max_bytes_per_tenant`` bytes of Redis (the
value and each copy of the key). A ledger per tenant (sorted set: entry -> expiry, on
Redis' clock) and the entries' sizes (hash, with their total) are kept by one script per
write (``gencache_put.lua``): members past their expiry give their bytes back first (Redis
expired the entries; usage never drifts up), then, over the budget, the tenant's own
soonest-expiring entries are unlinked until the new one fits. Another tenant's are never
touched. Before, only the LLM-calls quota times the TTL bounded a tenant's cache: one
tenant could fill the Redis every tenant's quotas and conversations share.

Dropped with the collection: every key stored for a tenant's collection is also named in a
sorted set per (tenant, collection) (``index_key``), scored by when the entry expires, and a
DeleteCollection through the gateway deletes them all (``drop_collection``). Each write
also removes the members whose entries have expired, so the index names only live entries:
a plain set kept every key ever stored while its tenant kept writing (its TTL renewed by
each write), growing by up to the LLM-calls quota a minute with no end. A collection
deleted some other way (straight on retrieval) cannot be reached through its old entries
anyway: its successor has another creation time; they wait for their TTL, bounded by
``cache_max_ttl``. A search that read the collection before a delete through the gateway
and stores after the drop stores nothing: the drop first marks that collection (by its
creation time) dropped, and the put script reads the mark (``dropped_key``).

Best effort: with no Redis configured, or Redis failing, the call generates as if the
cache were off (logged, counted); a cache never fails a search. Errors are never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2
from redis.commands.core import AsyncScript

from services.common import redis_errors
from services.common.call_deadline import context_past_the_call
from services.common.errors import InvalidArgument, out_of_range, seconds_text
from services.common.logs import ThrottledWarning
from services.common.quotas import lua_script
from services.common.redis_client import (
    REDIS_FAILURES,
    REDIS_FAILURES_OR_TIMEOUT,
    RedisClient,
    answered,
    node_of,
)
from services.common.settings import MAX_WAIT_SECONDS
from services.common.well_known import duration_seconds
from services.gateway.generator import Options, generate_request
from services.gateway.metrics import CACHE_LOOKUPS
from services.gateway.settings import GatewaySettings

log = logging.getLogger("gensearch.gateway.cache")


class Mode(enum.Enum):
    USE = "use"
    REFRESH = "refresh"
    BYPASS = "bypass"

    @property
    def reads(self) -> bool:
        return self is Mode.USE

    @property
    def writes(self) -> bool:
        return self is not Mode.BYPASS


# What a result says of the call that made it; a cached answer made no call, so 0.
THIS_CALL = ("usage", "upstream_calls", "attempts", "wait_time")

_MODES: dict[int, Mode] = {
    gw_pb.CACHE_MODE_USE: Mode.USE,
    gw_pb.CACHE_MODE_REFRESH: Mode.REFRESH,
    gw_pb.CACHE_MODE_BYPASS: Mode.BYPASS,
}


@dataclass(frozen=True)
class Policy:
    """What one request does with a cache, and how long what it stores lives."""

    mode: Mode = Mode.BYPASS
    ttl: float = 0.0


def check_block(
    mode: int, ttl: duration_pb2.Duration | None, settings: GatewaySettings, *, field: str
) -> None:
    """A request's cache block on its own: a known mode, a TTL within ``cache_max_ttl``.
    ``field`` names the block in errors (``generate.cache``, ``semantic_cache``)."""
    if mode not in _MODES and mode != gw_pb.CACHE_MODE_UNSPECIFIED:
        raise InvalidArgument(f"{field}.mode: unknown mode {mode}", field=f"{field}.mode")
    limit = settings.cache_max_ttl
    if ttl is not None and not 0 < duration_seconds(ttl, f"{field}.ttl") <= limit:
        raise out_of_range(
            f"{field}.ttl must be positive and at most {seconds_text(limit)} s",
            field=f"{field}.ttl",
            bound=limit,
            setting="GENSEARCH_GATEWAY_CACHE_MAX_TTL",
            seconds=True,
        )


def resolve(
    mode: int,
    ttl: duration_pb2.Duration | None,
    enabled_by_default: bool,
    defaults: ret_pb.CacheDefaults,
    settings: GatewaySettings,
    *,
    field: str,
) -> Policy:
    """The request's mode, else the collection's default (on or off); its TTL, else the
    collection's, else the service's, never above ``cache_max_ttl``."""
    check_block(mode, ttl, settings, field=field)
    chosen = _MODES.get(mode) or (Mode.USE if enabled_by_default else Mode.BYPASS)
    limit = settings.cache_max_ttl
    stored = "collection.generative.cache.ttl"
    if ttl is not None:
        value = duration_seconds(ttl, f"{field}.ttl")
    elif defaults.HasField("ttl") and duration_seconds(defaults.ttl, stored) > 0:
        value = min(duration_seconds(defaults.ttl, stored), limit)
    else:
        value = min(settings.cache_default_ttl, limit)
    return Policy(chosen, value)


@dataclass(frozen=True)
class Scope:
    """Whose answers: a tenant's, for one collection as created at one moment (inline
    objects without a collection: the tenant's, collection empty)."""

    tenant: str
    collection: str = ""
    created_ns: int = 0

    def tag(self) -> str:
        raw = f"{self.tenant}\0{self.collection}\0{self.created_ns}".encode()
        return hashlib.sha256(raw).hexdigest()[:32]


def cache_request_message(
    options: Options, messages: Sequence[gen_pb.Message]
) -> gen_pb.GenerateRequest:
    """Everything that decides a generation's output: the GenerateRequest the gateway
    sends for it (the same function builds both), minus per-call switches."""
    request = generate_request(gen_pb.GenerateRequest, options, messages)
    request.ClearField("debug")  # asks for the upstream request back; the answer is the same
    return request


# A finish reason saying the provider withheld the answer (OpenAI's "content_filter"): a
# verdict on this one call, not an answer to reuse.
FILTERED = "content_filter"


def worth_keeping(text: str, finish_reason: str, *, structured: bool = False) -> bool:
    """Whether an answer may be cached (both caches): one with something in it that the
    provider did not withhold. An empty answer (a refusal, a content filter, a model that
    spent its tokens elsewhere) or a filtered one is no answer to serve the whole tenant
    for a TTL: the next call asks again. Before, such an answer was stored and every
    repeat got it, empty, until the entry expired."""
    return (bool(text) or structured) and finish_reason != FILTERED


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


# Keys unlinked per command when a collection's entries are dropped; also the most
# entries one write releases or evicts (bounded work per script: Redis runs one at a time).
_DROP_BATCH = 500
# The put script's answer for an entry whose collection was deleted (its drop mark).
_DROPPED = 2
# A drop mark's value: only its presence is read.
_MARK = b"1"
# The longest a GenerativeSearch's search phase (its collection, search and passages, up
# to the generation phase) may take: the gateway cuts it there whatever the caller's
# deadline, or none (generative_request.search_phase_deadline; GenerateOnObjects: the read of
# its objects). Retrieval's own timeouts do not bound it
# (GENSEARCH_RETRIEVAL_QDRANT_TIMEOUT alone may be a day, per Qdrant call).
SEARCH_PHASE_SECONDS = 3600.0
# The longest a search's store can come after the search read its collection: the rest
# of its search phase (at most SEARCH_PHASE_SECONDS, enforced by the gateway), then its
# generation phase (at most a day, MAX_WAIT_SECONDS: generate.timeout's bound,
# DEFAULT_GENERATION_TIMEOUT's, and the cap on a budget derived from the caller's deadline:
# generative_request.budget), then the store's own write after its hit answered (well
# within the second hour's slack). A drop mark lives that long (capped by CACHE_MAX_TTL:
# a later store's entry expires within it anyway). Both bounds are the gateway's own,
# so the sum holds.
LONGEST_SEARCH_SECONDS = MAX_WAIT_SECONDS + 2 * SEARCH_PHASE_SECONDS
# What a key costs besides the value: the entry's name, its ledger member, its size field
# and its collection index member.
_KEY_COPIES = 4


def _storable(result: gw_pb.GenerationResult) -> bool:
    return not result.HasField("error") and worth_keeping(
        result.result, result.finish_reason, structured=result.HasField("structured")
    )


def _tenant_tag(tenant: str) -> str:
    return hashlib.sha256(b"tenant\0" + tenant.encode()).hexdigest()[:32]


class GenerationCache:
    def __init__(
        self, redis: RedisClient | None, prefix: str, max_ttl: float, max_bytes_per_tenant: int
    ) -> None:
        """``redis``: the gateway's client, shared with the quotas and closed by its owner
        (``__main__``); None: a cache that is always off."""
        self._redis = redis
        self._prefix = prefix
        self._max_ttl = max_ttl
        self._mark_ttl = min(max_ttl, LONGEST_SEARCH_SECONDS)
        self._budget = max_bytes_per_tenant
        if redis is not None:
            # redis-py annotates register_script's self as Redis; RedisCluster has it too.
            self._put: AsyncScript = redis.register_script(lua_script("gencache_put"))  # type: ignore[misc]
            self._drop: AsyncScript = redis.register_script(lua_script("gencache_drop"))  # type: ignore[misc]
        # Writes still running after their hit's answer went out (``store``).
        self._stores: set[asyncio.Future[None]] = set()
        # Redis down: one WARNING per outage (again every 30 s while it lasts) and one INFO
        # line when it answers again; each cached call logged a read and a write failure.
        self._outage = ThrottledWarning(
            log,
            "generation cache unavailable (%s): generations run uncached until Redis answers "
            "(GENSEARCH_GATEWAY_REDIS_URL)",
            recovery="generation cache reachable again",
        )

    def _node(self, key: str) -> str | None:
        """The Redis node serving ``key`` (all of a tenant's keys share one), as the outage
        lines name it: one Cluster master down is its own outage, not every node's."""
        return None if self._redis is None else node_of(self._redis, key)

    def _recovered(self, key: str) -> None:
        """A call on ``key`` answered: the end of its node's outage, if one was logged."""
        if self._redis is not None:
            answered(self._outage, self._redis, key)

    def index_key(self, tenant: str, collection: str) -> str:
        """The sorted set naming every live key stored for ``tenant``'s ``collection``
        (whatever its creation time: all of them go when the name is deleted), scored by
        expiry (epoch milliseconds)."""
        collection_tag = Scope(tenant, collection).tag()
        return f"{self._prefix}:gencache-index:{{{_tenant_tag(tenant)}}}:{collection_tag}"

    def ledger_keys(self, tenant: str) -> tuple[str, str]:
        """The tenant's budget bookkeeping: its ledger (entry -> expiry) and sizes (entry ->
        bytes, and ``#total``)."""
        tag = _tenant_tag(tenant)
        ledger = f"{self._prefix}:gencache-ledger:{{{tag}}}"
        return ledger, f"{self._prefix}:gencache-sizes:{{{tag}}}"

    def _scored_index_key(self, tenant: str, collection: str) -> str:
        # The index before keys were tagged per tenant (one slot per collection): dropped
        # with its collection until it expires, like the plain set below.
        tag = Scope(tenant, collection).tag()
        return f"{self._prefix}:gencache-index:{{{tag}}}"

    def _old_index_key(self, tenant: str, collection: str) -> str:
        # The plain set of every key ever stored, before the index was scored: still
        # dropped with its collection until it expires (at most cache_max_ttl after the
        # upgrade; nothing writes to it any more).
        tag = Scope(tenant, collection).tag()
        return f"{self._prefix}:gencache-keys:{{{tag}}}"

    @property
    def available(self) -> bool:
        return self._redis is not None

    def keys_for(self, scope: Scope, options: Options) -> Callable[[Sequence[gen_pb.Message]], str]:
        """The key of each call of one request (one scope, one set of options), the parts
        they share made once: the scope's hash tag, and the request without its messages,
        to which each call's messages are added. Same bytes as the whole request
        serialised (a test holds them to it), at a fraction of its cost per hit."""
        base = cache_request_message(options, ())
        # The hash tag ({...}) keeps a tenant's keys in one cluster slot.
        prefix = f"{self._prefix}:gencache:{{{_tenant_tag(scope.tenant)}}}:{scope.tag()}:"

        def key(messages: Sequence[gen_pb.Message]) -> str:
            request = gen_pb.GenerateRequest()
            request.CopyFrom(base)
            request.messages.extend(messages)
            digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
            return prefix + digest

        return key

    async def get_many(
        self, keys: Mapping[int, str], *, timeout: float | None = None
    ) -> dict[int, gw_pb.GenerationResult]:
        """The stored results among ``keys`` (all of one scope), marked cached; nothing
        when Redis fails or does not answer within ``timeout`` seconds (the request's
        generation budget: a cache never makes a call late)."""
        if self._redis is None or not keys:
            return {}
        indexes = list(keys)
        budget = asyncio.timeout(timeout)
        try:
            async with budget:
                values = await self._redis.mget([keys[i] for i in indexes])
        except REDIS_FAILURES_OR_TIMEOUT as err:
            redis_errors.count("generation_cache", err)
            if not (isinstance(err, TimeoutError) and budget.expired()):
                # Redis failed. The request's own budget running out says nothing of it:
                # warned as an outage, that sent the operator to REDIS_URL for a caller's
                # short deadline.
                self._outage(err, extra={"operation": "read"}, node=self._node(keys[indexes[0]]))
            CACHE_LOOKUPS.labels("exact", "error").inc(len(keys))
            return {}
        self._recovered(keys[indexes[0]])
        found: dict[int, gw_pb.GenerationResult] = {}
        for index, value in zip(indexes, values, strict=True):
            if value is None:
                continue
            result = gw_pb.GenerationResult()
            try:
                result.ParseFromString(value)
            except Exception:  # a value some other writer left: a miss
                continue
            result.cached = True
            for name in THIS_CALL:  # this call made none, whatever was stored
                result.ClearField(name)
            found[index] = result
        CACHE_LOOKUPS.labels("exact", "hit").inc(len(found))
        CACHE_LOOKUPS.labels("exact", "miss").inc(len(keys) - len(found))
        return found

    async def store(
        self,
        scope: Scope,
        key: str,
        result: gw_pb.GenerationResult,
        ttl: float,
        *,
        wait: float,
    ) -> None:
        """``put``, waited for at most ``wait`` seconds; past that it goes on in the
        background. A healthy Redis stores before the hit's result goes out (a repeat
        right after finds it); one that does not answer never holds an answer back past
        the budget (it used to: the hit got DEADLINE_EXCEEDED, its LLM call made and
        charged)."""
        if self._redis is None or not _storable(result) or ttl <= 0:
            return
        # It may go on past the call: the call's deadline (its cutoff) is not the store's.
        task = asyncio.create_task(
            self.put(scope, key, result, ttl), context=context_past_the_call()
        )
        self._stores.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._stores.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=max(wait, 0.0))

    async def put(self, scope: Scope, key: str, result: gw_pb.GenerationResult, ttl: float) -> None:
        """Keep a successful result (never an error, nor an empty or filtered answer:
        ``worth_keeping``) for ``ttl`` seconds."""
        if self._redis is None or not _storable(result) or ttl <= 0:
            return
        # The whole result (so fields added to it later are kept too) but what belongs to
        # this call: usage, upstream calls, attempts and wait (a cached answer spends
        # none), the debug prompt, the mark.
        stored = gw_pb.GenerationResult()
        stored.CopyFrom(result)
        for name in (*THIS_CALL, "prompt", "cached"):
            stored.ClearField(name)
        value = stored.SerializeToString()
        keys = [key, *self.ledger_keys(scope.tenant)]
        if scope.collection:  # inline objects: no collection to drop them with
            keys.append(self.index_key(scope.tenant, scope.collection))
            keys.append(self.dropped_key(scope))
        cost = len(value) + _KEY_COPIES * len(key)
        args: list[bytes | int] = [
            value,
            _ms(ttl),
            cost,
            self._budget,
            _ms(self._max_ttl),
            _DROP_BATCH,
        ]
        try:
            stored = await self._put(keys=keys, args=args)
            if stored == _DROPPED:
                log.info("generation cache entry not stored: its collection was deleted")
            elif not stored:
                log.info("generation cache entry not stored: over the tenant's budget")
        except REDIS_FAILURES as err:
            redis_errors.count("generation_cache", err)
            self._outage(err, extra={"operation": "write"}, node=self._node(key))
        else:
            self._recovered(key)

    def dropped_key(self, scope: Scope) -> str:
        """The mark that ``scope``'s collection (that name, created then) was deleted:
        written by ``drop_collection`` before it drops the entries, it makes the stores
        of searches that read the collection before the delete store nothing (the put
        script reads it). Lives as long as a search may still store after reading the
        collection (``LONGEST_SEARCH_SECONDS``, capped by ``cache_max_ttl``), no longer:
        the mark also refuses the stores of a collection restored from a backup (same
        name, same creation time) while it lives, so it lived CACHE_MAX_TTL (7 days) for
        no search. Counted in the tenant's byte budget (``_mark_dropped``)."""
        return f"{self._prefix}:gencache-dropped:{{{_tenant_tag(scope.tenant)}}}:{scope.tag()}"

    async def _mark_dropped(self, scope: Scope, ledger: Sequence[str]) -> None:
        """Writes ``scope``'s drop mark as one of the tenant's entries (the put script, in
        its ledger and byte budget): a mark lives about a day (``dropped_key``), and a
        tenant creating and deleting collections in a loop would otherwise leave one key
        per delete in the shared Redis for that long, outside any budget. At the
        budget a mark makes room like an entry (the tenant's soonest-expiring first); a
        mark evicted only leaves late stores of that collection unfenced (best effort)."""
        mark = self.dropped_key(scope)
        args: list[bytes | int] = [
            _MARK,
            _ms(self._mark_ttl),
            len(_MARK) + _KEY_COPIES * len(mark),
            self._budget,
            _ms(self._max_ttl),
            _DROP_BATCH,
        ]
        await self._put(keys=[mark, *ledger], args=args)

    async def drop_collection(
        self, tenant: str, collection: str, created_ns: int | None = None
    ) -> None:
        """Delete every entry stored for ``tenant``'s ``collection``, and its index. Best
        effort, like the rest of the cache: a Redis failure is logged, and what was not
        dropped is unreachable and expires with its TTL. ``created_ns``: the deleted
        collection's creation time, when known; its drop mark is written first, so a store
        after the drop (a search that read the collection before the delete) stores
        nothing, and one before it is in the index the drop reads."""
        redis = self._redis
        if redis is None:
            return
        index = self.index_key(tenant, collection)
        ledger = self.ledger_keys(tenant)
        scored_index = self._scored_index_key(tenant, collection)
        old_index = self._old_index_key(tenant, collection)
        try:
            if created_ns is not None:
                await self._mark_dropped(Scope(tenant, collection, created_ns), ledger)
            # The tenant's entries (one slot with its ledger): unlinked and their bytes
            # given back, a batch per script.
            batch: list[bytes | str] = []
            async for member, _ in redis.zscan_iter(index, count=_DROP_BATCH):
                batch.append(member)
                if len(batch) >= _DROP_BATCH:
                    await self._drop(keys=[*ledger, *batch])
                    batch = []
            if batch:
                await self._drop(keys=[*ledger, *batch])
                batch = []
            # Keys of the layouts before (no budget): unlinked as they are.
            scans = (
                redis.zscan_iter(scored_index, count=_DROP_BATCH),
                redis.sscan_iter(old_index, count=_DROP_BATCH),
            )
            for scan in scans:
                async for member in scan:
                    batch.append(member[0] if isinstance(member, tuple) else member)
                    if len(batch) >= _DROP_BATCH:
                        # All of one request's keys share a slot, but a collection's span
                        # several (one per creation time): redis-py splits UNLINK by slot.
                        await redis.unlink(*batch)
                        batch = []
            if batch:
                await redis.unlink(*batch)
            # UNLINK: a large index is freed in the background, never blocking Redis.
            await redis.unlink(index, scored_index, old_index)
        except REDIS_FAILURES as err:
            redis_errors.count("generation_cache", err)
            # The tenant's node (its index and ledger; a layout of before may span others).
            self._outage(err, extra={"operation": "drop"}, node=self._node(index))
