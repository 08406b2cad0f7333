"""The gateway's collection cache is bounded per tenant, least recently used first: one
tenant reading many collections (or as many users) never empties another tenant's entries.
It was emptied whole once it held more than 1,024 entries, whoever filled it."""

from __future__ import annotations

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.auth import Identity, Role
from services.gateway.catalog import Catalog
from services.gateway.clients import Caller


class CountingRetrieval:
    """Answers GetCollection with a collection of the name asked, counting the calls per
    (tenant, name): the signal that the cache did not have it."""

    def __init__(self) -> None:
        self.reads: dict[tuple[str, str], int] = {}

    async def get_collection(
        self, name: str, caller: Caller, timeout: float | None
    ) -> ret_pb.Collection:
        key = (caller.tenant, name)
        self.reads[key] = self.reads.get(key, 0) + 1
        return ret_pb.Collection(name=name)


def caller(tenant: str, user: str = "alice") -> Caller:
    return Caller(who=Identity(user, tenant, Role.READER), identity=())


async def test_one_tenants_churn_leaves_another_tenants_entries() -> None:
    retrieval = CountingRetrieval()
    catalog = Catalog(retrieval, ttl=3600)  # type: ignore[arg-type]
    await catalog.get("Books", caller("acme"), None)
    for i in range(1100):  # more than the default 1,024 entries per tenant
        await catalog.get(f"C{i}", caller("globex", f"user{i % 7}"), None)
    await catalog.get("Books", caller("acme"), None)
    assert retrieval.reads[("acme", "Books")] == 1  # still kept: not read again
    # globex's own oldest entry went, its newest stayed.
    await catalog.get("C0", caller("globex", "user0"), None)
    await catalog.get("C1099", caller("globex", f"user{1099 % 7}"), None)
    assert retrieval.reads[("globex", "C0")] == 2
    assert retrieval.reads[("globex", "C1099")] == 1


async def test_a_tenants_recently_used_entry_outlives_its_older_ones() -> None:
    retrieval = CountingRetrieval()
    catalog = Catalog(retrieval, ttl=3600, entries_per_tenant=2)  # type: ignore[arg-type]
    for name in ("A", "B"):
        await catalog.get(name, caller("acme"), None)
    await catalog.get("A", caller("acme"), None)  # A used last: B is the oldest now
    await catalog.get("C", caller("acme"), None)  # B goes
    await catalog.get("A", caller("acme"), None)
    await catalog.get("B", caller("acme"), None)
    assert retrieval.reads[("acme", "A")] == 1
    assert retrieval.reads[("acme", "B")] == 2
