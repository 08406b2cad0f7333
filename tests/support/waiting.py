"""Waiting for a condition a test cannot be told of: polled, bounded generously (a busy
machine is slow, never wrong), and named in the failure when it never comes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 20) -> None:
    """Returns once ``check()`` is truthy; AssertionError("never <what>") after ``timeout``."""
    end = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < end:
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {what}")
