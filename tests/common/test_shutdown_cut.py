"""The stopping server's cut of a call (services/common/shutdown_cut.py), told to the call's
client as UNAVAILABLE / SHUTTING_DOWN whatever the cancelled work ended with. The chassis
and the services' own tests (tests/generation, tests/gateway, tests/retrieval) run it
through real gRPC; here, what the work does with its cancellation."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import Unavailable
from services.common.shutdown_cut import REASON, Draining


class _Converted(Exception):
    """An error a library raises in place of the cancellation it was given."""


async def _cut_while(work: asyncio.Event, convert: bool) -> asyncio.Task[None]:
    draining = Draining(10.0, "GENSEARCH_TEST_GRACE_PERIOD", "test")

    async def call() -> None:
        async with draining.call():
            work.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if convert:
                    raise _Converted("the request was aborted") from None
                raise

    task = asyncio.create_task(call())
    await work.wait()
    assert draining.end_calls() == 1
    await asyncio.wait({task})
    return task


@pytest.mark.parametrize("convert", [False, True])
async def test_a_cut_call_ends_shutting_down_whatever_its_work_raised(convert: bool) -> None:
    """Work that turns its cancellation into an error of its own (a client library's
    'aborted'): the server's cut is still the cause, as a deadline's Cutoff says
    DEADLINE_EXCEEDED for it (call_deadline.py). Before, that error went out as it was:
    INTERNAL for an unknown one (test failed before, the converting case)."""
    task = await _cut_while(asyncio.Event(), convert)
    ended = task.exception()
    assert isinstance(ended, Unavailable), ended
    assert ended.reason == REASON
    assert ended.metadata["setting"] == "GENSEARCH_TEST_GRACE_PERIOD"
    # The cut's cancellation taken back: the chassis' work after it is not cancelled.
    assert task.cancelling() == 0


def test_the_grace_period_is_named_in_full() -> None:
    """A grace period of 4 h 10 min 0.25 s (within GRACE_PERIOD's bound) read "15000.2" with
    ``:g`` (test failed before)."""
    draining = Draining(15000.25, "GENSEARCH_TEST_GRACE_PERIOD")
    error = draining.call().error()
    assert error.metadata["grace_period_seconds"] == "15000.25"
    assert "(15000.25 s, GENSEARCH_TEST_GRACE_PERIOD)" in error.message
