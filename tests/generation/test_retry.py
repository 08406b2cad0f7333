"""Backoff with full jitter and Retry-After parsing."""

from __future__ import annotations

import email.utils
import time

import pytest

from services.generation.retry import RetryPolicy
from services.generation.upstream import UpstreamFault, parse_retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after": " 7 "}, 7.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "soon"}, None),
        ({}, None),
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
    fault = UpstreamFault("http", status=429, retry_after=4.0)
    assert policy.delay(1, fault) == 4.0
    assert policy.delay(1, UpstreamFault("http", status=429, retry_after=11.0)) is None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (502, True), (503, True), (504, True), (400, False),
     (401, False), (403, False), (404, False), (501, False)],
)  # fmt: skip
def test_which_statuses_are_retried(status: int, retryable: bool) -> None:
    assert UpstreamFault("http", status=status).retryable is retryable


def test_connection_faults_are_retried_malformed_answers_are_not() -> None:
    assert UpstreamFault("connection").retryable
    assert not UpstreamFault("bad_response").retryable
    assert not UpstreamFault("timeout", retryable=False).retryable
