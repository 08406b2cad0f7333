"""Adaptive concurrency of one provider in one replica: AIMD, as TCP does for a link.

The limit is how many calls this replica lets run at once. It starts at the ceiling (the
provider's ``max_in_flight`` / ``max_concurrency``, or no ceiling at all: every call may
run) and moves with what the provider says:

* a 429 or a timeout halves it (multiplicative decrease), from the calls in flight when
  it happened, so an unbounded limit becomes a real one at once;
* latency rising past ``latency_factor`` x its recent average shrinks it by a tenth. The
  average is a slow moving one (about the last fifty answers), not the fastest answer
  ever seen: a provider that answers more slowly for good (longer outputs, a bigger model)
  is absorbed within a few dozen calls instead of being read as overload forever, and
  only a rise that outruns it counts. One call alone cannot overload anything, so a rise
  with one call in flight is no signal;
* each success that is not part of such a rise adds one (additive increase; the limit can
  thus double in one round of calls, so a limit halved by a transient burst of 429s comes
  back within a few rounds);
* a limit left alone for ``recovery`` seconds (no decrease) doubles, once per period, up to
  the ceiling: a 429 from minutes ago says nothing about now, and a replica that sees few
  calls would otherwise keep a small limit for as long as it takes those few to add up.

Decreases happen at most once per cooldown (the smoothed latency): one wave of 429s
answering the same burst halves the limit once, not once per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

DECREASE = 0.5
LATENCY_DECREASE = 0.9
# Smoothing of latency samples (the current latency), and of the recent average it is
# compared with (about the last 1 / RECENT_ALPHA answers).
EWMA_ALPHA = 0.3
RECENT_ALPHA = 0.02
MIN_COOLDOWN = 0.05


class AdaptiveLimit:
    def __init__(
        self,
        ceiling: int | None,
        *,
        latency_factor: float | None = 3.0,
        recovery: float | None = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = math.inf if ceiling is None else float(ceiling)
        self.latency_factor = latency_factor
        self.recovery = recovery
        self._clock = clock
        self._limit = self.ceiling
        self._latency: float | None = None
        self._recent: float | None = None
        self._last_decrease = -math.inf
        # When the limit last went down or recovered a step: the recovery clock.
        self._settled = 0.0

    @property
    def limit(self) -> float:
        """Calls that may run at once (``math.inf``: no limit)."""
        self._recover()
        return self._limit

    def until_recovery(self) -> float | None:
        """Seconds until the limit next doubles by itself; None: it will not (at its
        ceiling, or no recovery). Calls queued on the limit wait no longer than this."""
        if self.recovery is None or self._limit >= self.ceiling:
            return None
        return max(0.0, self._settled + self.recovery - self._clock())

    def _recover(self) -> None:
        if self.recovery is None or self._limit >= self.ceiling:
            return
        periods = int((self._clock() - self._settled) // self.recovery)
        if periods > 0:
            self._limit = min(self.ceiling, self._limit * 2.0 ** min(periods, 64))
            self._settled += periods * self.recovery

    def _cooldown(self) -> float:
        return max(MIN_COOLDOWN, self._latency or 0.0)

    def _decrease(self, in_flight: int, factor: float) -> None:
        now = self._clock()
        if now - self._last_decrease < self._cooldown():
            return
        self._recover()
        self._last_decrease = self._settled = now
        base = min(self._limit, float(max(in_flight, 1)))
        self._limit = max(1.0, math.floor(base * factor))

    def overloaded(self, in_flight: int) -> None:
        """A 429 or a timeout; ``in_flight`` counts the failed call."""
        self._decrease(in_flight, DECREASE)

    def succeeded(self, latency: float, in_flight: int) -> None:
        """A call answered after ``latency`` seconds; ``in_flight`` counts it."""
        if self._latency is None or self._recent is None:
            self._latency = self._recent = latency
        else:
            self._latency += EWMA_ALPHA * (latency - self._latency)
            self._recent += RECENT_ALPHA * (latency - self._recent)
        if (
            self.latency_factor is not None
            and in_flight > 1
            and self._recent > 0
            and self._latency > self.latency_factor * self._recent
        ):
            self._decrease(in_flight, LATENCY_DECREASE)
            return
        self._recover()
        if self._limit < self.ceiling:
            self._limit = min(self.ceiling, self._limit + 1.0)
