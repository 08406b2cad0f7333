"""Plain Python values as protobuf well-known types, the same way in every service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2, struct_pb2


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A ``Struct`` holding ``values`` (JSON-like: dicts, lists, str, numbers, bools, None)."""
    out = struct_pb2.Struct()
    out.update(values)
    return out


def duration(seconds: float) -> duration_pb2.Duration:
    """A ``Duration`` of ``seconds``, to the nearest nanosecond."""
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out
