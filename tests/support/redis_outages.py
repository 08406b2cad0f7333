"""A Redis that goes down and comes back, twice: the steps of the tests of what a service
logs for an outage and for its end (one warning, one line when Redis answers again, and
nothing more for a second outage within 30 s of the first warning)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from services.devlaunch.redis_server import RedisProcess

CALLS_WHILE_DOWN = 3


async def two_outages(
    server: RedisProcess, call: Callable[[str], Awaitable[object]]
) -> AsyncIterator[int]:
    """Stops ``server``, makes CALLS_WHILE_DOWN calls (``call("down <outage> <i>")``),
    starts it again and makes one more (``call("back <outage>")``), twice; yields the
    outage's number (1, then 2) after each, for the test to read what was logged. The
    names let a call that records something keep each call apart."""
    for outage in (1, 2):
        await server.stop()
        for i in range(CALLS_WHILE_DOWN):
            await call(f"down {outage} {i}")
        await server.start()
        await call(f"back {outage}")
        yield outage
