"""Stopping background tasks for sure.

On Python 3.11 one ``task.cancel()`` can be lost: when the cancellation lands just as an
``asyncio.wait_for`` the task awaits has its inner awaitable done, ``wait_for`` returns the
inner result and the ``CancelledError`` is gone (CPython gh-86296, fixed in 3.12).
redis-py sends every command through ``wait_for`` when a socket timeout is set, so a
background loop that talks to Redis (the search indexer's retry loop, a queue worker) can
miss the cancel that should end it and run on, while whoever awaits it waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# How long a cancelled task has to end before it is cancelled again.
RECANCEL_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[Any], recancel: float = RECANCEL_SECONDS) -> None:
    """Cancels ``task`` and waits until it ends, cancelling it again every ``recancel``
    seconds while it runs on (its first cancel lost, see above). An exception the task
    ended with is raised here; its cancellation is not."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
