"""Counting the tasks a piece of code makes: the loop's task factory (public) wrapped for
the block, whatever factory the loop had (a service's, task_context.py) kept under it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def tasks_made() -> Iterator[list[str]]:
    """The running loop's tasks made in the block, by their coroutine's qualified name."""
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    made: list[str] = []

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made.append(getattr(coro, "__qualname__", type(coro).__name__))
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        yield made
    finally:
        loop.set_task_factory(factory)
