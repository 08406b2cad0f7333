"""Checks on the JSON-like values clients send (``google.protobuf.Struct`` / ``Value`` /
``ListValue``): filter values, object properties, ``additional_info``.

Two things protobuf itself allows but nothing downstream can hold:

* NaN and ±Infinity: JSON has no such numbers, so ``json_format`` refuses them (a
  ``ValueError`` that used to surface as INTERNAL) and no store could keep them;
* very deep nesting: a value nested near protobuf's own parsing limit (100 message levels)
  can be stored but no longer read back inside a larger response message.

Both become INVALID_ARGUMENT naming the exact field (``filter.condition.value[2]``,
``additional_info.a.b``). The walk is iterative, so depth never costs Python recursion.

A third, for a service that keeps values as they were sent (memory, with
``kind_required``): a ``Value`` with none of its kinds set. Valid protobuf, but no JSON
value: Python's ``json_format`` writes it as null, Go's protojson (grpcurl) refuses it, so
one stored that way made every JSON read of what holds it fail. Where values are read as
JSON on the way in (retrieval's properties and filters) it simply reads as null.

And, for a caller that bounds how many values one request holds in all (the gateway's
inline objects), the walk counts them as it goes (``ValueTally``), as retrieval's
``value_count.py`` counts a write batch: every ``Value`` inside counts one, a container's
whole length at once when it is opened, so a walk past the bound ends before reading the
container that took it there.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator

from google.protobuf import struct_pb2

from services.common.errors import InvalidArgument, MissingField, quote

# The default of each service's ``max_value_depth`` setting: objects and lists inside one
# another, the outermost counting as 1. Deeper than anything a client needs, and shallow
# enough that the stored value still fits protobuf's parsing limit inside every response
# that carries it.
DEFAULT_MAX_DEPTH = 32
# Keys are client text: a path quotes at most this much of each.
_KEY_CHARS = 64

Node = struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue
# Kinds of value that are never refused (a Value with no kind may be: ``kind_required``).
_NOTHING_TO_CHECK = frozenset({"string_value", "bool_value", "null_value"})


class TooManyValues(Exception):
    """A ``ValueTally`` went past its bound: ``counted`` as far as read."""

    def __init__(self, counted: int) -> None:
        super().__init__(counted)
        self.counted = counted


class ValueTally:
    """The values several ``check_value`` walks have read in all, against ``limit``: each
    ``Value`` inside counts one (a property's value, a list element, a nested field; a
    null or a Value with no kind too), the container holding them its length at once
    when it is opened, as retrieval's ``value_count.count_values``. Past ``limit`` the
    walk raises TooManyValues, the rest unread; the caller words the refusal."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counted = 0

    def add(self, values: int) -> None:
        self.counted += values
        if self.counted > self.limit:
            raise TooManyValues(self.counted)


def check_value(
    value: Node,
    field: str,
    max_depth: int = DEFAULT_MAX_DEPTH,
    *,
    kind_required: bool = False,
    tally: ValueTally | None = None,
) -> None:
    """Raise INVALID_ARGUMENT naming the first NaN/±Infinity inside ``value``, the first
    container nested deeper than ``max_depth`` or, with ``kind_required``, the first
    ``Value`` with no kind set. With ``tally``, count ``value``'s values into it as they
    are walked (TooManyValues once past its bound)."""
    # Depth first, one iterator per open container: the walk holds as many entries as the
    # value is deep. It used to push a container's every element at once, so a list of
    # 15,500 values kept them all alive until read; each outlived the young GC
    # generation, and the 930,000 of a 3.7 MB GenerateOnObjects set off full collections
    # of the whole heap: 7-10 s of the gateway's event loop, against 1.2 s without them.
    root = _container(value, field, kind_required)
    if root is None:
        return
    _check_depth(1, field, max_depth)
    if tally is not None:
        tally.add(_length(root))
    open_: list[tuple[Iterator[tuple[str | int, struct_pb2.Value]], str]] = [
        (_entries(root), field)
    ]
    while open_:
        entries, path = open_[-1]
        for label, child in entries:
            # Most values are leaves with nothing to check: read their kind here, not in a
            # call per value (a 3.7 MB request holds ~930,000 of them).
            kind = child.WhichOneof("kind")
            if (
                kind in _NOTHING_TO_CHECK
                or (kind == "number_value" and math.isfinite(child.number_value))
                or (kind is None and not kind_required)
            ):
                continue
            inner = _container(child, path, kind_required, label)
            if inner is not None:
                inner_path = _path(path, label)
                _check_depth(len(open_) + 1, inner_path, max_depth)
                if tally is not None:
                    # One addition per container, none per leaf: a list of 2 M values
                    # past the bound is refused before any of them is read.
                    tally.add(_length(inner))
                open_.append((_entries(inner), inner_path))
                break
        else:
            open_.pop()


def _path(path: str, label: str | int) -> str:
    if isinstance(label, int):
        return f"{path}[{label}]"
    return f"{path}.{label[:_KEY_CHARS]}"


def _entries(
    node: struct_pb2.Struct | struct_pb2.ListValue,
) -> Iterator[tuple[str | int, struct_pb2.Value]]:
    """A container's (key or index, value) pairs in reading order."""
    if isinstance(node, struct_pb2.Struct):
        return iter(node.fields.items())
    return enumerate(node.values)


def _length(node: struct_pb2.Struct | struct_pb2.ListValue) -> int:
    return len(node.fields) if isinstance(node, struct_pb2.Struct) else len(node.values)


def _container(
    node: Node, path: str, kind_required: bool, label: str | int | None = None
) -> struct_pb2.Struct | struct_pb2.ListValue | None:
    """The container ``node`` holds (or is), else None once its value is checked. Its
    path (``path`` and ``label``) is written out only for a refusal or a container."""
    if not isinstance(node, struct_pb2.Value):
        return node
    kind = node.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(node.number_value):
            where = path if label is None else _path(path, label)
            raise InvalidArgument(
                f"{where} is {node.number_value}: JSON numbers are finite",
                field=where,
                reason="NUMBER_NOT_FINITE",
            )
    elif kind == "struct_value":
        return node.struct_value
    elif kind == "list_value":
        return node.list_value
    elif kind is None and kind_required:
        where = path if label is None else _path(path, label)
        raise InvalidArgument(
            f"{where} has no value: set one of its kinds (null_value for null)",
            field=where,
            reason="VALUE_NOT_SET",
        )
    return None


def _check_depth(depth: int, path: str, max_depth: int) -> None:
    if depth > max_depth:
        raise InvalidArgument(
            f"{path} nests objects and lists more than {max_depth} deep",
            field=path,
            reason="NESTING_TOO_DEEP",
            metadata={"max_depth": str(max_depth)},
        )


def check_uuid(value: str, field: str) -> str:
    """The canonical (lower-case, hyphenated) form of a UUID string (object ids, in
    retrieval and in the gateway's generation over named objects)."""
    if not value:
        raise MissingField(f"{field} is required", field=field)
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(
            f"{field} must be a UUID, got {quote(value)}", field=field, reason="BAD_UUID"
        ) from None


# The largest integers a double holds exactly: chunk positions travel as filter values the
# engine compares as doubles, so positions are kept within it (gateway and retrieval).
MAX_EXACT_INTEGER = 2**53


def past_exact_integer(value: float) -> bool:
    """Whether ``value``, read from a Struct's double as an int property's value, may not
    be the integer the client meant: past 2^53 the double holds only every second (then
    fourth, …) integer, so 2^60 + 1 arrives as 2^60 and was stored rounded with an OK.
    2^53 itself is refused too: 2^53 + 1 arrives as it. What is kept are the safe integers
    (JavaScript's Number.MAX_SAFE_INTEGER, 2^53 - 1), each the only integer of its double."""
    return abs(value) >= MAX_EXACT_INTEGER


def past_exact_integer_message(field: str) -> str:
    """Why an int property's value of 2^53 or more is refused (upserts, imports, filters,
    chunk ranges, the gateway's inline objects)."""
    return (
        f"{field} is past 2^53 - 1 ({MAX_EXACT_INTEGER - 1}): a Struct's double cannot "
        "carry an integer that large exactly, so it would be stored rounded"
    )


def check_chars(text: str, field: str, limit: int, setting: str) -> None:
    """INVALID_ARGUMENT, FIELD_TOO_LARGE, for a ``text`` the caller sent in ``field`` that
    is longer than ``limit`` characters (the variable ``setting``): metadata ``max`` and
    ``max_chars`` (both: refusals of either spelling were once answered) and ``setting``."""
    if len(text) > limit:
        raise InvalidArgument(
            f"{field} is longer than {limit} characters ({setting})",
            field=field,
            reason="FIELD_TOO_LARGE",
            metadata={"max": str(limit), "max_chars": str(limit), "setting": setting},
        )
