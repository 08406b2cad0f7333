"""A Redis that goes down and comes back, twice: the steps of the tests of what a service
logs for an outage and for its end (one warning, one line when Redis answers again, and
nothing more for a second outage within 30 s of the first warning)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from services.devlaunch.redis_server import RedisProcess

CALLS_WHILE_DOWN = 3


async def two_outages_log(
    server: RedisProcess,
    call: Callable[[str], Awaitable[object]],
    caplog: pytest.LogCaptureFixture,
    logger: str,
    lines: list[str],
) -> None:
    """Stops ``server``, makes CALLS_WHILE_DOWN calls (``call("down <outage> <i>")``),
    starts it again and makes one more (``call("back <outage>")``), twice; after each
    outage, what ``logger`` logged is ``lines`` (caplog set to capture it): the second
    outage, within 30 s of the first's warning, adds nothing. The names let a call that
    records something keep each call apart."""
    for outage in (1, 2):
        await server.stop()
        for i in range(CALLS_WHILE_DOWN):
            await call(f"down {outage} {i}")
        await server.start()
        await call(f"back {outage}")
        logged = [r.getMessage() for r in caplog.records if r.name == logger]
        assert logged == lines, (outage, logged)
