"""The shared conversions to protobuf well-known types."""

from __future__ import annotations

from google.protobuf import json_format

from services.common.well_known import duration, struct


def test_a_struct_holds_nested_json_values() -> None:
    values = {"a": [1.5, "x", None, True], "b": {"c": {}}}
    assert json_format.MessageToDict(struct(values)) == values


def test_a_duration_rounds_to_the_nearest_nanosecond() -> None:
    assert (duration(1.25).seconds, duration(1.25).nanos) == (1, 250_000_000)
    # 1.001 s is 1000999999.99... ns as a float: rounded, not truncated.
    assert (duration(1.001).seconds, duration(1.001).nanos) == (1, 1_000_000)
