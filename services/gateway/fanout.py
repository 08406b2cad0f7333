"""Run one job per hit concurrently (bounded when asked), with a budget, and never fail as
a whole.

Each job ends as an ``Outcome`` carrying its value or its own ``HitError``. When the
budget runs out, finished jobs keep their values and the rest are cancelled and get
DEADLINE_EXCEEDED. The streaming form yields outcomes in completion order, interleaved
with the text deltas jobs emit while they run.

Deltas are held for the consumer up to ``max_buffered`` at once: a job emitting one more
waits until the consumer takes one. The consumer is the gRPC stream of a client, and a
client that reads slowly (or not at all) blocks it; without the bound every job went on
reading its generation stream into memory, all of every hit's answer (QA: a client that
read one event of a 20-hit StreamGenerateOnObjects left 13,000 deltas queued and growing
after 10 s). With it, a waiting job stops reading its generation stream, so gRPC's and
TCP's flow control hold the rest back up to the LLM, until the client reads or the
budget ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from services.gateway.errors import HitError, deadline_exceeded

T = TypeVar("T")
# Deltas held for a consumer that has not taken them yet (GENSEARCH_GATEWAY_STREAM_BUFFERED_DELTAS).
DEFAULT_MAX_BUFFERED = 256


class Emit(Protocol):
    """Hands a job's text delta on (waiting while the consumer's buffer is full);
    ``restart``: the job's deltas so far are void."""

    async def __call__(self, text: str, restart: bool = False) -> None: ...


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


E = TypeVar("E")


class HeldBack(Generic[E]):
    """Events on their way to a stream's reader, the deltas among them held up to
    ``max_buffered`` at once: ``put`` (a delta) waits while the reader is that far behind,
    so its producer stops reading its generation stream and flow control holds the rest
    back up to the LLM; ``put_now`` (an outcome, the end) never waits."""

    def __init__(self, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be >= 1")
        # Unbounded itself: the room below bounds the deltas; the rest are never refused.
        self._queue: asyncio.Queue[tuple[E, bool]] = asyncio.Queue()
        self._room = asyncio.Semaphore(max_buffered)

    async def put(self, event: E) -> None:
        await self._room.acquire()
        self._queue.put_nowait((event, True))

    def put_now(self, event: E) -> None:
        self._queue.put_nowait((event, False))

    def empty(self) -> bool:
        return self._queue.empty()

    async def get(self) -> E:
        return self._taken(await self._queue.get())

    def get_nowait(self) -> E:
        return self._taken(self._queue.get_nowait())

    def _taken(self, item: tuple[E, bool]) -> E:
        event, held = item
        if held:
            self._room.release()
        return event


class DeltaBuffer(HeldBack[str | None]):
    """One generation's text deltas (StreamAsk's answer): ``close`` (the generation
    ended, however) never waits, and ``get`` returns None after the last delta."""

    def close(self) -> None:
        self.put_now(None)

    async def get(self) -> str | None:
        text = await super().get()
        if text is None:
            self.put_now(None)  # the end stays the end for a later get
        return text


async def fan_out_stream(
    jobs: Mapping[int, Job[T]],
    *,
    max_concurrency: int | None,
    timeout: float | None,
    unbounded: Collection[int] = (),
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    timeout_field: str | None = None,
) -> AsyncGenerator[Delta | Outcome[T], None]:
    """Yield deltas and outcomes as they happen; exactly one outcome per job.

    Jobs listed in ``unbounded`` (the grouped call) do not take a concurrency slot;
    ``max_concurrency`` None: no job waits for a slot (the generation service keeps to
    the provider's limits). At most ``max_buffered`` deltas wait for the consumer (all
    jobs together); outcomes, one per job, never wait. ``timeout_field``: the request
    field that set ``timeout``, named by the outcome of a job it cut off.
    """
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
    slots = None if max_concurrency is None else asyncio.Semaphore(max_concurrency)
    events: HeldBack[Delta | Outcome[T]] = HeldBack(max_buffered)

    async def run(index: int, job: Job[T]) -> None:
        async def emit(text: str, restart: bool = False) -> None:
            if text or restart:
                await events.put(Delta(index, text, restart))

        try:
            if slots is None or index in unbounded:
                value = await job(emit)
            else:
                async with slots:
                    value = await job(emit)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            events.put_now(Outcome(index, error=HitError.of(err)))
        else:
            events.put_now(Outcome(index, value=value))

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
            yield Outcome(index, error=deadline_exceeded(timeout_field))
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
