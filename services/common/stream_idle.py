"""The idle limit of a client stream (``stream_idle_timeout``), held by the chassis.

A client-streaming call holds its server's call slot (``call_slots.py``) and, on the
gateway, one of its tenant's concurrent-call quota slots, renewed while it runs, for as long
as it lasts. A client that opens such calls and never sends (or stops sending) would hold
them for ever: a writer's key locked its whole tenant out with 8 silent ImportObjects
streams. So the chassis waits at most ``stream_idle_timeout`` seconds for each request
message, the first one included, and ends the call DEADLINE_EXCEEDED (reason
``STREAM_IDLE``) when none comes; the slots are given back as the call ends. Only the wait
for a message counts: the servicer's own work between messages does not.

The other way round, a server stream whose client stops reading (or never reads) held its
call the same way: gRPC cannot send a message its client does not take, so the stream
waited at its write for ever (a StreamGenerativeSearch whose client read the hits and
stalled kept its tenant's only quota slot after every hit had ended). So each message
must be taken within ``stream_send_timeout`` seconds (``send``); past it the call ends
DEADLINE_EXCEEDED (reason ``STREAM_STALLED``) and gives its slots back at once. A call
with a deadline is held to its deadline instead (gRPC ends it there, read or not). The status
reaches the client after the messages gRPC already holds for it, when it reads on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.common.errors import DeadlineExceeded

REASON = "STREAM_IDLE"
STALLED = "STREAM_STALLED"


class IdleLimit:
    def __init__(
        self, seconds: float, setting: str, send_seconds: float = 0.0, send_setting: str = ""
    ) -> None:
        """``seconds`` to wait for each request message, ``send_seconds`` for the client to
        take each reply message of a stream (0: no limit); ``setting`` and ``send_setting``
        are the variables that set them, named in the errors so an operator knows what to
        raise."""
        self.seconds = seconds
        self.setting = setting
        self.send_seconds = send_seconds
        self.send_setting = send_setting

    def error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"no request message arrived within {self.seconds:g} s ({self.setting}); "
            "the stream was ended",
            reason=REASON,
            metadata={"timeout_seconds": f"{self.seconds:g}", "setting": self.setting},
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

    def stalled(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the client took no stream message within {self.send_seconds:g} s "
            f"({self.send_setting}); the stream was ended: read it as it comes",
            reason=STALLED,
            metadata={"timeout_seconds": f"{self.send_seconds:g}", "setting": self.send_setting},
        )

    def cuts(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether ``send`` may cut this call's writes: a send timeout is set and the call
        has no deadline of its own."""
        return bool(self.send_seconds) and context.time_remaining() is None

    async def send(self, context: grpc.aio.ServicerContext, data: Any) -> None:
        """Writes one message of a server stream, or raises the ``STREAM_STALLED`` error
        when its client has not taken it in time (the message stays with gRPC, sent ahead
        of the status if the client reads on)."""
        if not self.cuts(context):
            # A call with a deadline ends at it anyway (cut earlier by this, it would
            # end sooner than its caller asked): the gateway's streams from generation
            # always have one, their hit's budget, and a hit the gateway's client holds
            # back (the gateway's delta buffer full) stops reading its generation stream
            # for as long as that client lets it, then ends at its budget, as documented.
            await context.write(data)
            return
        timeout = asyncio.timeout(self.send_seconds)
        try:
            async with timeout:
                await context.write(data)
        except TimeoutError:
            if timeout.expired():
                raise self.stalled() from None
            raise
