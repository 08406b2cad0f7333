"""What asyncio logs about a task, logged in the context the task was created in.

A caller's key is hidden only in its own call's context (``logs.hide_in_this_call``). But
asyncio writes some lines about a task outside it: "Task exception was never retrieved"
comes from the loop's exception handler when the garbage collector frees the task, in
whatever context is current then, so a task a call started that failed quoting the
caller's key was logged with the key in clear. Python 3.12 has ``Task.get_context()``;
on 3.11 (ours) no public call gives a task's context. So the loop of each service makes
its tasks with a factory (``loop.set_task_factory``, public) that keeps the context each
task runs in, and its exception handler logs a line about such a task inside that
context: the formatter then hides the keys of the call that started it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from contextvars import Context, copy_context
from typing import Any


class _ContextTask(asyncio.Task[Any]):
    """A task that remembers the context it runs in (3.11 has no ``get_context``), set by
    ``_factory`` once made. No ``__init__`` of its own: one in Python, calling the C one,
    cost about as much again as the factory's other work, on every task."""

    __slots__ = ("created_in",)
    created_in: Context


# asyncio names a task by its class in its lines ("Task exception was never retrieved")
# and its repr: the same words as before, for the logs' readers and their searches.
_ContextTask.__name__ = _ContextTask.__qualname__ = "Task"


def _factory(
    loop: asyncio.AbstractEventLoop,
    coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
    context: Context | None = None,
    **more: Any,
) -> asyncio.Future[Any]:
    # What asyncio.Task does without a context: a copy of the current one.
    if context is None:
        context = copy_context()
    # ``more``: what later Pythons pass (3.13: name=, eager_start=).
    task = _ContextTask(coro, loop=loop, context=context, **more)
    task.created_in = context
    return task


def log_tasks_in_their_context(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Installs the factory and the exception handler on ``loop`` (the running one by
    default); the handler set before is kept, called in the task's context. False when the
    loop already has a task factory (someone else's): left as it is."""
    loop = loop or asyncio.get_running_loop()
    if loop.get_task_factory() is not None:
        return loop.get_task_factory() is _factory
    loop.set_task_factory(_factory)
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task = context.get("task") or context.get("future")
        # None for a task still being made: an eager first step (3.12+) runs inside the
        # Task's __init__, in its own context already, before the factory sets it.
        created_in = getattr(task, "created_in", None) if isinstance(task, _ContextTask) else None
        if created_in is None:
            _pass_on(previous, loop, context)
            return
        entered = False

        def inside() -> None:
            nonlocal entered
            entered = True
            _pass_on(previous, loop, context)

        try:
            created_in.run(inside)
        except RuntimeError:
            if entered:
                raise  # the handler's own error: the loop reports it
            # Its context is entered already (the task's own step, another task sharing
            # the context, a loop that runs handlers in it): the line is written there.
            _pass_on(previous, loop, context)

    loop.set_exception_handler(handle)
    return True


def _pass_on(previous: Any, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if previous is not None:
        previous(loop, context)
    else:
        loop.default_exception_handler(context)
