"""A provider's declared limits, counted where every replica sees them.

``requests_per_minute`` and ``tokens_per_minute`` are token buckets; ``max_in_flight`` a set
of leases. With Redis (``GENSEARCH_GENERATION_REDIS_URL``) one atomic script
(``services/common/lua/provider_admit.lua``) checks and takes all three for every replica
of the generation service together; keys carry a Redis Cluster hash tag per provider (and
API key), so one provider's limits live in one slot. Without Redis the same arithmetic runs
in this process alone (``LocalLimits``): the limits then hold per replica, so an operator
running several replicas without Redis divides them by the replica count.

A bucket's shape follows from the declared limit so that no span of ``rate_window`` seconds
ever sees more than the limit's share of it, whatever the provider's own accounting
(a fixed or a sliding window, or a bucket): ``capacity`` = ``rate_burst`` x the window's
allowance may start at once, the rest refills evenly over the window.

A call is charged its estimated tokens when admitted (whole, even past the bucket's
capacity: a debt the next calls wait for); what comes back when it ends is the limiter's
choice (``ProviderLimiter._refund``: nothing for a provider that counts reservations).

A 429's ``Retry-After`` pause is kept there too (``RedisLimits.pause``, script
``provider_pause.lua``): the end of the pause, on the Redis clock, in a key with the same
hash tag, which the admit script checks first, so that every replica holds back the
provider's calls until the pause ends. A pause only ever grows. Without Redis, or for a
provider that declares no limits (whose calls never ask Redis), the pause holds in the
replica that got the 429 only (``services.generation.admission``).

A Redis that fails is not a reason to fail calls: that call is counted in memory instead,
and a warning is logged (at most every 30 s); a pause Redis failed to record holds in this
replica only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from redis.commands.core import AsyncScript

from services.common import redis_errors
from services.common.logs import ThrottledWarning
from services.common.quotas import LEASE_SLACK_SECONDS, lua_script
from services.common.redis_client import REDIS_FAILURES, RedisClient, answered, node_of
from services.common.releases import Releases
from services.generation.settings import ProviderConfig

log = logging.getLogger("gensearch.generation.limits")

# Admission answers: go, wait this long, or ask again soon (in flight is full).
FLIGHT_FULL = -1.0


@dataclass(frozen=True, slots=True)
class Admission:
    """What the limits answered one call.

    ``wait``: 0 (admitted), seconds until they can pay for it, or ``FLIGHT_FULL``.
    ``floor``: seconds before which no further call of the scope can start whatever it
    costs (a running pause, the requests bucket's refill to one request; it only refills,
    nothing but admissions takes from it): a lower bound, 0 when none is known. Tokens are
    never in it (a call's cost and refunds move them)."""

    wait: float
    floor: float = 0.0


@dataclass(frozen=True, slots=True)
class Bucket:
    capacity: float
    per_second: float

    @classmethod
    def of(cls, per_minute: float | None, window: float, burst: float) -> Bucket | None:
        """No span of ``window`` seconds admits more than ``per_minute`` x window / 60."""
        if per_minute is None:
            return None
        allowance = per_minute * window / 60.0
        capacity = max(1.0, math.floor(allowance * burst))
        # capacity + per_second x window == allowance (below 2 per window: one at a time,
        # at the limit's pace).
        refill = allowance - capacity if allowance - capacity >= capacity else allowance
        return cls(capacity, refill / window)


@dataclass(frozen=True, slots=True)
class DeclaredLimits:
    requests: Bucket | None
    tokens: Bucket | None
    in_flight: int | None

    @classmethod
    def of(cls, config: ProviderConfig) -> DeclaredLimits:
        window, burst = config.rate_window, config.rate_burst
        return cls(
            Bucket.of(config.requests_per_minute, window, burst),
            Bucket.of(config.tokens_per_minute, window, burst),
            config.max_in_flight,
        )

    @property
    def any(self) -> bool:
        return self.requests is not None or self.tokens is not None or self.in_flight is not None

    @property
    def ttl(self) -> float:
        """Seconds after which an idle bucket is full again (and its key may go)."""
        return (
            max(
                (b.capacity / b.per_second for b in (self.requests, self.tokens) if b is not None),
                default=1.0,
            )
            + 1.0
        )


class SharedLimits(Protocol):
    # The provider's declared limits, made once from its config (``registry.shared_limits``)
    # and read by each of its per-key queues.
    limits: DeclaredLimits
    # Releases run apart from their call (``ProviderLimiter._forget_shared``), awaited
    # before the Redis client closes (``ProviderRegistry.close``).
    releases: Releases

    async def admit(self, scope: str, call_id: str, cost: float, lease: float) -> Admission:
        """``Admission.wait`` 0: admitted; > 0: seconds until the buckets can pay;
        ``FLIGHT_FULL``. ``cost`` tokens are taken whole once the bucket holds them, or
        is full for a call dearer than it (the bucket is then left in debt)."""

    async def release(self, scope: str, call_id: str, refund: float) -> None:
        """The call ended: it leaves the in-flight set; ``refund`` tokens go back."""

    async def pause(self, scope: str, seconds: float) -> None:
        """A 429 asked for ``seconds`` of quiet: ``admit`` waits them out (never shortened)."""


class _LocalBucket:
    __slots__ = ("level", "shape", "updated")

    def __init__(self, shape: Bucket, now: float) -> None:
        self.shape = shape
        self.level = shape.capacity
        self.updated = now

    def refill(self, now: float) -> float:
        self.level = min(
            self.shape.capacity, self.level + max(0.0, now - self.updated) * self.shape.per_second
        )
        self.updated = now
        return self.level


class LocalLimits:
    """The limits counted in this process (no Redis, or Redis failed for a call)."""

    def __init__(self, limits: DeclaredLimits) -> None:
        self.limits = limits
        self.releases = Releases()
        self._requests: dict[str, _LocalBucket] = {}
        self._tokens: dict[str, _LocalBucket] = {}
        self._flight: dict[str, set[str]] = {}

    def _bucket(self, table: dict[str, _LocalBucket], shape: Bucket, scope: str) -> _LocalBucket:
        bucket = table.get(scope)
        if bucket is None:
            bucket = table[scope] = _LocalBucket(shape, time.monotonic())
        return bucket

    async def admit(self, scope: str, call_id: str, cost: float, lease: float) -> Admission:
        now = time.monotonic()
        flight = self._flight.setdefault(scope, set())
        if self.limits.in_flight is not None and len(flight) >= self.limits.in_flight:
            return Admission(FLIGHT_FULL)
        wait = floor = 0.0
        req = tok = None
        if self.limits.requests is not None:
            req = self._bucket(self._requests, self.limits.requests, scope)
            if req.refill(now) < 1:
                wait = floor = (1 - req.level) / req.shape.per_second
        if self.limits.tokens is not None:
            tok = self._bucket(self._tokens, self.limits.tokens, scope)
            # A call dearer than the whole bucket waits for a full one (or it would wait
            # forever), and is charged all it costs: the bucket owes the rest.
            need = min(cost, tok.shape.capacity)
            if tok.refill(now) < need:
                wait = max(wait, (need - tok.level) / tok.shape.per_second)
        if wait > 0:
            return Admission(wait, floor)
        if req is not None:
            req.level -= 1
            floor = max(0.0, (1 - req.level) / req.shape.per_second)
        if tok is not None:
            tok.level -= cost
        if self.limits.in_flight is not None:
            flight.add(call_id)
        return Admission(0.0, floor)

    async def release(self, scope: str, call_id: str, refund: float) -> None:
        self._flight.get(scope, set()).discard(call_id)
        if self.limits.tokens is not None and refund:
            tok = self._bucket(self._tokens, self.limits.tokens, scope)
            tok.refill(time.monotonic())
            tok.level = min(tok.shape.capacity, tok.level + refund)

    async def pause(self, scope: str, seconds: float) -> None:
        """Nothing to share: the replica's own queue keeps the pause (``ProviderLimiter``)."""


class RedisLimits:
    """The limits counted in Redis for every replica; in memory for a call Redis fails."""

    def __init__(
        self,
        redis: RedisClient,
        limits: DeclaredLimits,
        *,
        key_prefix: str,
        releases: Releases | None = None,
    ) -> None:
        self.limits = limits
        # Shared by the providers on one client, which their registry settles at close.
        self.releases = releases or Releases()
        self._prefix = key_prefix
        self._redis = redis
        # redis-py annotates register_script's self as Redis; RedisCluster has it too.
        self._admit: AsyncScript = redis.register_script(lua_script("provider_admit"))  # type: ignore[misc]
        self._release: AsyncScript = redis.register_script(lua_script("provider_release"))  # type: ignore[misc]
        self._pause: AsyncScript = redis.register_script(lua_script("provider_pause"))  # type: ignore[misc]
        self._fallback = LocalLimits(limits)
        self._failed = ThrottledWarning(
            log,
            "provider limits counted in this process only, Redis failed: %s",
            recovery="provider limits counted in Redis again",
        )
        # Calls admitted in memory (Redis failed): released there too.
        self._local_calls: set[str] = set()

    def keys(self, scope: str) -> tuple[str, str, str, str]:
        """The scope's requests and tokens buckets, calls in flight and Retry-After pause."""
        tag = f"{self._prefix}:limits:{{{scope}}}"
        return f"{tag}:requests", f"{tag}:tokens", f"{tag}:flight", f"{tag}:pause"

    async def admit(self, scope: str, call_id: str, cost: float, lease: float) -> Admission:
        req, tok = self.limits.requests, self.limits.tokens
        args = [
            req.capacity if req else 0,
            req.per_second / 1000 if req else 0,
            tok.capacity if tok else 0,
            tok.per_second / 1000 if tok else 0,
            cost,
            self.limits.in_flight or 0,
            int((lease + LEASE_SLACK_SECONDS) * 1000),
            call_id,
            int(self.limits.ttl * 1000),
        ]
        keys = list(self.keys(scope))
        try:
            reply = await self._admit(keys=keys, args=args)
        except REDIS_FAILURES as err:
            redis_errors.count("rate_limits", err)
            self._failed(err, node=node_of(self._redis, keys[0]))
            answer = await self._fallback.admit(scope, call_id, cost, lease)
            if answer.wait == 0:
                self._local_calls.add(call_id)
            # The in-memory count is not the one the next call asks (Redis is back by
            # then, or not): no floor from it.
            return Admission(answer.wait)
        # The outage's end is a line too (once per warning), per Redis node: a scope's keys
        # are on one node, and another node's answer is not the end of its outage.
        answered(self._failed, self._redis, keys[0])
        wait_ms, floor_ms = (int(n) for n in reply)
        return Admission(FLIGHT_FULL if wait_ms < 0 else wait_ms / 1000, floor_ms / 1000)

    async def release(self, scope: str, call_id: str, refund: float) -> None:
        if call_id in self._local_calls:
            self._local_calls.discard(call_id)
            await self._fallback.release(scope, call_id, refund)
            return
        tok = self.limits.tokens
        if self.limits.in_flight is None and (tok is None or not refund):
            return  # nothing to leave and nothing to give back: no round trip
        _, tokens, flight, _ = self.keys(scope)
        args = [
            tok.capacity if tok else 0,
            tok.per_second / 1000 if tok else 0,
            refund,
            call_id,
            int(self.limits.ttl * 1000),
        ]
        try:
            await self._release(keys=[tokens, flight], args=args)
        except Exception as err:
            # Best effort: the lease frees the slot, and the call's outcome must not change.
            redis_errors.count("rate_limits", err)
            self._failed(err, node=node_of(self._redis, tokens))

    async def pause(self, scope: str, seconds: float) -> None:
        *_, pause = self.keys(scope)
        try:
            await self._pause(keys=[pause], args=[math.ceil(seconds * 1000)])
        except Exception as err:
            # Best effort: the replica that got the 429 pauses anyway (its own queue).
            redis_errors.count("rate_limits", err)
            self._failed(err, node=node_of(self._redis, pause))


def scope_of(provider: str, api_key: str | None) -> str:
    """Whose limits a call counts against: the provider's with the operator's key, or the
    provider's with the caller's own key (its own limits at the provider). The key itself
    never reaches Redis, only a digest of it."""
    if api_key is None:
        return f"p:{provider}"
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return f"p:{provider}:k:{digest}"
