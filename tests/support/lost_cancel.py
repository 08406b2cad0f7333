"""A reply that loses the first cancel landing while it is on its way, as
``asyncio.wait_for`` can on Python 3.11 (CPython gh-86296): redis-py sends every command
through it, so a loop's cancel can be swallowed (services/common/tasks.py)."""

from __future__ import annotations

import asyncio


class LosesTheFirstCancel:
    """Counts the waits, signals the first, and swallows one cancel among them."""

    def __init__(self) -> None:
        self.lost = False
        self.calls = 0
        self.started = asyncio.Event()

    async def reply(self) -> None:
        self.calls += 1
        self.started.set()
        try:
            await asyncio.sleep(0.2)  # the reply on its way
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost = True  # as wait_for loses it: the reply came in all the same
