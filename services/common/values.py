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
"""

from __future__ import annotations

import math
import uuid

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


def check_value(
    value: Node, field: str, max_depth: int = DEFAULT_MAX_DEPTH, *, kind_required: bool = False
) -> None:
    """Raise INVALID_ARGUMENT naming the first NaN/±Infinity inside ``value``, the first
    container nested deeper than ``max_depth`` or, with ``kind_required``, the first
    ``Value`` with no kind set."""
    pending: list[tuple[Node, str, int]] = [(value, field, 0)]
    while pending:
        node, path, depth = pending.pop()
        if isinstance(node, struct_pb2.Value):
            kind = node.WhichOneof("kind")
            if kind is None and kind_required:
                raise InvalidArgument(
                    f"{path} has no value: set one of its kinds (null_value for null)",
                    field=path,
                    reason="VALUE_NOT_SET",
                )
            if kind == "number_value":
                if not math.isfinite(node.number_value):
                    raise InvalidArgument(
                        f"{path} is {node.number_value}: JSON numbers are finite",
                        field=path,
                        reason="NUMBER_NOT_FINITE",
                    )
            elif kind == "struct_value":
                pending.append((node.struct_value, path, depth))
            elif kind == "list_value":
                pending.append((node.list_value, path, depth))
            continue
        depth += 1
        if depth > max_depth:
            raise InvalidArgument(
                f"{path} nests objects and lists more than {max_depth} deep",
                field=path,
                reason="NESTING_TOO_DEEP",
                metadata={"max_depth": str(max_depth)},
            )
        if isinstance(node, struct_pb2.Struct):
            # Reversed onto the stack, so the first offender in reading order is named.
            for key, child in reversed(list(node.fields.items())):
                pending.append((child, f"{path}.{key[:_KEY_CHARS]}", depth))
        else:
            for i in reversed(range(len(node.values))):
                pending.append((node.values[i], f"{path}[{i}]", depth))


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
