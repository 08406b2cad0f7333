"""Fallback chains: a request's (provider, model) pairs tried in order.

A pair with a next one after it is not retried on what that next pair takes over: a 5xx,
a failed (refused, reset) connection, a timeout or a malformed answer ends it at once
(``next_pair``, the provider adapter's ``_next_pair_takes``), as issue 13 asks. A 429 is
still retried on its own pair while the pair's time share allows. The last pair (and a
call with no chain) keeps every retry (429 with Retry-After, 5xx, dropped connections).
What a pair still raises decides here whether the next pair is worth trying:

* falls back: the upstream is unavailable (5xx, connection failures, malformed answers),
  timed out, or kept rate limiting until retries were exhausted — UNAVAILABLE,
  DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED;
* does not: everything the caller or the operator must fix — a 4xx other than 429, an
  unknown model, a missing or rejected key, bad input, a refused URL. Another model would
  get the same request and fail the same way, or hide a mistake.

Time: all pairs share the call's deadline. While more pairs remain, one pair may spend at
most ``share`` of the time left (so a pair that hangs still leaves time for the next); the
last pair gets all of it.

A stream falls back only before its first text delta: once text reached our caller,
another model cannot continue it.

Calls: every request a pair sent upstream (its retries included) is added to the
answer's ``Calls``, whether the pair answered or failed, so the reply (or the error) can
say how many LLM calls the answer really cost (``GenerateResponse.upstream_calls``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import grpc

from services.common.errors import ATTEMPTS, UPSTREAM_CALLS, ServiceError, metadata_count
from services.common.upstream_retry import Deadline
from services.generation.metrics import FALLBACKS
from services.generation.providers.base import (
    Completion,
    CompletionRequest,
    Provider,
    StreamChunk,
)

log = logging.getLogger("gensearch.generation.fallback")

#: ErrorInfo metadata: the ``fallback_index`` of each pair skipped for the call, "1,2".
SKIPPED_FALLBACKS = "skipped_fallbacks"

FALLBACK_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass
class Calls:
    """Requests sent upstream for one answer: every attempt of every pair tried and of
    a corrective retry."""

    made: int = 0
    # A stream whose text has begun to come and whose final chunk (its attempts) has not:
    # its request surely reached the provider, so an answer ended meanwhile (the server's
    # cut) counts it. Before, a stream's request was counted only at its final chunk.
    streaming: bool = False

    def failed(self, err: ServiceError) -> None:
        """Adds the attempts of a pair that raised: the provider adapter puts them in
        the error's metadata (``upstream.to_service_error``; 0 when nothing was sent)."""
        self.streaming = False  # its attempts, counted here
        self.made += metadata_count(err.metadata, ATTEMPTS) or 0

    def finished(self, attempts: int) -> None:
        """Adds the attempts of a stream that came to its final chunk."""
        self.streaming = False
        self.made += attempts

    def charged_to(self, err: ServiceError) -> ServiceError:
        """``err`` carrying the count, for a caller that charges calls even when the
        answer failed: a stream under way counted once (its attempts are not known yet)."""
        err.metadata[UPSTREAM_CALLS] = str(self.made + self.streaming)
        return err


@dataclass(frozen=True)
class Target:
    """One pair of the chain: ``index`` 0 is the primary, n is ``fallback[n-1]``."""

    index: int
    provider: Provider
    request: CompletionRequest


def falls_back(err: ServiceError) -> bool:
    return err.code in FALLBACK_CODES


def _deadline_for(deadline: Deadline, share: float, last: bool) -> Deadline:
    return deadline if last else Deadline(deadline.remaining() * share)


def _moving_on(target: Target, err: ServiceError) -> None:
    FALLBACKS.labels(target.provider.name, err.code.name).inc()
    log.warning(
        "falling back to the next provider/model",
        extra={
            "provider": target.provider.name,
            "model": target.request.model,
            "fallback_index": target.index,
            "status": err.code.name,
            "reason": err.reason,
        },
    )


def _chain_ended(err: ServiceError, skipped: Sequence[int], deadline: Deadline) -> None:
    """``err`` of the last pair kept, naming the pairs skipped for the call (their
    ``fallback_index``, ErrorInfo metadata ``skipped_fallbacks``): a caller whose insurance
    was never tried is told so, not handed the bare failure of the pair before them. Only
    for an error that would have moved on to a next pair (one that falls back, with time
    left): a 4xx or the call's expired deadline ends any chain, so the skipped pairs would
    not have been tried either, and naming them would send the caller to fix its chain."""
    if skipped and falls_back(err) and not deadline.expired:
        err.metadata[SKIPPED_FALLBACKS] = ",".join(str(index) for index in skipped)


async def complete(
    chain: Sequence[Target],
    deadline: Deadline,
    share: float,
    calls: Calls,
    skipped: Sequence[int] = (),
) -> tuple[Target, Completion]:
    """The first pair's completion that succeeds; the last error when none does (naming
    the ``skipped`` pairs when it is the last pair's). Every pair's attempts are added to
    ``calls``."""
    for position, target in enumerate(chain):
        last = position == len(chain) - 1
        try:
            done = await target.provider.complete(
                target.request, _deadline_for(deadline, share, last), next_pair=not last
            )
        except ServiceError as err:
            calls.failed(err)
            if last:
                _chain_ended(err, skipped, deadline)
            if last or not falls_back(err) or deadline.expired:
                raise
            _moving_on(target, err)
            continue
        calls.made += done.attempts
        return target, done
    raise AssertionError("an empty fallback chain")  # pragma: no cover - never empty


async def stream(
    chain: Sequence[Target],
    deadline: Deadline,
    share: float,
    calls: Calls,
    skipped: Sequence[int] = (),
) -> AsyncGenerator[tuple[Target, StreamChunk], None]:
    """The first pair's stream that gets going: a pair failing before its first text
    delta gives way to the next; after it, its error is the stream's. The last pair's
    failure before text names the ``skipped`` pairs. Every pair's attempts are added to
    ``calls`` (the answering pair's when its final chunk comes)."""
    for position, target in enumerate(chain):
        last = position == len(chain) - 1
        sent = False
        try:
            async with contextlib.aclosing(
                target.provider.stream(
                    target.request, _deadline_for(deadline, share, last), next_pair=not last
                )
            ) as chunks:
                async for chunk in chunks:
                    sent = sent or bool(chunk.delta)
                    if chunk.final is not None:
                        calls.finished(chunk.final.attempts)
                    elif chunk.delta:
                        calls.streaming = True
                    yield target, chunk
            return
        except ServiceError as err:
            calls.failed(err)
            if last and not sent:
                _chain_ended(err, skipped, deadline)
            if sent or last or not falls_back(err) or deadline.expired:
                raise
            _moving_on(target, err)
