"""A semaphore whose waiters take turns by tenant.

``asyncio.Semaphore`` serves its waiters first come, first served: when one tenant's
calls fill its slots and queue behind them, another tenant's one call waits for that whole
queue. Here each tenant's waiters queue on their own (first come, first served among
themselves), and a freed slot goes to the next tenant with waiters, in turn: a tenant's
call waits for at most one freed slot per other waiting tenant, however many calls those
have queued. A slot is free to take at once only when nobody waits.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class FairSlots:
    def __init__(self, limit: int) -> None:
        self._free = limit
        # Tenant -> its waiters; the first key is the tenant served next.
        self._waiters: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def locked(self) -> bool:
        """Whether ``acquire`` would wait."""
        return self._free == 0 or bool(self._waiters)

    async def acquire(self, tenant: str) -> None:
        if not self.locked():
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tenant, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            else:
                self._forget(tenant, waiter)
            raise

    def release(self) -> None:
        """Hands the slot to the next tenant's first waiter, or frees it."""
        while self._waiters:
            tenant, queue = next(iter(self._waiters.items()))
            waiter = queue.popleft()
            if queue:
                self._waiters.move_to_end(tenant)  # its next waiter waits for the others
            else:
                del self._waiters[tenant]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

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
