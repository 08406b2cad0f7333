"""Adaptive concurrency of one provider in one replica: AIMD, as TCP does for a link.

The limit is how many calls this replica lets run at once. It starts at the ceiling (the
provider's ``max_in_flight`` / ``max_concurrency``, or no ceiling at all: every call may
run) and moves with what the provider says:

* a 429 or a timeout halves it (multiplicative decrease), from the calls in flight when
  it happened, so an unbounded limit becomes a real one at once;
* latency rising past ``latency_factor`` x its baseline (the lowest smoothed latency seen,
  drifting slowly up so a provider that got slower for good is not punished forever)
  shrinks it by a tenth;
* each success adds one (additive increase; the limit can thus double in one round of
  calls, so a limit halved by a transient burst of 429s comes back within a few rounds).

Decreases happen at most once per cooldown (the smoothed latency): one wave of 429s
answering the same burst halves the limit once, not once per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

DECREASE = 0.5
LATENCY_DECREASE = 0.9
# Smoothing of latency samples, and how fast the baseline drifts up towards them.
EWMA_ALPHA = 0.3
BASELINE_DRIFT = 0.01
MIN_COOLDOWN = 0.05


class AdaptiveLimit:
    def __init__(
        self,
        ceiling: int | None,
        *,
        latency_factor: float | None = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = math.inf if ceiling is None else float(ceiling)
        self.latency_factor = latency_factor
        self._clock = clock
        self._limit = self.ceiling
        self._latency: float | None = None
        self._baseline: float | None = None
        self._last_decrease = -math.inf

    @property
    def limit(self) -> float:
        """Calls that may run at once (``math.inf``: no limit)."""
        return self._limit

    def _cooldown(self) -> float:
        return max(MIN_COOLDOWN, self._latency or 0.0)

    def _decrease(self, in_flight: int, factor: float) -> None:
        now = self._clock()
        if now - self._last_decrease < self._cooldown():
            return
        self._last_decrease = now
        base = min(self._limit, float(max(in_flight, 1)))
        self._limit = max(1.0, math.floor(base * factor))

    def overloaded(self, in_flight: int) -> None:
        """A 429 or a timeout; ``in_flight`` counts the failed call."""
        self._decrease(in_flight, DECREASE)

    def succeeded(self, latency: float, in_flight: int) -> None:
        """A call answered after ``latency`` seconds; ``in_flight`` counts it."""
        if self._latency is None:
            self._latency = latency
        else:
            self._latency += EWMA_ALPHA * (latency - self._latency)
        if self._baseline is None or self._latency < self._baseline:
            self._baseline = self._latency
        else:
            self._baseline += BASELINE_DRIFT * (self._latency - self._baseline)
        if (
            self.latency_factor is not None
            and self._baseline > 0
            and self._latency > self.latency_factor * self._baseline
        ):
            self._decrease(in_flight, LATENCY_DECREASE)
            return
        if self._limit < self.ceiling:
            self._limit = min(self.ceiling, self._limit + 1.0)
