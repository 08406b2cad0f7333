"""What the retrieval service's two OpenAI-compatible upstreams (embeddings in
``embedders``, rerank in ``rerankers``) share: one request's attempts under the shared retry
policy (``services.common.upstream_retry``), with the generation service's rule for 429s,
and the errors a request that gave up ends in.

A 429 only asks us to slow down: it is retried, after its ``Retry-After`` (else the
backoff), for as long as the request's deadline allows, and spends none of
``EMBED_RETRIES`` / ``RERANK_RETRIES``, which bound the other faults (408, 409, 5xx, no
answer). A request that ends on a 429 (its wait does not fit what is left, or is above
``RETRY_AFTER_MAX``), or on its deadline in an attempt made after one, is
RESOURCE_EXHAUSTED with a RetryInfo, never UNAVAILABLE: the endpoint is up, only busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai

from services.common.call_deadline import call_cutoff, ended_early
from services.common.errors import DeadlineExceeded, ResourceExhausted
from services.common.openai_api import too_large
from services.common.upstream_retry import (
    Deadline,
    Retrier,
    RetryPolicy,
    exchange_seconds,
    is_rate_limited,
    is_transient,
    server_wait,
)

RETRY_AFTER_MAX_SETTING = "GENSEARCH_RETRIEVAL_RETRY_AFTER_MAX"
# What a request that waited out its time for a slot (``upstream_slots``) is told to wait.
SLOT_RETRY_AFTER = 1.0


class Attempts:
    """The attempts of one embeddings or rerank request: ``begin()`` before each, and after
    a failed one ``await retry(err, cause)`` (sleeps; False when ``err`` is final)."""

    __slots__ = ("_call_ends", "_limited", "deadline", "retrier", "time_left")

    def __init__(
        self, policy: RetryPolicy, time_left: float | None, timeout: float, upstream: str
    ) -> None:
        """``time_left``: seconds before the served RPC's deadline (None: it has none);
        ``timeout``: the operator's bound on the whole exchange (EMBED_/RERANK_TIMEOUT)."""
        self.time_left = time_left
        seconds = exchange_seconds(time_left, timeout)
        self.deadline = Deadline(seconds)
        self.retrier = Retrier(policy, self.deadline, upstream)
        self._limited: openai.APIStatusError | None = None  # the last 429, if any
        # When the RPC's deadline (not the timeout) bounds the exchange: it ends there.
        self._call_ends = (
            asyncio.get_running_loop().time() + time_left
            if time_left is not None and seconds < timeout
            else None
        )

    @property
    def count(self) -> int:
        return self.retrier.attempts

    def begin(self) -> int:
        return self.retrier.begin()

    async def retry(self, err: BaseException, cause: str) -> bool:
        limited = is_rate_limited(err)
        if limited:
            assert isinstance(err, openai.APIStatusError)
            self._limited = err
        return await self.retrier.pause(
            retryable=is_transient(err),
            retry_after=server_wait(err),
            cause=cause,
            rate_limited=limited,
        )

    def rate_limit(self, err: BaseException) -> openai.APIStatusError | None:
        """The 429 to report for a request that ends on ``err``: ``err`` itself, or the
        last 429 when the deadline cut an attempt made after it (the provider's limit is
        why the request did not get through, not a slow answer); None: ``err`` is no
        rate limit."""
        if is_rate_limited(err):
            assert isinstance(err, openai.APIStatusError)
            return err
        if isinstance(err, TimeoutError) and self.deadline.expired:
            return self._limited
        return None

    def out_of_time(self, err: BaseException, who: str) -> DeadlineExceeded | None:
        """The DEADLINE_EXCEEDED of a request whose last attempt the caller's own deadline
        cut (None: ``err`` is something else, or EMBED_/RERANK_TIMEOUT was the bound). The
        exchange ends a margin before that deadline so this status reaches the caller; as
        UNAVAILABLE it would have told the caller the endpoint was down and to retry."""
        ends = self._call_ends
        if ends is None or not isinstance(err, TimeoutError) or not self.deadline.expired:
            return None
        tries = f" after {self.count} attempts" if self.count > 1 else ""
        # What the call had when it arrived, as in the chassis' own cut (the request may
        # have begun later: a second batch, a rerank after the search); only outside a
        # served call, what it had when this request began.
        cutoff = call_cutoff()
        had = self.time_left if cutoff is None else cutoff.timeout
        assert had is not None  # ``ends`` is set only under a deadline
        return ended_early(
            f"{who} did not answer before the call's deadline{tries}: give the call a "
            "longer timeout",
            timeout=had,
            left=ends - asyncio.get_running_loop().time(),
        )

    def rate_limited(
        self,
        limited: openai.APIStatusError,
        *,
        who: str,
        what: str,
        timeout_setting: str,
        reason: str,
        metadata: dict[str, str] | None = None,
    ) -> ResourceExhausted:
        """The RESOURCE_EXHAUSTED of a request that ends on the 429 ``limited``. ``who``
        names the endpoint, ``what`` the request (in "longer than this ... may"),
        ``timeout_setting`` its timeout. Its RetryInfo (and ``retry_after_ms``) is the wait
        the 429 asked for; without one (or 0), the backoff the next attempt would have
        waited at most, as a 429 without a wait is retried after it."""
        asked = server_wait(limited)
        tries = f" after {self.count} attempts" if self.count > 1 else ""
        bounds = f"its deadline, {timeout_setting}"
        if asked:
            wait = asked
            message = (
                f"{who} is rate limiting (HTTP 429){tries} and asks to wait {wait:.1f} s, "
                f"longer than this {what} may ({bounds}, {RETRY_AFTER_MAX_SETTING})"
            )
        else:
            wait = self.retrier.policy.ceiling(self.count)
            message = (
                f"{who} is rate limiting (HTTP 429){tries}, and this {what} ran out of time "
                f"for another attempt ({bounds})"
            )
        return ResourceExhausted(
            message,
            reason=reason,
            retry_after=wait,
            metadata={
                **(metadata or {}),
                "retry_after_ms": str(round(wait * 1000)),
                "attempts": str(self.count),
            },
        )


def slots_busy(
    who: str, reason: str, metadata: dict[str, str] | None = None
) -> Callable[[str, int], ResourceExhausted]:
    """The RESOURCE_EXHAUSTED of a request that found no slot at ``who`` in its time
    (``upstream_slots``): the endpoint's rate-limit ``reason``, as the wait is the same
    kind (retry shortly), with the setting that held it."""

    def busy(setting: str, limit: int) -> ResourceExhausted:
        whose = "the caller's tenant" if setting.endswith("_PER_TENANT") else "this replica"
        return ResourceExhausted(
            f"{whose} had {limit} requests in flight to {who} ({setting}), and none ended "
            "before this request ran out of time; retry shortly",
            reason=reason,
            retry_after=SLOT_RETRY_AFTER,
            metadata={
                **(metadata or {}),
                "limit": str(limit),
                "setting": setting,
                "retry_after_ms": str(round(SLOT_RETRY_AFTER * 1000)),
            },
        )

    return busy


def problem(err: BaseException) -> str:
    """What went wrong, in a few words safe to show (no body: it may quote the key)."""
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}"
    if isinstance(err, openai.APIConnectionError):
        return "connection failed"
    if isinstance(err, TimeoutError):
        return "no answer in time"
    big = too_large(err)
    if big is not None:
        return f"{big} (GENSEARCH_RETRIEVAL_MAX_RESPONSE_BYTES)"
    return "malformed body"
