"""Run one job per hit concurrently (bounded when asked), with a budget, and never fail as
a whole.

Each job ends as an ``Outcome`` carrying its value or its own ``HitError``. When the
budget runs out, finished jobs keep their values and the rest are cancelled and get
DEADLINE_EXCEEDED. The streaming form yields outcomes in completion order, interleaved
with the text deltas jobs emit while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from services.gateway.errors import HitError, deadline_exceeded

T = TypeVar("T")


class Emit(Protocol):
    """Hands a job's text delta on; ``restart``: the job's deltas so far are void."""

    def __call__(self, text: str, restart: bool = False) -> None: ...


Job = Callable[[Emit], Awaitable[T]]


@dataclass(frozen=True)
class Outcome(Generic[T]):
    index: int
    value: T | None = None
    error: HitError | None = None


@dataclass(frozen=True)
class Delta:
    index: int
    text: str
    restart: bool = False


async def fan_out_stream(
    jobs: Mapping[int, Job[T]],
    *,
    max_concurrency: int | None,
    timeout: float | None,
    unbounded: Collection[int] = (),
) -> AsyncGenerator[Delta | Outcome[T], None]:
    """Yield deltas and outcomes as they happen; exactly one outcome per job.

    Jobs listed in ``unbounded`` (the grouped call) do not take a concurrency slot;
    ``max_concurrency`` None: no job waits for a slot (the generation service keeps to
    the provider's limits).
    """
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
    slots = None if max_concurrency is None else asyncio.Semaphore(max_concurrency)
    events: asyncio.Queue[Delta | Outcome[T]] = asyncio.Queue()

    async def run(index: int, job: Job[T]) -> None:
        def emit(text: str, restart: bool = False) -> None:
            if text or restart:
                events.put_nowait(Delta(index, text, restart))

        try:
            if slots is None or index in unbounded:
                value = await job(emit)
            else:
                async with slots:
                    value = await job(emit)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            events.put_nowait(Outcome(index, error=HitError.of(err)))
        else:
            events.put_nowait(Outcome(index, value=value))

    tasks = {index: asyncio.create_task(run(index, job)) for index, job in jobs.items()}
    pending = set(tasks)
    try:
        while pending:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                # A timer, not asyncio.wait_for: on Python 3.11 that wraps each wait in a
                # task of its own, one more task (and future, and callbacks) per hit.
                async with asyncio.timeout(remaining):
                    event = await events.get()
            except TimeoutError:
                break
            if isinstance(event, Outcome):
                pending.discard(event.index)
            yield event
        # Stop the stragglers before yielding again (a yield lets them run), then keep
        # whatever finished in the same instant as the deadline.
        for index in pending:
            tasks[index].cancel()
        while not events.empty():
            event = events.get_nowait()
            if isinstance(event, Outcome):
                pending.discard(event.index)
            yield event
        for index in sorted(pending):
            yield Outcome(index, error=deadline_exceeded())
    finally:
        for task in tasks.values():
            task.cancel()
        for task in tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def collect_outcomes(
    events: AsyncGenerator[Delta | Outcome[T], None],
) -> dict[int, Outcome[T]]:
    """Every job's outcome from ``fan_out_stream``, keyed by its index (deltas dropped)."""
    async with contextlib.aclosing(events):
        return {event.index: event async for event in events if isinstance(event, Outcome)}
