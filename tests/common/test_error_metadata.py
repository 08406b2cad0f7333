"""Counts in a failed call's ErrorInfo metadata, read one way by whoever reads them
(generation's fallback chain, the gateway's results and quota)."""

from __future__ import annotations

from services.common.errors import ATTEMPTS, UPSTREAM_CALLS, metadata_count, upstream_calls


def test_a_count_is_read_only_when_it_is_one() -> None:
    metadata = {ATTEMPTS: "3", UPSTREAM_CALLS: "0", "wait_ms": "-5", "provider": "x"}
    assert metadata_count(metadata, ATTEMPTS) == 3
    assert metadata_count(metadata, UPSTREAM_CALLS) == 0  # there, and zero
    assert metadata_count(metadata, "wait_ms") is None  # not a count
    assert metadata_count(metadata, "provider") is None
    assert metadata_count({}, ATTEMPTS) is None


def test_upstream_calls_are_zero_when_the_error_does_not_say() -> None:
    assert upstream_calls({UPSTREAM_CALLS: "4"}) == 4
    assert upstream_calls({UPSTREAM_CALLS: "four"}) == 0
    assert upstream_calls({}) == 0
