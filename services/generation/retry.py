"""Retries of upstream calls: exponential backoff with full jitter, ``Retry-After`` honoured,
all inside the deadline of the incoming call.

A fault is retried only when it is retryable (429, 500, 502, 503, 504, connection errors),
attempts remain, and the wait still ends before the deadline. Otherwise the fault is
re-raised at once: there is no point sleeping into a deadline that a retry cannot meet.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from services.generation.metrics import UPSTREAM_RETRIES
from services.generation.providers.base import Deadline
from services.generation.upstream import UpstreamFault

log = logging.getLogger("gensearch.generation.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    base_backoff: float = 0.25
    max_backoff: float = 8.0
    # A Retry-After above this is not waited for.
    retry_after_max: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^(n-1))]."""
        ceiling = min(self.max_backoff, self.base_backoff * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)

    def delay(self, attempt: int, fault: UpstreamFault) -> float | None:
        """Seconds before the next attempt, or None when the upstream asks for too long."""
        if fault.retry_after is not None:
            return fault.retry_after if fault.retry_after <= self.retry_after_max else None
        return self.backoff(attempt)


class Retrier:
    """Counts attempts of one upstream exchange and sleeps between them.

    ``await retrier.before_retry(fault)`` returns True after sleeping when another attempt
    is worth making, False (without sleeping) when the fault is final.
    """

    def __init__(self, policy: RetryPolicy, deadline: Deadline, provider: str) -> None:
        self.policy = policy
        self.deadline = deadline
        self.provider = provider
        self.attempts = 0

    def begin(self) -> int:
        self.attempts += 1
        return self.attempts

    async def before_retry(self, fault: UpstreamFault) -> bool:
        fault.attempts = self.attempts
        if not fault.retryable or self.attempts >= self.policy.max_attempts:
            return False
        wait = self.policy.delay(self.attempts, fault)
        if wait is None or wait >= self.deadline.remaining():
            return False
        UPSTREAM_RETRIES.labels(self.provider, _label(fault)).inc()
        log.warning(
            "retrying upstream call",
            extra={
                "provider": self.provider,
                "attempt": self.attempts,
                "fault": fault.kind,
                "status": fault.status,
                "wait_s": round(wait, 3),
            },
        )
        await asyncio.sleep(wait)
        return True


def _label(fault: UpstreamFault) -> str:
    return str(fault.status) if fault.status is not None else fault.kind
