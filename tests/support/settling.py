"""A stop that must wait for a slot release still on its way: the release held (at a Redis
relay) until the stop is settling, then let go. A stop that closes its Redis client without
waiting ends with the release still held, and the slot it frees still taken."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.support.waiting import until

# Logged just before a close waits for the releases on their way (services/common/releases.py).
SETTLING = "waiting for releases of Redis slots before closing"


def settling(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether a close has begun its wait for the releases still on their way."""
    return any(
        r.name == "gensearch.releases" and r.getMessage() == SETTLING for r in caplog.records
    )


async def slots_left_after_settling(
    stopping: asyncio.Task[Any],
    caplog: pytest.LogCaptureFixture,
    let_release: asyncio.Event,
    slots_taken: Callable[[], Awaitable[int]],
) -> int:
    """The slots still taken once ``stopping`` ended, its held release let go only while
    the stop waits for it (``caplog`` must capture INFO of ``gensearch.releases``)."""

    async def settling_or_ended() -> bool:
        return stopping.done() or settling(caplog)

    await until(settling_or_ended, "settled the releases or ended the stop", 30)
    # A stop that closed the Redis client without waiting has ended already, its release
    # still held.
    if not stopping.done():
        let_release.set()
    await asyncio.wait_for(stopping, 30)
    taken = await slots_taken()
    let_release.set()
    return taken
