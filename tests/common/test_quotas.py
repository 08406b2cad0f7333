"""The quota scripts on a real Redis: slots of a crashed replica free themselves, the
per-minute window refuses and says how long to wait, a write is counted whole or not at
all and fits again once its window ends, tenants are counted apart, and a Redis that is
down lets calls through."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

from services.common.auth import Identity, Role, set_current_identity
from services.common.quotas import QuotaExceeded, Quotas
from services.common.redis_client import RedisClient, connect
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from tests.support.lost_cancel import LosesTheFirstCancel
from tests.support.redis_cluster import LocalCluster
from tests.support.redis_outages import two_outages_log
from tests.support.redis_relay import relaying


def _as_tenant(tenant: str) -> None:
    """Quotas count per tenant: the caller is a user alone in the tenant ``tenant``."""
    set_current_identity(Identity(tenant, tenant, Role.ADMIN))


class _Context:
    """What ``admit`` reads of a call: its remaining time."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def _quotas(
    url: str, *, cluster: bool = False, timeout: float = 5, **limits: Any
) -> tuple[Quotas, RedisClient]:
    """Quotas on a client of their own, and that client (theirs to close: quotas never
    close the client they are given). The client's timeout is generous: a Redis answer
    late past it is an outage, and quotas fail open (with 0.5 s a loaded machine could
    turn a refusal a test expects into a call let through)."""
    redis = connect(url, cluster=cluster, socket_timeout=timeout, connect_timeout=timeout)
    values: dict[str, Any] = {
        "key_prefix": "test",
        "concurrent_calls": 0,
        "llm_calls_per_minute": 0,
        "lease": 60.0,
        "lease_slack": 0.0,
        **limits,
    }
    return Quotas(redis, **values), redis


async def _early_in_a_window(redis: RedisClient, window_ms: int, margin: float) -> None:
    """Waits, when fewer than ``margin`` seconds of the current fixed window (on Redis'
    clock, as the quotas count) are left, for the next one: the checks that follow then
    all fall in one window, however slow a loaded machine makes them."""
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    left = (window_ms - now_ms % window_ms) / 1000
    if left < margin:
        await asyncio.sleep(left + 0.05)


async def test_a_crashed_replicas_slots_free_themselves(redis_server: RedisProcess) -> None:
    quotas, redis = _quotas(redis_server.url, concurrent_calls=1)
    try:
        _as_tenant("alice")
        # A lease of 1 s (the call's deadline): with 0.3 s a loaded machine could let it
        # lapse before the refusal below was asked for.
        crashed = quotas.admit("/x/Y", _Context(1.0))  # type: ignore[arg-type]
        await crashed.__aenter__()  # entered, never left: its replica "crashed"
        with pytest.raises(QuotaExceeded) as caught:
            async with quotas.admit("/x/Y", _Context(5)):  # type: ignore[arg-type]
                pass
        assert caught.value.metadata == {"quota": "concurrent_calls", "limit": "1"}
        _as_tenant("bob")  # another tenant is not affected
        async with quotas.admit("/x/Y", _Context(5)):  # type: ignore[arg-type]
            pass
        _as_tenant("alice")
        await asyncio.sleep(1.5)  # the lease (1 s) ended
        async with quotas.admit("/x/Y", _Context(5)):  # type: ignore[arg-type]
            pass
    finally:
        await redis.aclose()


def _stop_renewals() -> None:
    """What a crashed replica does: its calls' leases are no longer renewed."""
    for task in asyncio.all_tasks():
        if task.get_name().startswith("quota-renewal-"):
            task.cancel()


async def test_a_long_call_keeps_its_slot_past_its_first_lease(
    redis_server: RedisProcess,
) -> None:
    # A tenant cannot outwait its slots: a call without a deadline that runs for several
    # leases still holds its slot (the lease is renewed), so a second call is refused.
    # A lease of 1 s (renewed every third of it): with 0.3 s, one renewal delayed 0.2 s
    # by a loaded CI machine let the slot lapse.
    quotas, redis = _quotas(redis_server.url, concurrent_calls=1, lease=1.0)
    try:
        _as_tenant("heidi")
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            await asyncio.sleep(3.0)  # three leases
            with pytest.raises(QuotaExceeded):
                async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
                    pass
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            pass  # the long call left: its slot is free at once
    finally:
        await redis.aclose()


async def test_a_crashed_replicas_renewed_slots_free_themselves_within_a_lease(
    redis_server: RedisProcess,
) -> None:
    quotas, redis = _quotas(redis_server.url, concurrent_calls=1, lease=1.0)
    try:
        _as_tenant("ivan")
        crashed = quotas.admit("/x/Y", _Context(None))  # type: ignore[arg-type]
        await crashed.__aenter__()  # entered, never left ...
        await asyncio.sleep(1.5)  # ... renewed past its first lease while its replica lived,
        with pytest.raises(QuotaExceeded):
            async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
                pass
        _stop_renewals()  # ... which then "crashed"
        await asyncio.sleep(1.5)  # the lease (1 s) ended
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            pass
    finally:
        await redis.aclose()


async def test_a_call_cancelled_while_entering_leaves_no_slot(redis_server: RedisProcess) -> None:
    quotas, redis = _quotas(redis_server.url, concurrent_calls=1, lease=60.0, timeout=30)
    busy = connect(redis_server.url, cluster=False, socket_timeout=30, connect_timeout=5)
    try:
        _as_tenant("judy")
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            pass  # the enter script is loaded: the next enter is one EVALSHA

        async def enter() -> None:
            async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
                await asyncio.Event().wait()  # pragma: no cover - never entered

        # A script keeps Redis busy for 2 s (of CPU): the enter is sent but waits in
        # Redis' socket buffer, and runs (ZADD) after its caller was cancelled. The busy
        # client is connected first and given 0.5 s to send the script (0.8 s of script
        # after 0.1 s, on a client not yet connected, left a loaded machine little room).
        await busy.ping()  # type: ignore[misc]
        spin = "local t0 = os.clock() while os.clock() - t0 < 2 do end return 0"
        blocking = asyncio.create_task(busy.eval(spin, 0))
        await asyncio.sleep(0.5)
        entering = asyncio.create_task(enter())
        await asyncio.sleep(0.3)
        assert not entering.done()
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        await blocking
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            pass  # the cancelled call's slot was released, not held for its 60 s lease
    finally:
        await busy.aclose()
        await redis.aclose()


async def test_llm_calls_per_minute(redis_server: RedisProcess) -> None:
    quotas, redis = _quotas(redis_server.url, llm_calls_per_minute=3)
    try:
        await _early_in_a_window(redis, 60_000, margin=20.0)
        _as_tenant("carol")
        for _ in range(3):
            await quotas.charge_llm()
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.charge_llm()
        wait = caught.value.retry_after
        assert wait is not None and 0 < wait <= 60
        assert caught.value.to_status().code.name == "RESOURCE_EXHAUSTED"
    finally:
        await redis.aclose()


async def test_calls_already_made_are_counted_past_the_limit(redis_server: RedisProcess) -> None:
    quotas, redis = _quotas(redis_server.url, llm_calls_per_minute=3)
    try:
        await _early_in_a_window(redis, 60_000, margin=20.0)
        _as_tenant("carol")
        await quotas.charge_llm()
        # A fallback's and a corrective retry's calls: counted, never refused, even past
        # the limit ...
        await quotas.charge_llm_made(4)
        # ... so the tenant's next call is refused until the window ends.
        with pytest.raises(QuotaExceeded):
            await quotas.charge_llm()
        # The tenant named wins over the task's identity (a background summary fold).
        await quotas.charge_llm(tenant="heidi")
        await quotas.charge_llm_made(2, tenant="heidi")
        with pytest.raises(QuotaExceeded):
            await quotas.charge_llm(tenant="heidi")
        _as_tenant("heidi")
        with pytest.raises(QuotaExceeded):
            await quotas.charge_llm()
        _as_tenant("ivan")
        await quotas.charge_llm()
    finally:
        await redis.aclose()


async def test_objects_written_are_counted_whole_and_fit_again_in_the_next_window(
    redis_server: RedisProcess,
) -> None:
    # A window of 8 s (a minute in service) so that the reset is seen; each half of the
    # test within one window (at 1 s, a loaded machine's stall rolled the window between
    # two checks).
    quotas, redis = _quotas(redis_server.url, objects_written_per_minute=5, window_ms=8000)
    try:
        await _early_in_a_window(redis, 8000, margin=6.0)
        await quotas.charge_objects_written(3, "alice")
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.charge_objects_written(3, "alice")  # 6 > 5: none of the 3 counted
        assert caught.value.metadata == {"quota": "objects_written_per_minute", "limit": "5"}
        wait = caught.value.retry_after
        assert wait is not None and 0 < wait <= 8
        await quotas.charge_objects_written(2, "alice")  # the 2 left fit
        await quotas.charge_objects_written(5, "bob")  # another tenant's 5 are his own
        await asyncio.sleep(wait + 0.05)  # the window RetryInfo named has ended
        await quotas.charge_objects_written(5, "alice")
        with pytest.raises(QuotaExceeded):
            await quotas.charge_objects_written(1, "alice")
    finally:
        await redis.aclose()


async def test_a_write_larger_than_the_objects_quota_is_refused_without_asking_redis(
    redis_server: RedisProcess,
) -> None:
    quotas, redis = _quotas(redis_server.url, objects_written_per_minute=5)
    try:
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.charge_objects_written(6, "alice")
        assert caught.value.retry_after is None  # waiting would not help: no RetryInfo
        assert len(caught.value.to_proto().details) == 1  # ErrorInfo alone
        await quotas.charge_objects_written(5, "alice")  # nothing was counted
    finally:
        await redis.aclose()


async def test_a_write_over_the_objects_quota_gives_back_its_bytes(
    redis_server: RedisProcess,
) -> None:
    """``charge_written`` counts the bytes first; when the objects then do not fit, the
    write is refused as over the objects quota and its bytes are given back (before, the
    give-back read a ``_window_ms`` that no longer existed: AttributeError, INTERNAL to
    the caller, and the bytes stayed counted)."""
    # An 8 s window, the checks within one (as in the test above).
    quotas, redis = _quotas(
        redis_server.url,
        objects_written_per_minute=5,
        bytes_written_per_minute=1000,
        window_ms=8000,
    )
    try:
        await _early_in_a_window(redis, 8000, margin=6.0)
        await quotas.charge_written(3, 400, "alice")
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.charge_written(3, 400, "alice")  # 6 objects > 5
        assert caught.value.metadata == {"quota": "objects_written_per_minute", "limit": "5"}
        # The refused write's 400 bytes were given back: 400 + 600 fit the 1000.
        await quotas.charge_written(2, 600, "alice")
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.charge_written(0, 1, "alice")
        assert caught.value.metadata["quota"] == "bytes_written_per_minute"
    finally:
        await redis.aclose()


async def test_keys_share_one_cluster_slot_per_tenant(redis_server: RedisProcess) -> None:
    quotas, redis = _quotas(
        redis_server.url, concurrent_calls=5, llm_calls_per_minute=5, objects_written_per_minute=5
    )
    try:
        _as_tenant("dave")
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            await quotas.charge_llm()
            await quotas.charge_objects_written(2, "dave")
            direct = connect(redis_server.url, cluster=False, socket_timeout=1, connect_timeout=1)
            try:
                keys = sorted([k async for k in direct.scan_iter(match="test:quota:*")])
            finally:
                await direct.aclose()
        tags = {k.split(b"{")[1].split(b"}")[0] for k in keys}
        assert len(keys) == 3 and len(tags) == 1, keys
    finally:
        await redis.aclose()


async def test_redis_down_lets_calls_through(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    quotas, redis = _quotas(
        f"redis://127.0.0.1:{port}/0",
        concurrent_calls=1,
        llm_calls_per_minute=1,
        objects_written_per_minute=1,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="gensearch.quotas"):
            for _ in range(3):
                async with quotas.admit("/x/Y", _Context(1)):  # type: ignore[arg-type]
                    await quotas.charge_llm()
                    await quotas.charge_objects_written(1, "alice")
    finally:
        await redis.aclose()
    # One line for the outage, not one per failed script, naming the Redis node.
    assert [r.getMessage() for r in caplog.records if r.name == "gensearch.quotas"] == [
        f"quotas not checked, Redis failed: ConnectionError at node 127.0.0.1:{port}"
    ]


async def test_quotas_on_a_redis_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        quotas, redis = _quotas(
            cluster.url,
            cluster=True,
            concurrent_calls=1,
            llm_calls_per_minute=2,
            objects_written_per_minute=2,
        )
        try:
            await _early_in_a_window(redis, 60_000, margin=20.0)
            for user in ("erin", "frank", "grace"):  # hash tags spread them over the nodes
                _as_tenant(user)
                async with quotas.admit("/x/Y", _Context(5)):  # type: ignore[arg-type]
                    await quotas.charge_llm()
                    await quotas.charge_llm()
                    with pytest.raises(QuotaExceeded):
                        await quotas.charge_llm()
                    await quotas.charge_objects_written(2, user)
                    with pytest.raises(QuotaExceeded):
                        await quotas.charge_objects_written(1, user)
                    with pytest.raises(QuotaExceeded):
                        async with quotas.admit("/x/Y", _Context(5)):  # type: ignore[arg-type]
                            pass
        finally:
            await redis.aclose()
    finally:
        cluster.stop()


async def test_a_cluster_node_given_as_a_standalone_redis_is_named_as_a_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a throttled WARNING "Redis failed: MovedError", read as an outage, while the
    # quotas of every tenant on another node's slots went unchecked for good.
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        quotas, redis = _quotas(cluster.url, cluster=False, llm_calls_per_minute=2)
        try:
            with caplog.at_level(logging.WARNING, logger="gensearch.quotas"):
                for user in ("erin", "frank", "grace", "heidi", "ivan"):
                    _as_tenant(user)
                    await quotas.charge_llm()  # fails open, as for any Redis failure
        finally:
            await redis.aclose()
    finally:
        cluster.stop()
    lines = [r for r in caplog.records if r.name == "gensearch.quotas"]
    assert [r.levelno for r in lines] == [logging.ERROR]
    assert "_REDIS_CLUSTER=true" in lines[0].getMessage()


class _LosesACancelInARenewal(Quotas):
    """Loses the first cancel that lands while a lease is renewed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renewal = LosesTheFirstCancel()

    async def _run(self, script: Any, key: str, *args: Any) -> Any:
        if script is self._renew:
            await self.renewal.reply()
        return await super()._run(script, key, *args)


async def test_a_renewal_whose_cancel_is_lost_stops_when_its_call_ends(
    redis_server: RedisProcess,
) -> None:
    # Before, the renewal renewed a lease every third of it for as long as the gateway ran.
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=1)
    quotas = _LosesACancelInARenewal(
        redis, key_prefix="test", concurrent_calls=1, llm_calls_per_minute=0, lease=0.3,
        lease_slack=0.0,
    )  # fmt: skip
    try:
        _as_tenant("judy")
        async with quotas.admit("/x/Y", _Context(None)):  # type: ignore[arg-type]
            await asyncio.wait_for(quotas.renewal.started.wait(), 10)
        assert quotas.renewal.lost
        renewals = quotas.renewal.calls
        await asyncio.sleep(1.0)  # ten periods of renewal
        assert quotas.renewal.calls == renewals
    finally:
        await redis.aclose()


async def test_a_redis_outage_is_one_line_its_end_another(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis back is a line too (before, none); a second outage within 30 s of the first's
    warning adds nothing (a flapping Redis is two lines every 30 s at most)."""
    quotas, redis = _quotas(redis_server.url, llm_calls_per_minute=1000)
    node = f"{redis_server.host}:{redis_server.port}"  # the lines name Redis's node
    _as_tenant("dave")
    caplog.set_level(logging.INFO, logger="gensearch.quotas")

    async def charge(_: str) -> None:
        await quotas.charge_llm()  # while Redis is down, unchecked: the call goes through

    try:
        await quotas.charge_llm()
        await two_outages_log(
            redis_server,
            charge,
            caplog,
            "gensearch.quotas",
            [
                f"quotas not checked, Redis failed: ConnectionError at node {node}",
                f"quotas checked again: Redis answers (node {node})",
            ],
        )
    finally:
        await redis.aclose()


async def test_one_dead_cluster_node_is_one_line_and_its_end_another(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """One Redis Cluster master down: the tenants of the other masters are checked all
    along, and that is not the dead master's recovery. Before, every such check logged
    'quotas checked again' and the dead master's next failure the warning again (every
    30 s), naming no node."""
    quotas, redis = _quotas(own_cluster.url, cluster=True, llm_calls_per_minute=1000)
    victim = own_cluster.nodes[2]
    address = f"127.0.0.1:{victim.port}"

    def node(tenant: str) -> object:
        # The key layout of docs/operations.md: P:quota:{t:<sha256 of the tenant>}:<quota>
        digest = hashlib.sha256(tenant.encode()).hexdigest()[:20]
        return own_cluster.node_for(f"test:quota:{{t:{digest}}}:llm")

    tenants = [f"tenant-{n}" for n in range(1000)]
    dead = next(t for t in tenants if node(t) is victim)
    alive = next(t for t in tenants if node(t) is not victim)

    def lines(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "gensearch.quotas" and r.levelno == level]

    caplog.set_level(logging.INFO, logger="gensearch.quotas")
    try:
        for tenant in (dead, alive):  # the script loaded on every master while all are up
            await quotas.charge_llm(tenant)
        own_cluster.kill(victim)
        for _ in range(4):
            await quotas.charge_llm(dead)  # unchecked: goes through
            await quotas.charge_llm(alive)
        assert [r.getMessage() for r in lines(logging.INFO)] == []
        warned = [r.getMessage() for r in lines(logging.WARNING)]
        assert warned == [f"quotas not checked, Redis failed: ConnectionError at node {address}"]

        await own_cluster.restart(victim)
        await quotas.charge_llm(alive)
        assert [r.getMessage() for r in lines(logging.INFO)] == []
        for _ in range(600):  # until the client finds the node again (no timing asserted)
            await quotas.charge_llm(dead)
            if lines(logging.INFO):
                break
            await asyncio.sleep(0.1)
        assert [r.getMessage() for r in lines(logging.INFO)] == [
            f"quotas checked again: Redis answers (node {address})"
        ]
        assert len(lines(logging.WARNING)) == 1
    finally:
        await redis.aclose()


async def test_a_refused_write_never_gives_bytes_back_to_the_next_window(
    redis_server: RedisProcess,
) -> None:
    """A write over the objects quota counts nothing, its bytes included, in one script.
    Before, its bytes were counted and then given back by a second script: when the window
    ended between the two, the give-back came off the next window's count, and the tenant
    could write that many bytes past its quota there. A relay holds the give-back until
    the next window has begun and the tenant has used its whole bytes quota in it."""
    window_ms = 4000
    limits = {
        "objects_written_per_minute": 5,
        "bytes_written_per_minute": 1000,
        "window_ms": window_ms,
    }
    quotas, redis = _quotas(redis_server.url, **limits)
    next_window, through = asyncio.Event(), asyncio.Event()

    async def before(args: list[bytes]) -> None:
        # quota_charge's ARGV: limit, window_ms, count, made: a negative count gives back.
        if args[:1] == [b"EVALSHA"] and args[-2].startswith(b"-"):
            through.set()
            await next_window.wait()

    async def window_start() -> int:
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        return now_ms - now_ms % window_ms

    try:
        async with relaying(redis_server.url, before) as url:
            relayed, relayed_redis = _quotas(url, **limits)
            try:
                await _early_in_a_window(redis, window_ms, margin=3.0)
                first = await window_start()
                await quotas.charge_objects_written(5, "alice")  # the objects quota is full
                refused = asyncio.create_task(relayed.charge_written(1, 400, "alice"))
                # Refused at once (one script), or its give-back held by the relay.
                held = asyncio.create_task(through.wait())
                await asyncio.wait([refused, held], return_when=asyncio.FIRST_COMPLETED)
                held.cancel()
                end = asyncio.get_running_loop().time() + 20
                while await window_start() == first:  # polled, bounded
                    assert asyncio.get_running_loop().time() < end
                    await asyncio.sleep(0.05)
                await quotas.charge_written(0, 1000, "alice")  # the new window's whole bytes
                next_window.set()
                with pytest.raises(QuotaExceeded) as caught:
                    await refused
                assert caught.value.metadata["quota"] == "objects_written_per_minute"
                # Nothing of the refused write came off this window's 1000 bytes.
                with pytest.raises(QuotaExceeded) as caught:
                    await quotas.charge_written(0, 400, "alice")
                assert caught.value.metadata["quota"] == "bytes_written_per_minute"
            finally:
                await relayed_redis.aclose()
    finally:
        await redis.aclose()
