"""Property: a bounded trace always fits its bound, keeps what already fitted untouched,
and says when it was cut (services/common/turn_size.py)."""

from __future__ import annotations

from typing import Any

from gensearch.memory.v1 import memory_service_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.turn_size import ELLIPSIS, bound_trace

_leaves = st.one_of(st.text(max_size=3000), st.integers(-(10**6), 10**6), st.booleans(), st.none())
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
_structs = st.dictionaries(st.text(max_size=8), _values, max_size=6)


def _trace(given_: dict[str, Any], produced: dict[str, Any]) -> pb.Trace:
    trace = pb.Trace(step=pb.STEP_GENERATION, trace_number=3)
    trace.input.update(given_)
    trace.output.update(produced)
    trace.duration.FromMilliseconds(12)
    return trace


@settings(max_examples=200, deadline=None)
@given(_structs, _structs, st.integers(min_value=64, max_value=20_000))
def test_a_bounded_trace_fits_and_says_so(
    given_: dict[str, Any], produced: dict[str, Any], limit: int
) -> None:
    original = _trace(given_, produced)
    trace = pb.Trace()
    trace.CopyFrom(original)
    bound_trace(trace, limit)
    assert trace.ByteSize() <= limit or (
        # Only what is not ours to cut is left: the step, number and timings.
        not trace.HasField("input") and not trace.HasField("output")
    )
    if original.ByteSize() <= limit:
        assert trace == original
    else:
        assert trace.truncated
        assert trace.step == original.step and trace.duration == original.duration
        # Whatever survives was cut from the original's text, never invented.
        for kept, was in ((trace.input, original.input), (trace.output, original.output)):
            for key, value in kept.fields.items():
                text = value.string_value
                if value.WhichOneof("kind") == "string_value" and text.endswith(ELLIPSIS):
                    assert was.fields[key].string_value.startswith(text[:-1])
