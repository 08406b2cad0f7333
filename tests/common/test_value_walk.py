"""``check_value``'s walk over a client's value: what it holds while it reads (the test
that failed on the old walk), the field it names (guards: the old walk named the same
fields; the services' own tests name fields through their requests too), and that its
``ValueTally`` counts as retrieval's ``count_values`` (a guard tying the two codes)."""

from __future__ import annotations

import math
import tracemalloc

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.values import TooManyValues, ValueTally, check_value
from services.retrieval.value_count import count_values

WIDE = 100_000


def _parsed(values: dict[str, object]) -> struct_pb2.Struct:
    """A Struct as a server gets it: parsed from the wire."""
    built = struct_pb2.Struct()
    built.update(values)
    return struct_pb2.Struct.FromString(built.SerializeToString())


def test_the_walk_holds_as_much_as_the_value_is_deep_not_as_wide() -> None:
    """A list's every element was pushed at once and held until read: each outlived the
    young GC generation, and a 3.7 MB GenerateOnObjects of 60 lists of 15,500 values set
    off full collections of the gateway's heap, 7-10 s of its event loop. Before, the
    walk of one list of 100,000 values held about 20 MB at its peak; now a few entries."""
    value = _parsed({"tags": [True] * WIDE, "deep": {"a": [{"b": [1.0, 2.0]}]}})
    # tracemalloc sees every thread's allocations: a server thread another test left
    # running may allocate during one walk (this failed once so in the whole suite, over
    # 256 KiB). The least of three walks is the walk's own; the old walk held ~20 MB each.
    peaks = []
    for _ in range(3):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            check_value(value, "properties")
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        finally:
            tracemalloc.stop()
    assert min(peaks) < 1024 * 1024, peaks


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        ({"a": [1.0, {"b": math.nan}]}, "properties.a[1].b", "NUMBER_NOT_FINITE"),
        # A list's order is the reading order (a Struct's keys come in the map's order,
        # which differs from process to process).
        ({"a": [1.0, [math.inf], math.nan]}, "properties.a[1][0]", "NUMBER_NOT_FINITE"),
        ({"a": {"b": {"c": {"d": 1.0}}}}, "properties.a.b.c", "NESTING_TOO_DEEP"),
        ({"k" * 100: {"x": -math.inf}}, f"properties.{'k' * 64}.x", "NUMBER_NOT_FINITE"),
    ],
)
def test_the_first_offender_in_reading_order_is_named(
    values: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_value(_parsed(values), "properties", max_depth=3)
    assert (caught.value.field, caught.value.reason) == (field, reason)


def test_a_value_with_no_kind_is_named_where_it_must_have_one() -> None:
    value = struct_pb2.Struct()
    value.fields["a"].list_value.values.add().number_value = 1.0
    value.fields["a"].list_value.values.add()  # no kind set
    check_value(value, "info")  # read as null where kinds are not required
    with pytest.raises(InvalidArgument) as caught:
        check_value(value, "info", kind_required=True)
    assert (caught.value.field, caught.value.reason) == ("info.a[1]", "VALUE_NOT_SET")
    bare = struct_pb2.Value()
    with pytest.raises(InvalidArgument) as caught:
        check_value(bare, "value", kind_required=True)
    assert caught.value.field == "value"
    check_value(struct_pb2.Value(number_value=2.0), "value", max_depth=0)


# JSON-like values as a client sends them: finite numbers (check_value refuses the others),
# nested a few levels, empty containers and nulls included.
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=40,
)
_OBJECTS = st.dictionaries(st.text(max_size=3), _VALUES, max_size=5)


@settings(max_examples=200, deadline=None)
@given(_OBJECTS, st.integers(min_value=0, max_value=60))
def test_the_gateways_tally_counts_as_retrievals_count(
    values: dict[str, object], limit: int
) -> None:
    """The gateway bounds inline objects' values with ``ValueTally`` (in the walk), retrieval
    a write batch's with ``value_count.count_values``: one counting rule, two codes. They
    agree on every object, and both refuse exactly the objects past the bound, so an object
    the gateway lets through is never refused by retrieval for its count, nor the reverse."""
    properties = _parsed(values)
    everything = count_values(properties, stop_past=10**9)
    whole = ValueTally(10**9)
    check_value(properties, "properties", max_depth=10**6, tally=whole)
    assert whole.counted == everything

    bounded = ValueTally(limit)
    try:
        check_value(properties, "properties", max_depth=10**6, tally=bounded)
    except TooManyValues as past:
        assert past.counted > limit
        assert count_values(properties, stop_past=limit) > limit
    else:
        assert bounded.counted == everything <= limit
        assert count_values(properties, stop_past=limit) == everything
