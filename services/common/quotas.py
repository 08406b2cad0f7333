"""Per-tenant quotas, counted in Redis so they hold across every gateway replica.

Four quotas (docs/operations.md#quotas):

* **concurrent calls**: every call of the gateway's services (health and reflection are
  never counted) holds a slot while it runs. Slots are members of a ZSET scored by the end
  of their lease: a short lease (the call's deadline, at most ``lease`` seconds) that the
  call renews while it runs, so a long call keeps its slot however long it lasts, and the
  slots of a replica that crashed free themselves within one lease.
* **LLM calls per minute**: each call to the generation service (one per hit, the grouped
  call, each Ask answer and question rewrite, each summary fold) is counted in a fixed
  one-minute window on Redis' clock before it is made, and refused when the window is
  full. The generation service may make more than one upstream call for it (retries, a
  fallback chain, a JSON schema's corrective retry) and says how many it made: the rest
  are counted when that is known (``charge_llm_made``), never refused, since they were
  made already. The count may then pass the quota, and the tenant's next calls are
  refused until the window ends.
* **objects written per minute**: the objects of each UpsertObjects request, and of each
  ImportObjects message, forwarded to retrieval are counted in the same kind of window
  before they are sent, all of them or none: a write that does not fit in what is left
  of the minute is refused whole (``charge_objects_written``).
* **bytes written per minute**: the same, counting the bytes of each such request or
  message, so that a tenant's writes of large objects are bounded too (the cost of a
  write, its parsing, keyword index and engine time, grows with its bytes: 1000 objects
  of 15 KB cost ~1.3 CPU-seconds); a write is counted against both or neither, in one
  script (``charge_written``).

All are atomic Lua scripts (``lua/quota_*.lua``; the per-minute quotas run
``quota_charge``, a write counted against both ``quota_charge_pair``). Keys carry a
Redis Cluster hash tag per tenant, so one tenant's quotas live in one slot. Over a quota
the call gets RESOURCE_EXHAUSTED with ``ErrorInfo`` (reason ``QUOTA_EXCEEDED``, metadata
``quota`` and ``limit``) and ``RetryInfo`` (when to try
again; none for a write larger than the whole quota, which never fits).

A quota that cannot be checked (Redis down) lets the call through and logs a warning:
quotas guard against abuse and must not turn a Redis outage into a gateway outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from functools import cache, partial
from importlib import resources
from typing import Any

import grpc
from redis.commands.core import AsyncScript

from services.common import redis_errors
from services.common.auth import current_tenant
from services.common.errors import ResourceExhausted
from services.common.logs import ThrottledWarning
from services.common.redis_client import REDIS_FAILURES, RedisClient, answered, node_of
from services.common.releases import Releases

log = logging.getLogger("gensearch.quotas")

_LUA = resources.files("services.common") / "lua"
WINDOW_MS = 60_000
# When a concurrent-calls quota is full nobody knows when a slot frees: a short wait.
CONCURRENT_RETRY_SECONDS = 1.0
# A lease outlasts the call's deadline by this much (clock skew, the reply in flight).
LEASE_SLACK_SECONDS = 5.0
# A running call renews its lease this many times per lease: one late or failed renewal
# does not cost it its slot.
RENEWALS_PER_LEASE = 3


def _tenant() -> str:
    """The tenant a call counts against: the authenticated caller's."""
    return current_tenant()


@cache
def lua_script(name: str) -> str:
    """A script of ``services/common/lua`` (quotas', generation's provider limits, the gateway's
    generation cache)."""
    return (_LUA / f"{name}.lua").read_text()


class QuotaExceeded(ResourceExhausted):
    """RESOURCE_EXHAUSTED with ErrorInfo and a ``google.rpc.RetryInfo`` detail; without
    RetryInfo (``retry_after`` None) when trying again cannot help: a write of more
    objects than the whole per-minute quota."""

    def __init__(
        self, quota: str, limit: int, retry_after: float | None, message: str | None = None
    ) -> None:
        super().__init__(
            message or f"quota {quota} ({limit}) exceeded; retry in {retry_after or 0:.1f} s",
            reason="QUOTA_EXCEEDED",
            metadata={"quota": quota, "limit": str(limit)},
            retry_after=retry_after,
        )


class Quotas:
    """The gateway's quotas; ``admit`` is the chassis' admission guard, ``charge_llm``
    runs before each generation call and ``charge_llm_made`` after it, with the upstream
    calls it made beyond the one admitted; ``charge_objects_written`` before each write
    forwarded to retrieval. The Redis client is shared (the gateway's generation cache
    uses it too) and closed by whoever made it, never here. ``window_ms``: the per-minute
    quotas' window, a minute but for tests."""

    CONCURRENT = "concurrent_calls"
    LLM_PER_MINUTE = "llm_calls_per_minute"
    OBJECTS_WRITTEN_PER_MINUTE = "objects_written_per_minute"
    BYTES_WRITTEN_PER_MINUTE = "bytes_written_per_minute"

    def __init__(
        self,
        redis: RedisClient,
        *,
        key_prefix: str,
        concurrent_calls: int,
        llm_calls_per_minute: int,
        lease: float,
        objects_written_per_minute: int = 0,
        bytes_written_per_minute: int = 0,
        lease_slack: float = LEASE_SLACK_SECONDS,
        window_ms: int = WINDOW_MS,
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self.concurrent_calls = concurrent_calls
        self.llm_calls_per_minute = llm_calls_per_minute
        self.objects_written_per_minute = objects_written_per_minute
        self.bytes_written_per_minute = bytes_written_per_minute
        self._lease = lease
        self._lease_slack = lease_slack
        self.window_ms = window_ms
        # redis-py annotates register_script's self as Redis; RedisCluster has it too.
        self._enter: AsyncScript = redis.register_script(lua_script("quota_enter"))  # type: ignore[misc]
        self._charge_script: AsyncScript = redis.register_script(lua_script("quota_charge"))  # type: ignore[misc]
        self._renew: AsyncScript = redis.register_script(lua_script("quota_renew"))  # type: ignore[misc]
        self._pair: AsyncScript = redis.register_script(lua_script("quota_charge_pair"))  # type: ignore[misc]
        # Releases of slots, run apart from their call (a cancel must not lose them) and
        # awaited by ``settle`` before the client is closed.
        self._releasing = Releases()
        self._unchecked = ThrottledWarning(
            log,
            "quotas not checked, Redis failed: %s",
            recovery="quotas checked again: Redis answers",
        )
        self._tags: dict[str, str] = {}

    def _key(self, tenant: str, name: str) -> str:
        tag = self._tags.get(tenant)
        if tag is None:
            digest = hashlib.sha256(tenant.encode()).hexdigest()[:20]
            tag = self._tags[tenant] = f"{self._prefix}:quota:{{t:{digest}}}"
            if len(self._tags) > 100_000:  # bounded: tenants come from configured keys
                self._tags.clear()
        return f"{tag}:{name}"

    async def _run(self, script: AsyncScript, key: str, *args: Any) -> Any:
        """The script's reply, or None when Redis failed (the call goes through)."""
        return await self._run_on(script, [key], list(args))

    async def _run_on(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """``_run`` with ``keys`` (one tenant's: one node), the first naming the node."""
        key = keys[0]
        try:
            reply = await script(keys=keys, args=args)
        except REDIS_FAILURES as err:
            redis_errors.count("quotas", err)
            self._unchecked(err, node=node_of(self._redis, key))
            return None
        # The outage's end is a line too (once per warning: a flapping Redis is two lines
        # every 30 s at most), per Redis node: a tenant's keys are on one node, and another
        # node's answer is not the end of its outage.
        answered(self._unchecked, self._redis, key)
        return reply

    def _lease_ms(self, context: grpc.aio.ServicerContext) -> int:
        remaining = context.time_remaining()
        lease = self._lease if remaining is None else min(remaining, self._lease)
        return int((max(lease, 0.0) + self._lease_slack) * 1000)

    async def _release(self, key: str, call_id: str) -> None:
        """Best effort: whatever stops it (Redis down, or the client already closed while a
        cancelled call unwinds at shutdown), the lease frees the slot, and the call's own
        outcome must not change."""
        try:
            await self._redis.zrem(key, call_id)
        except Exception as err:
            redis_errors.count("quotas", err)
            self._unchecked(err, node=node_of(self._redis, key))

    async def _renew_while_running(
        self, key: str, call_id: str, context: grpc.aio.ServicerContext, ended: asyncio.Event
    ) -> None:
        """Renews the slot's lease until the call has ``ended`` (and this is cancelled); a
        failed renewal is logged and retried at the next period, never fails the call.
        The flag as well as the cancel: a cancel landing as a Redis command completes can
        be lost (services/common/tasks.py), and the slot would be renewed forever."""
        while True:
            await asyncio.sleep(self._lease / RENEWALS_PER_LEASE)
            if ended.is_set():
                return
            await self._run(self._renew, key, self._lease_ms(context), call_id)

    @contextlib.asynccontextmanager
    async def admit(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Holds one of the tenant's concurrent-call slots while the call runs."""
        if self.concurrent_calls <= 0:
            yield
            return
        key = self._key(_tenant(), "calls")
        call_id = uuid.uuid4().hex
        try:
            entered = await self._run(
                self._enter, key, self.concurrent_calls, self._lease_ms(context), call_id
            )
        except BaseException:
            # Cancelled (or failed) with the script in flight: Redis may have taken the slot
            # all the same. Release it whatever happened (ZREM of an absent member is a
            # no-op), apart from the call so a second cancellation does not stop it.
            await self._releasing.run(partial(self._release, key, call_id))
            raise
        if entered == 0:
            raise QuotaExceeded(self.CONCURRENT, self.concurrent_calls, CONCURRENT_RETRY_SECONDS)
        ended = asyncio.Event()
        renewal = (
            None
            if entered is None  # Redis failed: nothing to renew
            else asyncio.create_task(
                # Named so a test can stop renewals the way a crashed replica does.
                self._renew_while_running(key, call_id, context, ended),
                name=f"quota-renewal-{call_id}",
            )
        )
        try:
            yield
        finally:
            if renewal is not None:
                ended.set()
                renewal.cancel()
                # Apart from the call once a cancel reaches it: a call cancelled (again)
                # while its release is on its way, as gRPC cancels a call still running at
                # the end of the grace period, lost it, and the slot stayed taken until its
                # lease ended. In the call's own task otherwise (no task per call).
                await self._releasing.run(partial(self._release, key, call_id))

    async def settle(self, timeout: float) -> None:
        """Waits (at most ``timeout`` seconds) for the releases still on their way: run
        before the Redis client is closed at shutdown, which lost them."""
        await self._releasing.settle(timeout)

    async def _charge(self, quota: str, limit: int, name: str, count: int, tenant: str) -> None:
        """Counts ``count`` uses of the per-minute quota ``quota`` in the window, all or
        none: QuotaExceeded, none counted, when they do not fit in what is left of it."""
        key = self._key(tenant, name)
        wait_ms = await self._run(self._charge_script, key, limit, self.window_ms, count, 0)
        if wait_ms is not None and int(wait_ms) >= 0:
            raise QuotaExceeded(quota, limit, int(wait_ms) / 1000)

    async def charge_llm(self, tenant: str | None = None) -> None:
        """Counts one LLM call of ``tenant`` (default: the caller of the RPC being served);
        raises QuotaExceeded when the minute's quota is used."""
        if self.llm_calls_per_minute <= 0:
            return
        await self._charge(
            self.LLM_PER_MINUTE, self.llm_calls_per_minute, "llm", 1, tenant or _tenant()
        )

    async def charge_llm_made(self, calls: int, tenant: str | None = None) -> None:
        """Counts ``calls`` LLM calls already made for ``tenant`` (default: the caller of
        the RPC being served): never refuses, and may take the minute's count past the
        quota (see the module's docstring)."""
        if self.llm_calls_per_minute <= 0 or calls <= 0:
            return
        key = self._key(tenant or _tenant(), "llm")
        await self._run(
            self._charge_script, key, self.llm_calls_per_minute, self.window_ms, calls, 1
        )

    async def charge_written(self, objects: int, size: int, tenant: str) -> None:
        """Counts one write of ``tenant`` (an UpsertObjects request, an ImportObjects
        message: ``objects`` objects, ``size`` bytes) against both its bytes-written and
        its objects-written quotas before it is forwarded, in one script, all or none:
        QuotaExceeded, nothing counted, when it does not fit in what is left of either
        (the bytes' quota named when neither has room). Not the bytes first and given
        back when the objects did not fit: given back in the next window, they came off
        that window's count (the tenant could pass its quota), and a call cancelled in
        between kept them counted without its write."""
        bytes_limit, objects_limit = self.bytes_written_per_minute, self.objects_written_per_minute
        if bytes_limit <= 0 or size <= 0 or objects_limit <= 0 or objects <= 0:
            # One quota (or none) counts this write.
            await self.charge_bytes_written(size, tenant)
            await self.charge_objects_written(objects, tenant)
            return
        _never_fits(self.BYTES_WRITTEN_PER_MINUTE, bytes_limit, size, "bytes")
        _never_fits(self.OBJECTS_WRITTEN_PER_MINUTE, objects_limit, objects, "objects")
        keys = [self._key(tenant, "write-bytes"), self._key(tenant, "writes")]
        args = [bytes_limit, size, objects_limit, objects, self.window_ms]
        reply = await self._run_on(self._pair, keys, args)
        if reply is None:
            return
        refused, wait_ms = (int(n) for n in reply)
        if refused == 1:
            raise QuotaExceeded(self.BYTES_WRITTEN_PER_MINUTE, bytes_limit, wait_ms / 1000)
        if refused == 2:
            raise QuotaExceeded(self.OBJECTS_WRITTEN_PER_MINUTE, objects_limit, wait_ms / 1000)

    async def charge_bytes_written(self, size: int, tenant: str) -> None:
        """Counts the ``size`` bytes of one write of ``tenant`` (``_charge_write``)."""
        await self._charge_write(
            self.BYTES_WRITTEN_PER_MINUTE, self.bytes_written_per_minute, "write-bytes",
            size, "bytes", tenant,
        )  # fmt: skip

    async def charge_objects_written(self, objects: int, tenant: str) -> None:
        """Counts the ``objects`` of one write (an UpsertObjects request, an ImportObjects
        message) of ``tenant`` before it is forwarded (``_charge_write``)."""
        await self._charge_write(
            self.OBJECTS_WRITTEN_PER_MINUTE, self.objects_written_per_minute, "writes",
            objects, "objects", tenant,
        )  # fmt: skip

    async def _charge_write(
        self, quota: str, limit: int, name: str, amount: int, unit: str, tenant: str
    ) -> None:
        """Counts ``amount`` (of ``unit``) against the write quota ``quota``; raises
        QuotaExceeded, none counted, when it does not fit in what is left of the minute.
        More than the whole quota never fits: refused without RetryInfo, saying so."""
        if limit <= 0 or amount <= 0:
            return
        _never_fits(quota, limit, amount, unit)
        await self._charge(quota, limit, name, amount, tenant)


def _never_fits(quota: str, limit: int, amount: int, unit: str) -> None:
    """More than the whole quota never fits: refused without RetryInfo, saying so."""
    if amount > limit:
        raise QuotaExceeded(
            quota,
            limit,
            None,
            f"quota {quota} ({limit}) is smaller than this write of {amount} {unit}, "
            f"which can never fit: send at most {limit} {unit} per request or message",
        )
