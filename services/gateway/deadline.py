"""Deadlines as event-loop times (``loop.time()`` + seconds)."""

from __future__ import annotations

import asyncio

# The farthest timeout the gateway gives its own calls. A client may set a deadline up to
# 99999999 hours away (gRPC's grpc-timeout; a Go client sends "2562047H" for its longest
# context), but grpc-python fails a call at once, DEADLINE_EXCEEDED, when its timeout is
# past about 7.5e9 s (the deadline overflows as nanoseconds): passed on as it was, such a
# deadline failed every call the gateway forwarded. 99999999 s (some three years) is the
# longest grpc-timeout in seconds, and no call waits that long anyway.
FARTHEST = 99_999_999.0


def time_left(deadline: float, *, floor: float = 0.001) -> float:
    """Seconds until ``deadline``, at least ``floor`` (a gRPC timeout must be positive)."""
    return max(deadline - asyncio.get_running_loop().time(), floor)


def sendable(timeout: float | None) -> float | None:
    """``timeout`` as a gRPC call of the gateway can carry it: at most ``FARTHEST``."""
    return None if timeout is None else min(timeout, FARTHEST)
