"""A call's deadline, held by the chassis: refused at once when too short, and ended with
our own status just before it passes.

A client's gRPC ends its call at the deadline whatever the server says after, with a bare
DEADLINE_EXCEEDED ("Deadline Exceeded", no ErrorInfo); the server's gRPC cancels the
handler at the same instant. So a status of ours reaches the client only if it leaves
before then:

- a call that arrives with less than ``min_deadline`` seconds left is refused before any
  work, DEADLINE_EXCEEDED / ``DEADLINE_TOO_SHORT`` (metadata ``remaining_ms``, ``min_ms``,
  ``setting``);
- a call still working ``margin`` before its deadline is ended there,
  DEADLINE_EXCEEDED / ``DEADLINE_EXCEEDED`` (metadata ``timeout_ms``: what it had on
  arrival, ``remaining_ms``: what was left when it was ended). Work that ends itself before
  the deadline for the same reason (an upstream request, services.retrieval.upstream)
  reports it with ``ended_early``, the same status with the same metadata: the call's
  ``Cutoff`` (``call_cutoff``) tells it what the call had on arrival.

The margin is smaller than the ones our handlers keep for themselves, so their answers go
first and this is the backstop: an upstream request (generation's chat completions,
retrieval's embeddings and rerank) ends ``upstream_margin`` early, twice this margin, so
its precise status ("the embeddings endpoint did not answer ...") has a whole chassis
margin to leave before this cut's generic one. What gRPC ends before any handler runs
(a deadline already past in the client, a call expiring in the server's queue) stays
bare: docs/operations.md#deadline_exceeded.
"""

from __future__ import annotations

import asyncio
from contextvars import Context, ContextVar, copy_context
from types import TracebackType

import grpc

from services.common.errors import DeadlineExceeded, ServiceError

TOO_SHORT = "DEADLINE_TOO_SHORT"
# The call is ended this long before its deadline: a twentieth of what it had on arrival,
# at most MAX_MARGIN seconds (the time a status needs to reach its client).
MARGIN_SHARE = 0.05
MAX_MARGIN = 0.2


def margin(timeout: float) -> float:
    """Seconds before its deadline at which the chassis ends a call that had ``timeout``
    seconds when it arrived."""
    return min(MAX_MARGIN, timeout * MARGIN_SHARE)


def upstream_margin(timeout: float) -> float:
    """Seconds before its deadline at which an upstream exchange of a call that had
    ``timeout`` seconds when it arrived must end: the chassis' margin and as much again.
    Both timers run on one event loop, but after the exchange's fires its status still
    takes a few steps (the connection closed, the span ended) and a loaded machine can
    stall them; with the two margins at most 0.125 s apart (the old upstream one, counted
    from the request's own time left, fell after the cut for a request begun late in the
    call), the chassis' cut often won and the caller read "the call's deadline ... was
    about to pass" instead of what did not answer. The gap is the chassis margin itself
    (0.2 s from a 4 s deadline up), the time a status is given to reach its client, and it
    shrinks with short deadlines as that does (0.05 s at 1 s), so a short call keeps most
    of its time for the upstream. No floor, by decision: what a stall past the gap costs
    is which of two DEADLINE_EXCEEDED with ErrorInfo the caller reads, and a floor would
    take a fixed slice of every short call (docs/operations.md#deadline_exceeded)."""
    return 2 * margin(timeout)


def outlasting(budget: float) -> float:
    """The deadline to give a downstream call whose upstream work should end when
    ``budget`` does, not ``upstream_margin`` before it (the inverse of ``room_before_cut``
    for a call that arrives with it): the gateway's fan-out, whose own timer at the budget
    then reports the hit's DEADLINE_EXCEEDED, not generation's UPSTREAM_TIMEOUT."""
    return min(budget + 2 * MAX_MARGIN, budget / (1 - 2 * MARGIN_SHARE))


def room_before_cut(time_left: float) -> float:
    """Seconds work begun now with ``time_left`` before the served call's deadline may take
    so that its own status leaves first: ``time_left`` less ``upstream_margin``, counted
    from what the call had when it arrived, as the chassis counts its cut, so work begun
    late in the call (a second batch, a rerank after the search) still ends before that
    cut. Outside a served call, ``time_left`` stands for what it had. Never below 0."""
    cutoff = call_cutoff()
    arrived_with = time_left if cutoff is None else max(cutoff.timeout, time_left)
    return max(0.0, time_left - upstream_margin(arrived_with))


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0) * 1000:.0f}"


def ended_early(message: str, *, timeout: float, left: float) -> DeadlineExceeded:
    """The DEADLINE_EXCEEDED of work ended just before its call's deadline, so that this
    status reaches the caller first: ErrorInfo metadata ``timeout_ms``, what the call had
    when it arrived (``timeout`` seconds), and ``remaining_ms``, what was left when it was
    ended (``left``). The chassis' cut and an upstream request's alike."""
    return DeadlineExceeded(
        message, metadata={"timeout_ms": _ms(timeout), "remaining_ms": _ms(left)}
    )


# The cutoff of the call being served, set on the call's task as it arrives (None: it has
# no deadline): what the call had then, for work that ends itself early (``ended_early``).
_call_cutoff: ContextVar[Cutoff | None] = ContextVar("gensearch_call_cutoff", default=None)


def call_cutoff() -> Cutoff | None:
    """The cutoff of the call being served (None: it has no deadline, or no call is)."""
    return _call_cutoff.get()


def context_past_the_call() -> Context:
    """A copy of the current context without the served call's cutoff: for work a call
    starts that must outlive it (a slot's release, a turn's index job, a summary, a cache
    store in the background). A task copies its creator's context, so such work carried
    the call's cutoff and was bounded by a deadline that was never its own: memory's wait
    for a slot move (``_redis_waiting``) gave up at once once the call's had passed, and
    ``room_before_cut`` counted its margin from the call's time. The call's secrets stay:
    its lines still hide the caller's key (``logs.context_of_no_call`` drops them too)."""
    context = copy_context()
    context.run(_call_cutoff.set, None)
    return context


class DeadlineLimit:
    def __init__(self, min_deadline: float, setting: str) -> None:
        """``min_deadline``: seconds a call must have left on arrival; ``setting``: the
        variable that sets it, named in the refusal."""
        self.min_deadline = min_deadline
        self.setting = setting

    def cutoff(self, context: grpc.aio.ServicerContext) -> Cutoff | None:
        """The call's cutoff (None: it has no deadline); DEADLINE_TOO_SHORT when less than
        ``min_deadline`` is left."""
        remaining = context.time_remaining()
        if remaining is None:
            _call_cutoff.set(None)
            return None
        if remaining < self.min_deadline or remaining <= 0:
            raise DeadlineExceeded(
                f"the call arrived with {remaining * 1000:.1f} ms left before its deadline; "
                f"the service needs at least {self.min_deadline * 1000:g} ms "
                f"({self.setting}): give the call a longer timeout",
                reason=TOO_SHORT,
                metadata={
                    "remaining_ms": _ms(remaining),
                    "min_ms": f"{self.min_deadline * 1000:g}",
                    "setting": self.setting,
                },
            )
        cutoff = Cutoff(remaining)
        _call_cutoff.set(cutoff)
        return cutoff


class Cutoff:
    """``async with`` around a call's work (each step of a stream, not its writes; it may
    be entered again, one step after the other): past the cutoff the work is cancelled
    and DEADLINE_EXCEEDED raised in its place."""

    __slots__ = ("_active", "timeout", "when")

    def __init__(self, remaining: float) -> None:
        self.timeout = remaining
        self.when = asyncio.get_running_loop().time() + remaining - self.margin()
        self._active: asyncio.Timeout | None = None

    def margin(self) -> float:
        return margin(self.timeout)

    def error(self) -> DeadlineExceeded:
        left = self.when + self.margin() - asyncio.get_running_loop().time()
        return ended_early(
            f"the call's deadline ({self.timeout * 1000:.0f} ms when it arrived) was about "
            "to pass before the work was done: give the call a longer timeout",
            timeout=self.timeout,
            left=left,
        )

    async def __aenter__(self) -> Cutoff:
        # An asyncio timeout is entered once: a fresh one for each step.
        self._active = asyncio.timeout_at(self.when)
        await self._active.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        active, self._active = self._active, None
        assert active is not None
        try:
            await active.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            raise self.error() from None
        if active.expired() and isinstance(exc, Exception) and not _deadline(exc):
            # The work, cancelled, ended with an error of its own (a downstream call
            # cancelled, say): the deadline is the cause.
            raise self.error() from exc


def _deadline(exc: Exception) -> bool:
    return isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
