"""The shared retry policy: backoff with full jitter, Retry-After parsing, which SDK errors
are retried, and the deadline bound."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx2
import openai
import pytest

from services.common.upstream_retry import (
    Deadline,
    Retrier,
    RetryPolicy,
    exchange_seconds,
    is_transient,
    parse_retry_after,
    server_wait,
)

REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers, request=REQUEST)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": " 7 "}, 7.0),  # surrounding whitespace is the field's, not the value's
        ({"Retry-After": "\t120"}, 120.0),
        ({"Retry-After": "007"}, 7.0),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "12.5"}, 0.0125),
        ({"Retry-After": "soon"}, None),
        ({}, None),
        # RFC 9110: delay-seconds = 1*DIGIT (ASCII), else an HTTP-date; anything else is
        # no Retry-After at all. Before, whatever Python's float() took was a delay.
        ({"Retry-After": "0.5"}, None),
        ({"Retry-After": "-4"}, None),
        ({"Retry-After": "+5"}, None),
        ({"Retry-After": "1_000"}, None),
        ({"Retry-After": "1e3"}, None),
        ({"Retry-After": "1 2"}, None),
        ({"Retry-After": "\u0661\u0662"}, None),  # Arabic-Indic digits
        ({"Retry-After": "\uff11\uff12"}, None),  # full-width digits
        ({"Retry-After": "12\u00a0"}, None),  # a no-break space is not whitespace here
        ({"Retry-After": "Infinity"}, None),
        ({"retry-after-ms": "1_000"}, None),
        ({"retry-after-ms": "-250"}, None),
        ({"retry-after-ms": "\u0661\u0662"}, None),
        ({"retry-after-ms": "+5", "Retry-After": "2"}, 2.0),  # a bad one falls through
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    wait = parse_retry_after({"Retry-After": header}, now=now)
    assert wait is not None
    assert 29 <= wait <= 30
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0


def test_full_jitter_stays_under_the_exponential_ceiling() -> None:
    policy = RetryPolicy(base_backoff=0.1, max_backoff=1.0)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        samples = [policy.backoff(attempt) for _ in range(500)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # spread over the whole range, not a fixed wait
        assert min(samples) < ceiling * 0.2


def test_retry_after_wins_over_backoff_up_to_a_cap() -> None:
    policy = RetryPolicy(base_backoff=0.1, max_backoff=1.0, retry_after_max=10)
    assert policy.delay(1, 4.0) == 4.0
    assert policy.delay(1, 11.0) is None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(408, True), (409, True), (429, True), (500, True), (501, True), (502, True), (503, True),
     (504, True), (400, False), (401, False), (403, False), (404, False), (422, False)],
)  # fmt: skip
def test_which_statuses_are_retried(status: int, retryable: bool) -> None:
    assert is_transient(status_error(status)) is retryable


def test_connection_errors_are_retried_other_errors_are_not() -> None:
    assert is_transient(openai.APIConnectionError(request=REQUEST))
    assert is_transient(openai.APITimeoutError(request=REQUEST))
    assert not is_transient(ValueError("not JSON"))
    assert not is_transient(TimeoutError())  # the call's own deadline: final


def test_server_wait_reads_the_error_response_headers() -> None:
    assert server_wait(status_error(429, {"retry-after-ms": "1500"})) == 1.5
    assert server_wait(status_error(503, {"Retry-After": "2"})) == 2.0
    assert server_wait(status_error(500)) is None
    assert server_wait(openai.APIConnectionError(request=REQUEST)) is None


async def test_retrier_counts_attempts_and_stops_at_max_attempts() -> None:
    causes: list[str] = []
    retrier = Retrier(
        RetryPolicy(max_attempts=3, base_backoff=0.0), Deadline(10), "p", on_retry=causes.append
    )
    outcomes = []
    for _ in range(4):
        retrier.begin()
        outcomes.append(await retrier.pause(retryable=True, retry_after=None, cause="503"))
    assert outcomes == [True, True, False, False]
    assert causes == ["503", "503"]
    retrier = Retrier(RetryPolicy(), Deadline(10), "p")
    retrier.begin()
    assert not await retrier.pause(retryable=False, retry_after=None, cause="400")


async def test_retrier_never_sleeps_past_the_deadline() -> None:
    retrier = Retrier(RetryPolicy(max_attempts=100), Deadline(0.5), "p")
    retrier.begin()
    started = asyncio.get_running_loop().time()
    # The server asks for more than is left: the fault is returned at once.
    assert not await retrier.pause(retryable=True, retry_after=1.0, cause="429")
    assert asyncio.get_running_loop().time() - started < 0.05
    assert await retrier.pause(retryable=True, retry_after=0.1, cause="429")


async def test_429s_spend_none_of_the_retries() -> None:
    # max_attempts bounds the other faults alone, however many 429s came first: before,
    # 429s counted among the attempts, so the 5xx after three of them was final.
    retrier = Retrier(RetryPolicy(max_attempts=2, base_backoff=0.0), Deadline(10), "p")
    waits = []
    for rate_limited in (True, True, True, False, True, False):
        retrier.begin()
        waits.append(
            retrier.plan(retryable=True, retry_after=None, cause="x", rate_limited=rate_limited)
        )
    assert [wait is not None for wait in waits] == [True, True, True, True, True, False]
    assert retrier.attempts == 6


@pytest.mark.parametrize(
    ("time_left", "timeout", "expected"),
    [
        (None, 30.0, 30.0),  # no deadline: the timeout alone
        (10.0, 30.0, 9.6),  # the call's deadline less twice the chassis' 0.2 s
        (1.0, 30.0, 0.9),  # a tenth of a short one (twice the chassis' 5 %)
        (100.0, 30.0, 30.0),  # the timeout when it ends first
    ],
)
def test_an_exchange_ends_a_margin_before_its_callers_deadline(
    time_left: float | None, timeout: float, expected: float
) -> None:
    assert exchange_seconds(time_left, timeout) == pytest.approx(expected)
