"""The shared conversions to protobuf well-known types."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from services.common.errors import InvalidArgument
from services.common.well_known import (
    check_timestamp,
    duration,
    duration_seconds,
    properties_sha256,
    struct,
)


def test_a_struct_holds_nested_json_values() -> None:
    values = {"a": [1.5, "x", None, True], "b": {"c": {}}}
    assert json_format.MessageToDict(struct(values)) == values


def test_equal_properties_have_one_digest_whatever_their_order() -> None:
    one = struct({"title": "Dune", "meta": {"a": 1, "b": [1, "x"]}, "year": 1965})
    other = struct({"year": 1965.0, "meta": {"b": [1, "x"], "a": 1}, "title": "Dune"})
    assert properties_sha256(one) == properties_sha256(other)
    assert len(properties_sha256(one)) == 32
    for changed in ({"year": 1966}, {"meta": {"a": 1, "b": [1, "y"]}}, {"extra": None}):
        revised = struct({"title": "Dune", "meta": {"a": 1, "b": [1, "x"]}, "year": 1965})
        revised.update(changed)
        assert properties_sha256(revised) != properties_sha256(one), changed


def test_a_duration_rounds_to_the_nearest_nanosecond() -> None:
    assert (duration(1.25).seconds, duration(1.25).nanos) == (1, 250_000_000)
    # 1.001 s is 1000999999.99... ns as a float: rounded, not truncated.
    assert (duration(1.001).seconds, duration(1.001).nanos) == (1, 1_000_000)


@pytest.mark.parametrize(
    ("secs", "nanos", "value"),
    [(5, 0, 5.0), (1, 500_000_000, 1.5), (-1, -500_000_000, -1.5), (0, -5, -5e-9), (0, 0, 0.0)],
)
def test_a_valid_duration_reads_as_seconds(secs: int, nanos: int, value: float) -> None:
    got = duration_seconds(duration_pb2.Duration(seconds=secs, nanos=nanos), "ttl")
    assert got == pytest.approx(value)


@pytest.mark.parametrize(
    ("secs", "nanos"),
    [
        (5, -5),  # mixed signs: protobuf would read 4.999999995 s
        (-5, 5),
        (0, 1_000_000_000),  # nanos past a second
        (1, -1_000_000_000),
        (315_576_000_001, 0),  # past the 10,000 years a Duration may span
    ],
)
def test_an_invalid_duration_is_refused_naming_the_field(secs: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        duration_seconds(duration_pb2.Duration(seconds=secs, nanos=nanos), "generate.timeout")
    assert caught.value.field == "generate.timeout"


@pytest.mark.parametrize(
    ("secs", "nanos"),
    [(-62_135_596_800, 0), (0, 0), (253_402_300_799, 999_999_999)],
)
def test_a_timestamp_within_its_span_is_valid(secs: int, nanos: int) -> None:
    check_timestamp(timestamp_pb2.Timestamp(seconds=secs, nanos=nanos), "start_time")


@pytest.mark.parametrize(
    ("secs", "nanos"),
    [
        (-62_135_596_801, 0),  # before 0001-01-01
        (253_402_300_800, 0),  # after 9999-12-31
        (0, -1),  # nanos are never negative, before 1970 too
        (0, 1_000_000_000),
    ],
)
def test_an_invalid_timestamp_is_refused_naming_the_field(secs: int, nanos: int) -> None:
    value = timestamp_pb2.Timestamp(seconds=secs, nanos=nanos)
    with pytest.raises(ValueError):
        json_format.MessageToJson(value)  # what a stored one would break
    with pytest.raises(InvalidArgument) as caught:
        check_timestamp(value, "traces[0].start_time")
    assert caught.value.field == "traces[0].start_time"
