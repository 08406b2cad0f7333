"""A semaphore whose waiters take turns by tenant, each tenant holding at most its share.

``asyncio.Semaphore`` serves its waiters first come, first served: when one tenant's
calls fill its slots and queue behind them, another tenant's one call waits for that whole
queue. Here each tenant's waiters queue on their own (first come, first served among
themselves), and a freed slot goes to the next tenant with waiters, in turn: a tenant's
call waits for at most one freed slot per other waiting tenant, however many calls those
have queued.

Turns alone still let one tenant hold every slot: its calls took them while nobody else
waited, and another tenant's call then waited for one of them to end (an LLM call of a
minute or more). ``per_tenant`` bounds the slots one tenant holds at once: past it, its
calls wait in its queue even while slots are free, and those free slots are there for the
other tenants' calls at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class FairSlots:
    def __init__(self, limit: int, per_tenant: int = 0) -> None:
        """``limit`` slots in all; ``per_tenant`` of them at most one tenant's (0: no bound
        but ``limit``)."""
        self._limit = limit
        self._free = limit
        self._per_tenant = min(per_tenant, limit) if per_tenant else limit
        # Tenant -> the slots it holds (absent: none).
        self._held: dict[str, int] = {}
        # Tenant -> its waiters; the first key is the tenant served next. Invariant: while
        # a slot is free, every waiting tenant holds its whole share.
        self._waiters: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def idle(self) -> bool:
        """No slot held and nobody waiting: the owner may drop these slots."""
        return self._free == self._limit and not self._waiters

    def locked(self, tenant: str) -> bool:
        """Whether ``acquire(tenant)`` would wait."""
        return (
            self._free == 0
            or tenant in self._waiters
            or self._held.get(tenant, 0) >= self._per_tenant
        )

    def at_share(self, tenant: str) -> bool:
        """Whether ``tenant`` holds its whole share, less than every slot: its calls wait
        for its own to end."""
        return self._per_tenant < self._limit and self._held.get(tenant, 0) >= self._per_tenant

    async def acquire(self, tenant: str) -> None:
        if not self.locked(tenant):
            self._take(tenant)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tenant, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(tenant)  # handed a slot as it was cancelled: pass it on
            else:
                self._forget(tenant, waiter)
            raise

    def release(self, tenant: str) -> None:
        """Gives back a slot ``tenant`` held, and hands it to the first waiter of the next
        tenant in turn that is under its share."""
        held = self._held.get(tenant, 0) - 1
        if held > 0:
            self._held[tenant] = held
        else:
            self._held.pop(tenant, None)
        self._free += 1
        self._hand_on()

    def _take(self, tenant: str) -> None:
        self._free -= 1
        self._held[tenant] = self._held.get(tenant, 0) + 1

    def _hand_on(self) -> None:
        while self._free:
            tenant = next(
                (t for t in self._waiters if self._held.get(t, 0) < self._per_tenant), None
            )
            if tenant is None:
                return  # every waiting tenant holds its share: the slot stays free
            queue = self._waiters[tenant]
            waiter = queue.popleft()
            if queue:
                self._waiters.move_to_end(tenant)  # its next waiter waits for the others
            else:
                del self._waiters[tenant]
            if not waiter.done():
                self._take(tenant)
                waiter.set_result(None)

    def _forget(self, tenant: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiters.get(tenant)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._waiters[tenant]
