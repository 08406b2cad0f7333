"""The bytes one tenant's reads may be building at once
(``GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT``), gated before the engine read.

``MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT`` (services/common/reply_bytes.py) counts a reply
from its serialization on; the memory of a large read sits before that: the engine's
payloads, our hits, the protobuf reply, several copies of it. 16 concurrent ~60 MB
Searches of one tenant took retrieval to ~1 GB, that bound unmoved (bench/reply_bytes.py).
So each read takes, before it reaches the engine, an estimate of what it will build: the
points it asks for (``limit``, the candidates of a hybrid or reranked search, the ids of
a BatchGetObjects, ``MAX_CHUNKS_PER_RANGE`` + 1 per GetChunks range) times its
collection's mean point size, as reads of that collection have measured it
(``observe``), starting from a sample of its first ``SAMPLE_POINTS`` points (one small
engine read per collection per process). Measuring is on every read's path, so it
samples: one read in ``MEASURE_EVERY`` of a collection (and its first), and of that read
at most ``MEASURED_POINTS`` points, spread over it. A change in a collection's point
size is followed within a few dozen reads of it. The estimate is held until the call's
reply is built (then the chassis's count takes over).

A read that would take its tenant past the bound while the tenant has others being built
waits, in its tenant's FIFO queue, at most ``READ_BYTES_WAIT`` seconds (and never past
its deadline): a burst of large reads then runs a few at a time instead of failing, which
is what its client would do by retrying anyway, minus the round trips. Past the wait it is
refused, RESOURCE_EXHAUSTED with a RetryInfo, reason ``RESPONSE_BYTES_IN_FLIGHT`` (the
chassis's reason: the same condition to a client, too many large replies of its tenant at
once) and metadata naming this setting. When the call's deadline ended the wait first, it
is DEADLINE_EXCEEDED (reason ``DEADLINE_EXCEEDED``, metadata ``waited_ms``, the wait it
had): a retry with the same deadline would fail the same way. Nothing is built for a
refused read. A tenant's read always goes when none of its others is being built (no read
is refused for ever); other tenants count against their own bound and never wait for this
one. One counter per tenant on the event loop: no lock, nothing shared across processes
or replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from services.common.errors import DeadlineExceeded, ResourceExhausted, seconds_text
from services.common.reply_bytes import refusal
from services.retrieval.metrics import READS_REFUSED, READS_WAITING
from services.retrieval.store import FoundPoint, value_bytes

SETTING = "GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT"
# Points read to learn the mean point size of a collection no read has measured yet.
SAMPLE_POINTS = 16
# Measuring a read's points walked every payload of every Search and BatchGetObjects
# (~0.05 ms of a Search's p50 at 10 hits): now at most this many points of a read, spread
# over it (a read's first hits, the best scored, need not be typical of its size) ...
MEASURED_POINTS = 4
# ... and one read in this many of a collection (its first always).
MEASURE_EVERY = 8
# How much a new read moves a collection's mean point size (an exponential mean: recent
# reads count most, one odd read does not swing it).
_WEIGHT = 0.25


@dataclass
class _Tenant:
    held: int = 0
    # Reads waiting, first come first served: (estimate, granted when it fits).
    waiting: deque[tuple[int, asyncio.Future[None]]] = field(default_factory=deque)


class ReadBytes:
    def __init__(self, limit: int, wait: float) -> None:
        """``limit`` bytes of reads being built per tenant (0: no limit); ``wait``: the
        most seconds a read waits for room before it is refused."""
        self.limit = limit
        self.wait = wait
        self._tenants: dict[str, _Tenant] = {}
        # Engine collection name -> its mean point size in bytes, as reads measured it.
        self._means: dict[str, float] = {}
        # Engine collection name -> reads of it to pass before the next one is measured.
        self._unmeasured: dict[str, int] = {}

    def held(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.held if state else 0

    def waiting(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return len(state.waiting) if state else 0

    def estimate(self, collection: str, points: int) -> int:
        """The bytes a read of ``points`` points of ``collection`` will build, about."""
        return int(points * self._means.get(collection, 0.0))  # unknown: an empty one

    def knows(self, collection: str) -> bool:
        """Whether reads of ``collection`` have measured its points (or it is unlimited)."""
        return not self.limit or collection in self._means

    def observe(self, collection: str, points: Sequence[FoundPoint]) -> None:
        """A read of ``collection`` got ``points``: one read in ``MEASURE_EVERY``, the mean
        size of at most ``MEASURED_POINTS`` of them moves its estimate."""
        if not points:
            return
        old = self._means.get(collection)
        if old is not None:
            skip = self._unmeasured.get(collection, 0)
            if skip > 0:
                self._unmeasured[collection] = skip - 1
                return
        self._unmeasured[collection] = MEASURE_EVERY - 1
        step = max(1, len(points) // MEASURED_POINTS)
        sizes = [_found_bytes(point) for point in points[::step][:MEASURED_POINTS]]
        mean = sum(sizes) / len(sizes)
        self._means[collection] = mean if old is None else old + _WEIGHT * (mean - old)

    def forget(self, collection: str) -> None:
        """``collection`` is deleted: its name may come back with other objects."""
        self._means.pop(collection, None)
        self._unmeasured.pop(collection, None)

    @contextlib.asynccontextmanager
    async def reading(
        self, tenant: str, size: int, time_left: float | None = None
    ) -> AsyncIterator[None]:
        """Holds ``size`` bytes of ``tenant``'s bound while the block builds a read, after
        waiting for room (at most ``wait`` seconds, and ``time_left``, the call's)."""
        if not self.limit:
            yield
            return
        await self._take(tenant, size, time_left)
        try:
            yield
        finally:
            self._give_back(tenant, size)

    async def _take(self, tenant: str, size: int, time_left: float | None) -> None:
        state = self._tenants.setdefault(tenant, _Tenant())
        if not state.waiting and self._fits(state, size):
            state.held += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        state.waiting.append(entry)
        wait = self.wait if time_left is None else max(0.0, min(self.wait, time_left))
        # The call's deadline, not this setting, ends the wait.
        cut_by_deadline = time_left is not None and time_left < self.wait
        started = asyncio.get_running_loop().time()
        READS_WAITING.inc()
        try:
            async with asyncio.timeout(wait):
                await granted
        except BaseException as err:  # out of time, or the call cancelled
            if granted.done() and not granted.cancelled():
                if isinstance(err, TimeoutError):
                    return  # let in just as its time ran out: it goes
                self._give_back(tenant, size)
                raise
            granted.cancel()
            with contextlib.suppress(ValueError):
                state.waiting.remove(entry)
            self._admit(tenant, state)  # the reads behind it may fit now
            self._drop_if_idle(tenant, state)
            if isinstance(err, TimeoutError):
                READS_REFUSED.inc()
                if cut_by_deadline:
                    waited = asyncio.get_running_loop().time() - started
                    raise self._out_of_time(state.held, size, waited) from None
                raise self._refusal(state.held, size) from None
            raise
        finally:
            READS_WAITING.dec()

    def _fits(self, state: _Tenant, size: int) -> bool:
        return state.held == 0 or state.held + size <= self.limit

    def _give_back(self, tenant: str, size: int) -> None:
        state = self._tenants.get(tenant)
        if state is None:
            return
        state.held -= size
        self._admit(tenant, state)
        self._drop_if_idle(tenant, state)

    def _admit(self, tenant: str, state: _Tenant) -> None:
        """Lets in the waiting reads that now fit, in their order (the first one that
        does not fit holds the rest back: a large read is not passed for ever)."""
        while state.waiting and self._fits(state, state.waiting[0][0]):
            size, granted = state.waiting.popleft()
            if granted.done():
                continue
            state.held += size
            granted.set_result(None)

    def _drop_if_idle(self, tenant: str, state: _Tenant) -> None:
        if state.held <= 0 and not state.waiting:
            self._tenants.pop(tenant, None)  # no entry left behind per tenant ever seen

    def _refusal(self, held: int, size: int) -> ResourceExhausted:
        return refusal(
            f"the caller's tenant has reads of about {held} bytes being built; this one "
            f"(about {size} bytes) would pass {self.limit} ({SETTING}) and found no room "
            f"within {seconds_text(self.wait)} s; retry shortly, or ask for fewer or smaller "
            "results",
            self.limit,
            held,
            size,
            SETTING,
        )

    def _out_of_time(self, held: int, size: int, waited: float) -> DeadlineExceeded:
        """The call's deadline came before room did: DEADLINE_EXCEEDED (retrying with the
        same deadline would fail the same way), quoting the wait it had, not ``wait``."""
        waited_ms = f"{max(waited, 0) * 1000:.0f}"
        return DeadlineExceeded(
            f"the caller's tenant has reads of about {held} bytes being built; this one "
            f"(about {size} bytes) would pass {self.limit} ({SETTING}) and found no room "
            f"in the {waited_ms} ms it waited, all its deadline left: give the call a "
            "longer timeout, or ask for fewer or smaller results",
            metadata={
                "waited_ms": waited_ms,
                "limit_bytes": str(self.limit),
                "held_bytes": str(held),
                "size_bytes": str(size),
                "setting": SETTING,
            },
        )


def _found_bytes(point: FoundPoint) -> int:
    size = 64 + value_bytes(point.payload)  # id, score, a hit's framing
    if point.dense is not None:
        size += 4 * len(point.dense)
    return size
