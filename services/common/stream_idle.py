"""The idle limit of a client stream (``stream_idle_timeout``), held by the chassis.

A client-streaming call holds its server's call slot (``call_slots.py``) and, on the
gateway, one of its tenant's concurrent-call quota slots, renewed while it runs, for as long
as it lasts. A client that opens such calls and never sends (or stops sending) would hold
them for ever: a writer's key locked its whole tenant out with 8 silent ImportObjects
streams. So the chassis waits at most ``stream_idle_timeout`` seconds for each request
message, the first one included, and ends the call DEADLINE_EXCEEDED (reason
``STREAM_IDLE``) when none comes; the slots are given back as the call ends. Only the wait
for a message counts: the servicer's own work between messages does not. A message that
carries nothing (an ImportObjects message with no objects: ``progress_rule``) is no
progress: the wait before it counts on towards the next one, so a client sending an empty
message just inside the timeout, over and over, is ended as a silent one (it held its slots
for ever that way). And whatever it sends, a client stream lasts at most
``client_stream_max_seconds`` from its start: past it, the wait for its next message ends
the call DEADLINE_EXCEEDED (reason ``STREAM_TOO_LONG``), what it imported kept and said, as
for ``STREAM_IDLE`` (a steady trickle of one object a message held its slots for ever too).

The other way round, a server stream whose client stops reading (or never reads) held its
call the same way: gRPC cannot send a message its client does not take, so the stream
waited at its write for ever (a StreamGenerativeSearch whose client read the hits and
stalled kept its tenant's only quota slot after every hit had ended). So a write blocked
for ``stream_send_timeout`` seconds ends the call DEADLINE_EXCEEDED (reason
``STREAM_STALLED``) and gives its slots back at once (``SendWatch``). Only a write counts:
the time a servicer takes to produce its next message (a slow LLM, a slow upstream) never
does. A deadline does not exempt a call: a client that set one hour and stopped reading
held its quota slot for that hour. Two kinds of call are left to their deadline: one whose
deadline comes before the send timeout would (it ends there anyway), and one a peer
service makes with the internal token (the gateway's streams from generation: the gateway
holds a hit back on purpose while its own client reads slowly, and cuts that client itself
when it stalls; cut by generation, the hit would end at generation's send timeout instead
of its budget). The status reaches the client after the messages gRPC already holds for
it, when it reads on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.common.auth import current_identity
from services.common.errors import DeadlineExceeded, ServiceError, seconds_text

REASON = "STREAM_IDLE"
STALLED = "STREAM_STALLED"
TOO_LONG = "STREAM_TOO_LONG"


class IdleLimit:
    def __init__(
        self,
        seconds: float,
        setting: str,
        send_seconds: float = 0.0,
        send_setting: str = "",
        max_seconds: float = 0.0,
        max_setting: str = "",
    ) -> None:
        """``seconds`` to wait for each request message, ``send_seconds`` for the client to
        take each reply message of a stream (0: no limit), ``max_seconds`` a client stream
        lasts at most (0: no limit); ``setting``, ``send_setting`` and ``max_setting`` are
        the variables that set them, named in the errors so an operator knows what to
        raise."""
        self.seconds = seconds
        self.setting = setting
        self.send_seconds = send_seconds
        self.send_setting = send_setting
        self.max_seconds = max_seconds
        self.max_setting = max_setting

    def error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"no request message arrived within {seconds_text(self.seconds)} s ({self.setting}); "
            "the stream was ended",
            reason=REASON,
            metadata={"timeout_seconds": seconds_text(self.seconds), "setting": self.setting},
        )

    async def next(self, requests: AsyncIterator[Any]) -> Any:
        """The next message of ``requests`` (StopAsyncIteration at its end), or the
        ``STREAM_IDLE`` error when none comes in time."""
        timeout = asyncio.timeout(self.seconds)
        try:
            async with timeout:
                return await anext(requests)
        except TimeoutError:
            if timeout.expired():
                raise self.error() from None
            raise

    def too_long(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the stream lasted its {seconds_text(self.max_seconds)} s ({self.max_setting}) "
            "and was ended: send the rest in another stream",
            reason=TOO_LONG,
            metadata={
                "max_seconds": seconds_text(self.max_seconds),
                "setting": self.max_setting,
            },
        )

    def clock(self) -> StreamClock:
        """The clocks of a client stream starting now."""
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self.max_seconds if self.max_seconds else None
        return StreamClock(ends_at)

    async def next_of_stream(self, requests: PendingRead, clock: StreamClock) -> Any:
        """The next message of the client stream ``requests`` (StopAsyncIteration at its
        end): ``STREAM_IDLE`` when none comes within what is left of ``seconds`` since its
        last message that carried something (``clock.progress``), ``STREAM_TOO_LONG`` when
        the stream reaches ``max_seconds`` first."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        wait = self.seconds - clock.idle
        ends_first = False
        if clock.ends_at is not None:
            left = clock.ends_at - began
            if left <= 0:
                raise self.too_long()
            if left < wait:
                wait, ends_first = left, True
        try:
            return await requests.within(wait)
        except NoMessageYet:
            raise (self.too_long() if ends_first else self.error()) from None
        finally:
            clock.idle += loop.time() - began

    def stalled(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the client took no stream message within {seconds_text(self.send_seconds)} s "
            f"({self.send_setting}); the stream was ended: read it as it comes",
            reason=STALLED,
            metadata={
                "timeout_seconds": seconds_text(self.send_seconds),
                "setting": self.send_setting,
            },
        )

    def cuts(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether this call's writes are watched (``SendWatch``): a send timeout is set,
        the call's deadline (if any) is further away than it, and the caller is not a peer
        service with the internal token (see the module's docstring). Called at the
        call's first message (after authentication): the deadline left is the one then."""
        if not self.send_seconds:
            return False
        remaining = context.time_remaining()
        if remaining is None:
            return True
        return remaining > self.send_seconds and not current_identity().forwarded

    def watch(self) -> SendWatch:
        """The watch of the current call's writes (run in the call's own task)."""
        return SendWatch(self.send_seconds)

    async def write(
        self,
        context: grpc.aio.ServicerContext,
        message: Any,
        watch: SendWatch | None,
        *,
        headers_first: bool = False,
    ) -> None:
        """Writes one message of a server stream; under ``watch``, a write its client has
        not taken within the send timeout ends the call STREAM_STALLED (only the write is
        watched, never the wait for the next message). A send gRPC failed (the client went
        away, or the server is stopping) is the call's end, as when gRPC cancels the task
        itself: CancelledError. ``headers_first``: the headers are sent on their own before
        it (a watched stream's first message: cut at its write, it would leave them in a
        send gRPC never finished, and the status' send would try them again, and fail)."""
        try:
            if headers_first:
                await context.send_initial_metadata(())
            if watch is None:
                await context.write(message)
                return
            watch.writing()
            try:
                await context.write(message)
            except asyncio.CancelledError:
                if watch.stalled():
                    raise self.stalled() from None
                raise
            finally:
                watch.written()
        except ServiceError:
            raise
        except Exception as err:
            raise asyncio.CancelledError from err


class NoMessageYet(Exception):
    """No message within a ``PendingRead`` wait: its own type, so that a TimeoutError of
    the read itself is not taken for the idle limit."""


class PendingRead:
    """A client stream's reader whose read outlives a wait that timed out.

    Cancelling a read of gRPC's request reader closes that reader (an async generator):
    the call could then read nothing more of its client. But a call ended STREAM_IDLE or
    STREAM_TOO_LONG reads on before it answers (the chassis' drain), because a
    grpc-python asyncio client still writing when the status arrives reports INTERNAL
    ("Internal error from Core") in its place, and loses the counts the status carries
    (grpc/grpc#36066): an importer streaming steadily into its lifetime's end read
    INTERNAL. So a wait that times out leaves its read running, and the next wait (the
    drain's) takes it over; ``close`` ends a read still running when the call ends."""

    __slots__ = ("_read", "_reader")

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._reader = aiter(requests)
        self._read: asyncio.Task[Any] | None = None

    async def within(self, seconds: float | None) -> Any:
        """The next message (StopAsyncIteration at the stream's end); ``NoMessageYet`` when
        none came within ``seconds`` (None: no bound), the read still running. Waiters at
        the same time share one read (the drain, and a relay's request consumer still
        waiting in the servicer): each gets the same message."""
        read = self._read
        if read is None:
            read = self._read = asyncio.ensure_future(anext(self._reader))
            read.add_done_callback(_retrieved)
        done, _ = await asyncio.wait((read,), timeout=seconds)
        if not done:
            raise NoMessageYet
        self._read = None
        return read.result()

    def close(self) -> None:
        """Ends the read still running, if any: the call is over."""
        if self._read is not None:
            self._read.cancel()
            self._read = None


def _retrieved(read: asyncio.Future[Any]) -> None:
    """Marks a read's failure as seen: a read the call ended (its client gone) fails, and
    nobody waits for it any more."""
    if not read.cancelled():
        read.exception()


class StreamClock:
    """One client stream's clocks: when it must end (None: never), and the seconds it
    waited for messages since its last one that carried something."""

    __slots__ = ("ends_at", "idle")

    def __init__(self, ends_at: float | None) -> None:
        self.ends_at = ends_at
        self.idle = 0.0

    def progress(self) -> None:
        """The message just received carried something: the idle wait starts over."""
        self.idle = 0.0


def progress_rule(descriptor: Any) -> Callable[[Any], bool]:
    """Whether a message of a client stream whose message type is ``descriptor`` is
    progress: one of a message with repeated fields (ImportObjects' ``objects``) must carry
    an entry of one (an empty one only kept a stream open); any other message is. Unknown
    type (None): every message is."""
    fields = getattr(descriptor, "fields", ())
    names = [f.name for f in fields if f.is_repeated]
    if not names:
        return lambda message: True
    return lambda message: any(len(getattr(message, name)) for name in names)


class SendWatch:
    """One call's stream writes, watched by one timer for the whole call: a write blocked
    for ``seconds`` cancels the call's task, and ``stalled`` tells that cancellation from
    any other (gRPC's, the client gone).

    Each write only stamps when it began (``writing``) and that it ended (``written``):
    no coroutine, no timer of its own (an ``asyncio.timeout`` per write cost a timer
    handle and a context manager each). The one timer is armed by the first write that
    finds none; when it fires it looks at the write under way: none, it is not re-armed
    (the next write arms it); one that began ``seconds`` ago or more, the call is cut;
    a younger one, it is re-armed for that write's own limit. A stream writing steadily
    so costs one timer per ``seconds``, whatever its number of messages.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_seconds", "_since", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        # Cancellations requested before the watch: never ours (asyncio.timeout's rule).
        self._cancelling = task.cancelling()
        self._since: float | None = None  # when the write under way began
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def writing(self) -> None:
        """A write begins."""
        since = self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(since + self._seconds, self._check)

    def written(self) -> None:
        """The write ended (however)."""
        self._since = None

    def _check(self) -> None:
        self._handle = None
        since = self._since
        if since is None or self._fired:
            return
        due = since + self._seconds
        if self._loop.time() < due:
            # A later write, not yet at its limit (or the loop ran this a hair early).
            self._handle = self._loop.call_at(due, self._check)
            return
        self._fired = True
        self._task.cancel()

    def stalled(self) -> bool:
        """On a CancelledError out of a write: True when the watch cut it, and no one
        else cancelled the task too (the cancellation is then consumed, as
        ``asyncio.timeout`` does it); False: let it through."""
        if not self._fired:
            return False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        """The call is over: its timer goes."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
