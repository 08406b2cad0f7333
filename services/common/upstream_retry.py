"""The one retry policy for calls to OpenAI-compatible endpoints (chat completions in the
generation service, embeddings in retrieval).

- Retried: HTTP 408, 409, 429 and 5xx, and calls that got no answer at all (refused, reset,
  cut short, the SDK's read timeout). Nothing else: a 400 or a malformed body would fail
  the same way again.
- Wait before attempt n+1: the server's ``retry-after-ms`` or ``Retry-After`` (ASCII
  digits of seconds, or an HTTP-date; any other value counts as none) when it sends one,
  else full jitter, uniform in [0, min(max_backoff, base_backoff * 2^(n-1))] (the AWS
  architecture blog's "full jitter").
- Attempts: ``max_attempts`` bounds every cause but 429. A 429 only asks us to slow down: it
  is retried for as long as the deadline allows and spends none of the retries, so a 5xx
  after a few 429s still gets all of them.
- Bounded by the call's ``Deadline``: a wait that would end after it is not started, nor is a
  ``Retry-After`` above ``retry_after_max``; the last fault is returned at once instead of
  sleeping into a deadline no retry can meet. The deadline is the caller's less
  ``call_deadline.upstream_margin`` (``exchange_seconds``), so the status saying why the
  call failed reaches a caller still waiting for it, before the chassis' own cut.

The SDK's own retries are off (``max_retries=0`` in ``services.common.openai_api``), so this
is the only policy.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import openai
from opentelemetry import trace

from services.common.call_deadline import room_before_cut
from services.common.egress import refusal

log = logging.getLogger("gensearch.upstream.retry")

# The span event of each retry (on the upstream call's span): which attempt failed, why
# (the same bounded cause as the metric's label) and the wait before the next one, so a
# trace shows where a slow call spent its time (a 429's Retry-After, backoffs), not only
# how many attempts it took (``gensearch.upstream.attempts``).
RETRY_EVENT = "gensearch.upstream.retry"

RETRYABLE_STATUS = frozenset({408, 409, 429})


def exchange_seconds(time_left: float | None, timeout: float) -> float:
    """Seconds one upstream exchange may take: ``timeout`` (the operator's bound, the only
    one of a call without a deadline), and never past the caller's ``time_left`` less
    ``call_deadline.upstream_margin`` (``room_before_cut``): time for the status saying why
    (a 429's RetryInfo, say) to reach the caller before the chassis' cut with its generic
    message, or the caller's gRPC with a bare DEADLINE_EXCEEDED."""
    if time_left is None:
        return timeout
    return min(room_before_cut(time_left), timeout)


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def is_transient(err: BaseException) -> bool:
    """Whether an SDK error is worth another attempt (see the module docstring)."""
    if isinstance(err, openai.APIStatusError):
        return retryable_status(err.status_code)
    if refusal(err) is not None:
        return False  # the operator's allowlist refused the connection: it will again
    # APITimeoutError is a subclass: the SDK's read timeout, and (on the aiohttp transport)
    # a connection the server dropped.
    return isinstance(err, openai.APIConnectionError)


def is_rate_limited(err: BaseException) -> bool:
    """A 429: the endpoint is up and asks us to slow down (``Retrier.plan``'s
    ``rate_limited``)."""
    return isinstance(err, openai.APIStatusError) and err.status_code == 429


def server_wait(err: BaseException) -> float | None:
    """The wait an error response asked for, in seconds, if any."""
    if isinstance(err, openai.APIStatusError):
        return parse_retry_after(err.response.headers)
    return None


# The longest Retry-After believed (about 30 years): a bigger one is only ever refused
# (RETRY_AFTER_MAX), and "1e309" (infinity) failed the call with INTERNAL when the wait
# was put in the error's metadata in milliseconds.
_RETRY_AFTER_CAP = 1e9


# RFC 9110 10.2.3: delay-seconds = 1*DIGIT, ASCII digits only. retry-after-ms (OpenAI's
# header, no standard) may carry a fraction. Python's float() also takes "+5", "-4",
# "1_000", "1e3", "nan" and other scripts' digits ("١٢"): none of them is a delay a server
# sent, so each is as if no header came (the call backs off as usual).
_DELAY_SECONDS = re.compile(r"[0-9]+")
_DELAY_MILLIS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Optional whitespace around a field value is the field's, not the value's (RFC 9110 5.6.3).
_OWS = " \t"


def _delay(text: str, pattern: re.Pattern[str], scale: float = 1.0) -> float | None:
    """A delay header's value in seconds, capped; None unless it is all ASCII digits (and,
    for ``retry-after-ms``, a fraction)."""
    text = text.strip(_OWS)
    if not pattern.fullmatch(text):
        return None
    # A few hundred digits overflow to infinity: capped like any delay too long to wait.
    return min(float(text) / scale, _RETRY_AFTER_CAP)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delay-seconds or an
    HTTP-date); None when neither holds one (a malformed value counts as absent)."""
    millis = headers.get("retry-after-ms")
    if millis:
        waited = _delay(millis, _DELAY_MILLIS, 1000.0)
        if waited is not None:
            return waited
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    seconds = _delay(value, _DELAY_SECONDS)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip(_OWS))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, wait), _RETRY_AFTER_CAP)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    base_backoff: float = 0.25
    max_backoff: float = 8.0
    # A Retry-After above this is not waited for.
    retry_after_max: float = 60.0

    def ceiling(self, attempt: int) -> float:
        """The longest backoff after attempt ``attempt``: min(cap, base * 2^(attempt-1))."""
        # The exponent is bounded: 429s are retried for as long as the deadline allows, so
        # attempts are not bounded by max_attempts there.
        return min(self.max_backoff, self.base_backoff * (2 ** min(max(attempt, 1) - 1, 32)))

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, ceiling(attempt)]."""
        return random.uniform(0.0, self.ceiling(attempt))

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next attempt, or None when the server asks for too long."""
        if retry_after is not None:
            if retry_after > self.retry_after_max:
                return None
            # At least the backoff: a server that says "Retry-After: 0" to every attempt
            # (429s are retried for as long as the deadline allows) is not hammered.
            return max(retry_after, self.backoff(attempt))
        return self.backoff(attempt)


class Deadline:
    """An absolute point in loop time by which a whole upstream exchange must end."""

    __slots__ = ("expires_at",)

    def __init__(self, seconds: float) -> None:
        self.expires_at = asyncio.get_running_loop().time() + max(0.0, seconds)

    def remaining(self) -> float:
        return max(0.0, self.expires_at - asyncio.get_running_loop().time())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0


class Retrier:
    """Counts the attempts of one upstream exchange and sleeps between them.

    Use it in a loop: ``retrier.begin()`` before each attempt; after a failed one,
    ``await retrier.pause(...)`` sleeps and returns True when another attempt is worth
    making, or returns False at once when the fault is final.

    ``attempts`` counts every attempt; ``max_attempts`` bounds only those that failed other
    than by a 429 (``rate_limited``): 429s spend none of the retries.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: Deadline,
        upstream: str,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        self.upstream = upstream  # a provider name or host, for logs; never a URL with a key
        self._on_retry = on_retry
        # The span the retry events go on (the upstream call's); None: the current span.
        self.span: trace.Span | None = None
        self.attempts = 0
        # Attempts that failed other than by a 429 (the ones max_attempts bounds).
        self._failures = 0

    def begin(self) -> int:
        self.attempts += 1
        return self.attempts

    async def pause(
        self,
        *,
        retryable: bool,
        retry_after: float | None,
        cause: str,
        rate_limited: bool = False,
    ) -> bool:
        """``cause`` (an HTTP status or a fault kind) labels logs and metrics;
        ``rate_limited``: see ``plan``."""
        wait = self.plan(
            retryable=retryable, retry_after=retry_after, cause=cause, rate_limited=rate_limited
        )
        if wait is None:
            return False
        await asyncio.sleep(wait)
        return True

    def plan(
        self,
        *,
        retryable: bool,
        retry_after: float | None,
        cause: str,
        rate_limited: bool = False,
    ) -> float | None:
        """The wait before the next attempt, or None when the fault is final; for callers
        that wait their own way (a provider's queue). ``rate_limited`` (a 429): retried as
        long as the deadline allows, whatever ``max_attempts`` says, since the provider
        only asked us to slow down; nor does it spend one of the retries of other faults
        (before, 429s counted among ``attempts`` there, so a 5xx after them was not
        retried)."""
        if not rate_limited:
            self._failures += 1
        if not retryable or (not rate_limited and self._failures >= self.policy.max_attempts):
            return None
        wait = self.policy.delay(self.attempts, retry_after)
        if wait is None or wait >= self.deadline.remaining():
            return None
        if self._on_retry is not None:
            self._on_retry(cause)
        (self.span or trace.get_current_span()).add_event(
            RETRY_EVENT,
            {
                "gensearch.upstream.attempt": self.attempts,
                "gensearch.upstream.cause": cause,
                "gensearch.upstream.rate_limited": rate_limited,
                "gensearch.upstream.wait_seconds": round(wait, 3),
            },
        )
        # INFO: a line per attempt of a call (the outage, if it is one, is logged once by
        # the caller); the metrics count retries.
        log.info(
            "retrying upstream call",
            extra={
                "provider": self.upstream,
                "attempt": self.attempts,
                "cause": cause,
                "wait_s": round(wait, 3),
            },
        )
        return wait
