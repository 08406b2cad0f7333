"""Plain Python values as protobuf well-known types and back, the same way in every
service."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from services.common.errors import InvalidArgument

# The span a google.protobuf.Duration may hold (+-10,000 years), and nanos' bound.
MAX_DURATION_SECONDS = 315_576_000_000
NANOS_PER_SECOND = 1_000_000_000
# The span a google.protobuf.Timestamp may hold: 0001-01-01T00:00:00Z to
# 9999-12-31T23:59:59.999999999Z, in seconds since the epoch.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A ``Struct`` holding ``values`` (JSON-like: dicts, lists, str, numbers, bools, None)."""
    out = struct_pb2.Struct()
    out.update(values)
    return out


def properties_sha256(properties: struct_pb2.Struct) -> bytes:
    """SHA-256 of an object's properties, serialized deterministically (map keys sorted):
    equal properties give the same digest in every service (the gateway records it for a
    cached answer's sources, retrieval compares it with the object's properties now)."""
    return hashlib.sha256(properties.SerializeToString(deterministic=True)).digest()


def duration(seconds: float) -> duration_pb2.Duration:
    """A ``Duration`` of ``seconds``, to the nearest nanosecond."""
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def duration_seconds(value: duration_pb2.Duration, field: str) -> float:
    """A caller's ``Duration`` in seconds, or INVALID_ARGUMENT naming ``field`` when it is
    not a valid one (duration.proto): ``nanos`` within +-999,999,999 and of the sign of
    ``seconds``, ``seconds`` within +-10,000 years. protobuf reads an invalid one without
    complaint (5 s and -5 ns is 4.999999995 s), so every Duration a request carries is
    read here."""
    secs, nanos = value.seconds, value.nanos
    if (
        abs(nanos) >= NANOS_PER_SECOND
        or abs(secs) > MAX_DURATION_SECONDS
        or (secs > 0 and nanos < 0)
        or (secs < 0 and nanos > 0)
    ):
        raise InvalidArgument(
            f"{field} is not a valid Duration (seconds {secs}, nanos {nanos}): nanos is "
            f"within +-999999999 with the sign of seconds, seconds within "
            f"+-{MAX_DURATION_SECONDS}",
            field=field,
        )
    return value.ToNanoseconds() / NANOS_PER_SECOND


def check_timestamp(value: timestamp_pb2.Timestamp, field: str) -> None:
    """INVALID_ARGUMENT naming ``field`` unless ``value`` is a valid Timestamp
    (timestamp.proto): within 0001-01-01..9999-12-31 UTC, ``nanos`` in [0, 999,999,999].
    protobuf stores an invalid one without complaint, but cannot write it as JSON
    (grpcurl, gateways), so every Timestamp a request carries is checked here before it
    is kept."""
    secs, nanos = value.seconds, value.nanos
    if not (
        MIN_TIMESTAMP_SECONDS <= secs <= MAX_TIMESTAMP_SECONDS and 0 <= nanos < NANOS_PER_SECOND
    ):
        raise InvalidArgument(
            f"{field} is not a valid Timestamp (seconds {secs}, nanos {nanos}): it lies "
            "within 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z, nanos within "
            "0..999999999",
            field=field,
        )
