"""Deadlines as event-loop times (``loop.time()`` + seconds)."""

from __future__ import annotations

import asyncio


def time_left(deadline: float, *, floor: float = 0.001) -> float:
    """Seconds until ``deadline``, at least ``floor`` (a gRPC timeout must be positive)."""
    return max(deadline - asyncio.get_running_loop().time(), floor)
