"""asyncio's "Task exception was never retrieved", logged as the garbage collector frees a
task, outside any call, hides the key of the call that started the task
(services/common/task_context.py)."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections.abc import Iterator
from contextvars import copy_context

import pytest

from services.common.logs import hide_in_this_call, json_formatter
from services.common.task_context import log_tasks_in_their_context

# Shaped like no key (those are hidden everywhere): only its call's context hides it.
KEY = "tangerine-walrus"


@pytest.fixture
def asyncio_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_formatter("test"))
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)


async def _fails_quoting_the_key() -> None:
    raise RuntimeError(f"the provider refused the key {KEY}")


async def test_an_unretrieved_task_exception_is_logged_with_the_callers_key_hidden(
    asyncio_lines: io.StringIO,
) -> None:
    loop = asyncio.get_running_loop()
    handler_before = loop.get_exception_handler()
    assert log_tasks_in_their_context(loop)
    try:

        def in_the_call() -> asyncio.Task[None]:
            hide_in_this_call(KEY)
            return loop.create_task(_fails_quoting_the_key())

        task = copy_context().run(in_the_call)  # the call's context, not this test's
        await asyncio.wait([task])
        del task  # never awaited, its exception never retrieved
        gc.collect()
    finally:
        loop.set_task_factory(None)
        loop.set_exception_handler(handler_before)
    line = asyncio_lines.getvalue()
    assert "Task exception was never retrieved" in line
    assert "the provider refused the key" in line
    assert KEY not in line


async def test_a_line_about_a_task_from_its_own_step_is_logged() -> None:
    """The loop's handler called for a task while that task runs (its context entered
    already) logs the line as it is: entering the context again raised RuntimeError, and
    the loop reported its handler's failure instead of the line."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    try:
        assert log_tasks_in_their_context(loop)

        async def own_step() -> None:
            task = asyncio.current_task()
            loop.call_exception_handler({"message": "about me", "task": task})

        await asyncio.create_task(own_step())
    finally:
        loop.set_task_factory(None)
        loop.set_exception_handler(previous)
    assert seen == ["about me"]


async def test_a_line_about_a_task_whose_context_another_task_runs_in_is_logged(
    asyncio_lines: io.StringIO,
) -> None:
    """Two tasks made with one context: the failed one freed while the other runs (the
    context entered). Entering it again raised RuntimeError: the loop wrote "Unhandled
    error in exception handler" and the line outside the call, its key in clear."""
    loop = asyncio.get_running_loop()
    handler_before = loop.get_exception_handler()
    assert log_tasks_in_their_context(loop)
    try:
        shared = copy_context()
        shared.run(hide_in_this_call, KEY)
        failed = loop.create_task(_fails_quoting_the_key(), context=shared)
        await asyncio.wait([failed])

        async def frees_it() -> None:
            nonlocal failed
            del failed  # never awaited, its exception never retrieved
            gc.collect()

        await loop.create_task(frees_it(), context=shared)
    finally:
        loop.set_task_factory(None)
        loop.set_exception_handler(handler_before)
    line = asyncio_lines.getvalue()
    assert "Task exception was never retrieved" in line
    assert "Unhandled error" not in line
    assert KEY not in line
