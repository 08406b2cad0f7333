"""Units of answering: a corrected answer counts both calls without changing either."""

from __future__ import annotations

import copy

from services.generation.answering import _sum
from services.generation.providers.base import Completion, DebugInfo, Usage


def _completion(text: str, tokens: int, attempts: int, waited: float) -> Completion:
    return Completion(
        text=text,
        model="m",
        finish_reason="stop",
        usage=Usage(tokens, tokens, 2 * tokens),
        debug=DebugInfo(url="http://u", request_body=text),
        attempts=attempts,
        waited=waited,
    )


def test_a_corrected_answer_sums_both_calls_and_leaves_them_as_they_were() -> None:
    first, second = _completion("bad", 10, 2, 0.5), _completion("good", 3, 1, 0.25)
    before = copy.deepcopy((first, second))
    total = _sum(first, second)
    assert (total.text, total.debug.request_body) == ("good", "good")
    assert total.usage == Usage(13, 13, 26)
    assert (total.attempts, total.waited) == (3, 0.75)
    assert (first, second) == before  # DebugInfo is mutable: neither call's is changed
