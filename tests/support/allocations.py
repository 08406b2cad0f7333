"""What a piece of a test leaves allocated: bytes still held once it is over, which a
reference cycle would keep until the next cyclic garbage collection."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable


async def bytes_kept(run: Callable[[], Awaitable[None]]) -> int:
    """The bytes allocated while ``run`` ran (and a moment after, for the server's side of
    its calls to end) that are still held, the cyclic collector off: what only a cycle
    holds stays counted."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await run()
        await asyncio.sleep(0.2)  # the server's calls are over
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
