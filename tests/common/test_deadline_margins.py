"""An upstream exchange (chat completions, embeddings, rerank) ends a clear gap before the
chassis cuts its call, so the exchange's precise status ("the embeddings endpoint did not
answer before the call's deadline") leaves before the chassis' generic one ("the call's
deadline ... was about to pass"). Before, the two margins were min(0.25 s, 10 %) and
min(0.2 s, 5 %): 0.05 s apart from a 4 s deadline up, which a loaded machine missed, and a
request begun late in a call ended after the chassis' cut."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.call_deadline import DeadlineLimit, margin, outlasting, upstream_margin
from services.common.upstream_retry import exchange_seconds
from services.gateway.generative_request import models_check_seconds


@given(st.floats(min_value=0.001, max_value=3600.0))
def test_the_upstream_margin_leaves_a_whole_chassis_margin_before_the_cut(
    timeout: float,
) -> None:
    gap = upstream_margin(timeout) - margin(timeout)
    assert gap >= margin(timeout) > 0
    if timeout >= 4.0:
        assert gap >= 0.2  # the time a status is given to reach its client


class _Arriving:
    """What the chassis reads of a call as it arrives: the seconds left."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float:
        return self.remaining


@pytest.mark.parametrize(
    ("arrived_with", "left_at_request"),
    [(4.0, 4.0), (4.0, 1.0), (3.0, 2.5), (60.0, 0.5), (1.0, 0.3), (0.5, 0.4)],
)
async def test_a_request_begun_late_in_a_call_still_ends_before_the_chassis_cut(
    arrived_with: float, left_at_request: float
) -> None:
    # The call arrived with ``arrived_with`` seconds; a request (a second batch, a rerank
    # after the search) begins with ``left_at_request`` left. The chassis cuts the call
    # margin(arrived_with) before its deadline; the request must end a whole chassis
    # margin before that. Before, (4.0, 1.0) ended 0.1 s before the deadline, after the
    # chassis' cut at 0.2 s, and (60.0, 0.5) 0.05 s before it.
    cutoff = DeadlineLimit(0.001, "MIN_DEADLINE").cutoff(cast(Any, _Arriving(arrived_with)))
    assert cutoff is not None
    request_ends_before_deadline = left_at_request - exchange_seconds(left_at_request, 30.0)
    chassis_cuts_before_deadline = cutoff.margin()
    gap = request_ends_before_deadline - chassis_cuts_before_deadline
    assert gap >= margin(arrived_with) - 1e-9, gap


def test_a_request_outside_a_call_counts_its_margin_from_its_own_time() -> None:
    # No served call (an import run by hand, say): the request's own time left stands for
    # what the call had.
    assert exchange_seconds(4.0, 30.0) == pytest.approx(4.0 - upstream_margin(4.0))


@given(st.floats(min_value=0.01, max_value=3600.0))
def test_a_downstream_call_given_outlasting_ends_its_upstream_work_with_the_budget(
    budget: float,
) -> None:
    # The gateway's fan-out gives generation outlasting(budget): generation's upstream work
    # then ends when the hit's budget does, and the gateway's own timer reports it.
    deadline = outlasting(budget)
    assert deadline - upstream_margin(deadline) == pytest.approx(budget)


@given(st.floats(min_value=0.0, max_value=3600.0, allow_nan=False))
def test_the_models_check_never_outlasts_the_generation_budget(budget: float) -> None:
    """The check of a request's models (ListModels when the gateway's copy is cold) takes
    at most 2 s and never more than the budget, a spent one (0, as ``room_before_cut``
    gives when the search used all but the margin) a moment only. Before, a budget of 0
    gave the check 2 s (``budget or 2.0``), past the caller's deadline."""
    seconds = models_check_seconds(budget)
    assert 0 < seconds <= 2.0
    assert seconds <= max(budget, 0.001)
