"""Calls still running as a stopping server's grace period ends, ended by the chassis with
a status of ours.

``grpc.aio``'s ``server.stop(grace)`` lets calls in flight run for ``grace`` seconds, then
cancels them in gRPC core: their clients get UNAVAILABLE "Cancelling all calls", with no
ErrorInfo. With a 10 s grace and generation answers of up to minutes, every rolling update
ended the long calls (generation, Ask, streams) that way. So ``GrpcServer.stop`` ends each
call still running a ``margin`` before the grace period ends: its task is cancelled (what
gRPC would do a moment later) and the chassis answers UNAVAILABLE / ``SHUTTING_DOWN`` in
its place (metadata ``grace_period_seconds``, ``setting``; a stream's ``sent_count`` too),
which clients retry, on another replica.

Each call's ``CallCut`` is entered around its work (a unary call's whole work, each step of
a stream but not its writes: cancelled while gRPC sends, a stream could not end with our
status), as ``call_deadline.Cutoff`` is. Work that wants to say what it did before the cut
(an import stream: what it imported) catches the ``CancelledError`` and calls ``claimed``:
the cut's error to add to and raise, or None when the cancellation was not the cut (the
client went away). A stream's work may be out of its step as the cut lands (its message
being written), and the next step is refused before the work runs: work that says what it
did registers it up front (``noting``), and every cut error of the call carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType

from services.common.errors import ServiceError, Unavailable, seconds_text

REASON = "SHUTTING_DOWN"
# Calls are ended this long before the grace period ends: a tenth of it, at most MAX_MARGIN
# seconds (time for the statuses to leave before gRPC cancels what is left).
MARGIN_SHARE = 0.1
MAX_MARGIN = 1.0


def margin(grace: float) -> float:
    return min(MAX_MARGIN, grace * MARGIN_SHARE)


class Draining:
    """The calls of one server, each to be ended by ``end_calls`` as the server stops.
    ``grace``: the grace period the server stops with (set by ``GrpcServer.stop``), and
    ``setting``: the variable that sets it, both named in the status; ``service``: the
    server's name (``generation``), so a status the gateway passes on says which one
    stopped."""

    def __init__(self, grace: float, setting: str, service: str = "") -> None:
        self.grace = grace
        self.setting = setting
        self.service = service
        self.ending = False
        self._running: set[CallCut] = set()

    def call(self, streaming: bool = False) -> CallCut:
        """The cut of the call being served (set on its task, for ``claimed``)."""
        cut = CallCut(self, streaming)
        _call_cut.set(cut)
        return cut

    @property
    def running(self) -> int:
        """How many calls are in their work now (a stream's between steps not counted)."""
        return len(self._running)

    def drain_seconds(self) -> float:
        """How long an ended client stream may read on what its client still sends
        (``chassis._drain``): half the margin, so its status leaves before gRPC's cut."""
        return margin(self.grace) / 2

    def end_calls(self) -> int:
        """Ends every call now running; a call entering its work from now on is ended
        there. Returns how many were running."""
        self.ending = True
        running = list(self._running)
        for cut in running:
            cut.end()
        return len(running)


# The cut of the call being served on this task (None: no call of the chassis is).
_call_cut: ContextVar[CallCut | None] = ContextVar("gensearch_call_cut", default=None)


def noting(note: Callable[[Unavailable], object]) -> None:
    """In a call's work: ``note`` adds what the work did to each cut error of the call,
    also one raised as a stream's next step starts, with the work not running to catch
    it (the cut landed as a message was written). No call of the chassis: nothing."""
    cut = _call_cut.get()
    if cut is not None:
        cut.note = note


def claimed() -> Unavailable | None:
    """In an ``except asyncio.CancelledError`` of a call's work: the SHUTTING_DOWN error to
    raise in its place (the task no longer cancelled) when the cancellation is the
    server's cut; None when it is not (the client went away, the deadline): re-raise."""
    cut = _call_cut.get()
    return None if cut is None else cut.claim()


class CallCut:
    """``async with`` around a call's work, entered again for each step of a stream."""

    __slots__ = ("_draining", "_ended", "_task", "note", "sent", "streaming")

    def __init__(self, draining: Draining, streaming: bool) -> None:
        self._draining = draining
        self._task: asyncio.Task[object] | None = None
        # True from the cancellation until it is claimed or turned into the error.
        self._ended = False
        self.streaming = streaming
        self.sent = 0  # messages of a stream written before the cut
        self.note: Callable[[Unavailable], object] | None = None  # see ``noting``

    def error(self) -> Unavailable:
        grace = seconds_text(self._draining.grace)
        metadata = {"grace_period_seconds": grace, "setting": self._draining.setting}
        done = ""
        if self.streaming:
            metadata["sent_count"] = str(self.sent)
            done = f" after {self.sent} messages of its stream were sent"
        server = f"the {self._draining.service} service" if self._draining.service else "the server"
        err = Unavailable(
            f"{server} is shutting down and ended the call{done}, its grace period "
            f"({grace} s, {self._draining.setting}) about to end; the call may be retried "
            "(another replica serves it; a write may have taken effect before the cut: "
            "retry it with the same request_id where the call takes one)",
            reason=REASON,
            metadata=metadata,
        )
        if self.note is not None:
            self.note(err)
        return err

    def end(self) -> None:
        if self._task is not None and not self._ended:
            self._ended = True
            self._task.cancel()

    def claim(self) -> Unavailable | None:
        if not self._ended or self._task is None:
            return None
        self._ended = False
        self._task.uncancel()
        return self.error()

    async def __aenter__(self) -> CallCut:
        if self._draining.ending:
            raise self.error()
        self._task = asyncio.current_task()
        self._draining._running.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._draining._running.discard(self)
        task, self._task = self._task, None
        if not self._ended:
            return
        self._ended = False
        assert task is not None
        task.uncancel()
        if isinstance(exc, asyncio.CancelledError):
            raise self.error() from None
        if isinstance(exc, Exception) and not isinstance(exc, ServiceError):
            # The work, cancelled, ended with an error of its own (a library's 'aborted'):
            # the cut is the cause, as the deadline is for call_deadline.Cutoff; as it was,
            # the client got INTERNAL. A status of ours (the deadline's) stays.
            raise self.error() from exc
