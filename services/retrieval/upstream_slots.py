"""Requests in flight to each OpenAI-compatible upstream of the retrieval service (an
embeddings endpoint, a rerank provider), with a share per tenant.

Nothing bounded them: one tenant's import flood (every ImportObjects batch an embeddings
request, many streams at once) filled the endpoint's own concurrency, so the endpoint
answered everyone 429 (or queued them), and another tenant's Search waited behind that
flood for its one query vector, or failed RESOURCE_EXHAUSTED. Here each endpoint (its base
URL) takes at most ``UPSTREAM_MAX_IN_FLIGHT`` requests of this replica at once, of one tenant
(``current_tenant()``, the caller of the RPC served) at most
``UPSTREAM_MAX_IN_FLIGHT_PER_TENANT``; past them a request waits its tenant's turn
(``services.common.fair_slots``, the slots the gateway's generation calls take), within
its deadline. A slot is held for one attempt (one HTTP exchange), never across a retry's
pause. Per replica: replicas do not share counts, as generation's provider slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.common.auth import current_tenant
from services.common.errors import ServiceError
from services.common.fair_slots import FairSlots

LIMIT_SETTING = "GENSEARCH_RETRIEVAL_UPSTREAM_MAX_IN_FLIGHT"
SHARE_SETTING = "GENSEARCH_RETRIEVAL_UPSTREAM_MAX_IN_FLIGHT_PER_TENANT"


class Slot:
    """One request's slot at an endpoint; ``release`` when its attempt ends (again: no-op)."""

    __slots__ = ("_slots", "_tenant")

    def __init__(self, slots: FairSlots | None, tenant: str) -> None:
        self._slots = slots
        self._tenant = tenant

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release(self._tenant)
            self._slots = None


class UpstreamSlots:
    """The slots of every endpoint one upstream kind (embeddings, rerank) calls."""

    # Idle endpoints are forgotten past this many (callers' collections name their own).
    MAX_IDLE = 1000

    def __init__(self, limit: int, per_tenant: int) -> None:
        """``limit`` requests in flight per endpoint, ``per_tenant`` of one tenant (0: no
        share but ``limit``)."""
        self.limit = limit
        self.per_tenant = min(per_tenant or limit, limit)
        self._by_endpoint: dict[str, FairSlots] = {}

    async def take(
        self, endpoint: str, expires_at: float, busy: Callable[[str, int], ServiceError]
    ) -> Slot:
        """A slot at ``endpoint`` for the current tenant, waiting for one until the loop
        time ``expires_at``; then ``busy(setting, limit)`` is raised (the setting that
        held the request: the tenant's share, else the endpoint's limit)."""
        slots = self._slots(endpoint)
        tenant = current_tenant()
        # Which bound holds it, as it starts waiting (the share wins: the other tenants'
        # requests are not this tenant's to wait for).
        setting, limit = (
            (SHARE_SETTING, self.per_tenant)
            if slots.at_share(tenant)
            else (LIMIT_SETTING, self.limit)
        )
        try:
            async with asyncio.timeout_at(expires_at):
                await slots.acquire(tenant)
        except TimeoutError:
            raise busy(setting, limit) from None
        return Slot(slots, tenant)

    def _slots(self, endpoint: str) -> FairSlots:
        slots = self._by_endpoint.get(endpoint)
        if slots is None:
            if len(self._by_endpoint) >= self.MAX_IDLE:
                self._by_endpoint = {e: s for e, s in self._by_endpoint.items() if not s.idle}
            slots = self._by_endpoint[endpoint] = FairSlots(self.limit, self.per_tenant)
        return slots
