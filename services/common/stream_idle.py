"""The idle limit of a client stream (``stream_idle_timeout``), held by the chassis.

A client-streaming call holds its server's call slot (``call_slots.py``) and, on the
gateway, one of its tenant's concurrent-call quota slots, renewed while it runs, for as long
as it lasts. A client that opens such calls and never sends (or stops sending) would hold
them for ever: a writer's key locked its whole tenant out with 8 silent ImportObjects
streams. So the chassis waits at most ``stream_idle_timeout`` seconds for each request
message, the first one included, and ends the call DEADLINE_EXCEEDED (reason
``STREAM_IDLE``) when none comes; the slots are given back as the call ends. Only the wait
for a message counts: the servicer's own work between messages does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.common.errors import DeadlineExceeded

REASON = "STREAM_IDLE"


class IdleLimit:
    def __init__(self, seconds: float, setting: str) -> None:
        """``seconds`` to wait for each request message; ``setting`` is the variable that
        sets it, named in the error so an operator knows what to raise."""
        self.seconds = seconds
        self.setting = setting

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
