"""Client streams a server ends while they are open, without the race of grpc/grpc#36066.

A grpc-python asyncio client whose message is being written just as the server's status
arrives reports INTERNAL ("Internal error from Core") in place of that status. A stream the
chassis ends as idle (STREAM_IDLE) or past its lifetime (STREAM_TOO_LONG) reads on what its
client still sends (``chassis._drain``) until it half-closes, 2 s at most: a test stream
that never half-closes and keeps sending through that end writes a message just as the
status comes, once in a while: CI read INTERNAL (tests/gateway/test_stream_idle.py, a tick
every IDLE / 4 falling on IDLE, when the drain read nothing more for such a stream).

``on_schedule`` sends each message at a set time and then nothing, never half-closing: a
test places its messages well clear of the server's end (most of a second, far more than
a loaded machine moves either). Such a stream's drain reads for its whole 2 s, and its
status leaves with no message being written. A message a test sends past the server's end
lands in that drain (read and dropped) on a server that ended the stream, and is taken on
one that failed to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any


async def on_schedule(
    first: Any, *later: tuple[float, Callable[[], Any | None]]
) -> AsyncIterator[Any]:
    """Sends ``first``, then, at each ``(seconds, message)`` of ``later`` (seconds after
    ``first``, ascending), what ``message()`` returns (nothing when it returns None); then
    waits for ever, never half-closing (a client that stalled)."""
    loop = asyncio.get_running_loop()
    yield first
    start = loop.time()
    for at, message in later:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        sent = message()
        if sent is not None:
            yield sent
    await asyncio.Event().wait()
