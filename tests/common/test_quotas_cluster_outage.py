"""Quotas on a real three-master Redis Cluster whose master dies (``kill -9``) and comes
back: the tenants of its slots are let through while it is down (quotas fail open,
docs/operations.md#quotas), every other tenant is still counted, and once it is back its
tenants are counted again, their counts intact (AOF, fsync always), with no new client."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.quotas import QuotaExceeded
from tests.common.test_quotas import _as_tenant, _early_in_a_window, _quotas
from tests.support.redis_cluster import LocalCluster, until


def _tag(tenant: str) -> str:
    # The quotas' hash tag of a tenant (services/common/quotas.py, Quotas._key).
    return "{t:" + hashlib.sha256(tenant.encode()).hexdigest()[:20] + "}"


@pytest.mark.slow
async def test_a_dead_master_lets_only_its_tenants_through_until_it_returns(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        victim = cluster.nodes[1]
        tenants = (f"t{n}" for n in range(10_000))
        doomed = next(t for t in tenants if cluster.node_for(_tag(t)) is victim)
        spared = next(t for t in tenants if cluster.node_for(_tag(t)) is not victim)
        quotas, redis = _quotas(cluster.url, cluster=True, timeout=2, llm_calls_per_minute=2)
        try:
            await _early_in_a_window(redis, 60_000, margin=15.0)
            for tenant in (doomed, spared):
                _as_tenant(tenant)
                await quotas.charge_llm()
                await quotas.charge_llm()
                with pytest.raises(QuotaExceeded):
                    await quotas.charge_llm()

            cluster.kill(victim)
            _as_tenant(doomed)
            for _ in range(3):  # Redis failed for this tenant: let through
                await quotas.charge_llm()
            _as_tenant(spared)
            with pytest.raises(QuotaExceeded):  # still counted on its own master
                await quotas.charge_llm()

            await cluster.restart(victim)
            async with victim.client() as direct:  # the count from before the kill is back
                keys = [k async for k in direct.scan_iter(match=f"*{_tag(doomed)}*")]
                assert [await direct.hget(k, "n") for k in keys] == [b"2"]  # type: ignore[misc]
            _as_tenant(doomed)

            async def refused() -> bool:
                try:
                    await quotas.charge_llm()
                except QuotaExceeded:
                    return True
                return False

            # The same client finds the master again: the first call that reaches it is
            # refused (two counted already).
            await until(refused, 20, "the restarted master's tenant was never counted again")
        finally:
            await redis.aclose()
    finally:
        cluster.stop()
