"""Property values as a collection's schema types them: what UpsertObjects and
ImportObjects store (retrieval's ``schema.prepare_object``), and what the gateway checks of
objects given inline to generation over a named collection (``named_objects.py``). One
rule for both: an inline object the gateway took as a collection's would else pass a text
property the number 5 that the collection itself would refuse."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import quote
from services.common.values import past_exact_integer, past_exact_integer_message

TYPE_NAMES: dict[int, str] = {
    pb.DATA_TYPE_TEXT: "text",
    pb.DATA_TYPE_TEXT_ARRAY: "text array",
    pb.DATA_TYPE_INT: "int",
    pb.DATA_TYPE_NUMBER: "number",
    pb.DATA_TYPE_BOOL: "bool",
    pb.DATA_TYPE_DATE: "date",
}


class ObjectInvalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def coerce_value(data_type: int, value: Any, path: str) -> Any:
    """``value`` (decoded from a protobuf Value) as stored for ``data_type``."""
    expected = TYPE_NAMES[data_type]
    if data_type == pb.DATA_TYPE_TEXT:
        if isinstance(value, str):
            return value
    elif data_type == pb.DATA_TYPE_TEXT_ARRAY:
        if isinstance(value, list):
            # A list is the right shape: the element that is not text is what is wrong
            # ("expected text array, got a list" named neither it nor its type).
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise ObjectInvalid(f"{path}[{i}]", f"expected text, got {_describe(item)}")
            return value
    elif data_type == pb.DATA_TYPE_INT:
        if _is_number(value) and float(value).is_integer() and past_exact_integer(value):
            raise ObjectInvalid(path, past_exact_integer_message(path))
        if _is_number(value) and float(value).is_integer():
            return int(value)
    elif data_type == pb.DATA_TYPE_NUMBER:
        if _is_number(value) and math.isfinite(value):
            return float(value)
    elif data_type == pb.DATA_TYPE_BOOL:
        if isinstance(value, bool):
            return value
    elif data_type == pb.DATA_TYPE_DATE and isinstance(value, str):
        parsed = parse_date(value, path)
        try:
            return format_date(parsed)
        except OverflowError:
            # Stored in UTC: "0001-01-01T00:00:00+01:00" is in year 0 there, which datetime
            # cannot hold (it failed the whole batch with INTERNAL).
            raise ObjectInvalid(
                path, f"{quote(value)} is before year 1 or after year 9999 in UTC"
            ) from None
    raise ObjectInvalid(path, f"expected {expected}, got {_describe(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    if isinstance(value, list):
        return "a list"
    if value is None:  # a null, or a protobuf Value with no kind set (decoded as None)
        return "no value"
    return "an object"


# RFC 3339's date-time (section 5.6), the one date form the API takes: a full date, "T",
# hours:minutes:seconds, optional fractional seconds after ".", and "Z" or a +hh:mm/-hh:mm
# offset ("t" and "z" may be lower case). Checked before datetime.fromisoformat, which also
# reads ISO 8601 forms RFC 3339 does not have: week dates ("2024-W01-1T00:00:00Z"), compact
# forms ("20240101T000000Z"), times without seconds ("…T12:00Z"), "," fractions, offsets
# without a colon or with seconds ("+0100", "+01", "+01:00:30"), offset minutes past 59
# ("+01:60", read as +02:00) and a space before the offset. ASCII digits only (re.ASCII);
# the range of each field is left to fromisoformat (it refuses "2024-02-30" and a leap
# second ":60").
RFC3339_DATE_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<time>\d{2}:\d{2}:\d{2})(?P<fraction>\.\d+)?"
    r"(?P<offset>[Zz]|[+-]\d{2}:[0-5]\d)",
    re.ASCII,
)


def parse_date(value: str, path: str) -> datetime:
    """An RFC 3339 date-time with a time zone offset (``Z`` or ``+hh:mm``), and nothing
    else that ``datetime.fromisoformat`` would read (``RFC3339_DATE_TIME``)."""
    # fullmatch, not match: a trailing newline or a NUL and more (CPython's fromisoformat
    # stops reading at a NUL, so "2024-05-01T12:00:00Z\x00anything" once parsed, the rest
    # silently dropped) is not a date.
    match = RFC3339_DATE_TIME.fullmatch(value)
    parsed = None
    if match:
        # Microseconds are all a datetime holds: further digits are dropped, as before.
        fraction = (match["fraction"] or "")[:7]
        offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
        try:
            parsed = datetime.fromisoformat(f"{match['date']}T{match['time']}{fraction}{offset}")
        except ValueError:  # a field out of range: month 13, February 30, second 60 ...
            parsed = None
    if parsed is None:
        raise ObjectInvalid(path, f"expected an RFC 3339 date-time with offset, got {quote(value)}")
    return parsed


def format_date(value: datetime) -> str:
    """Dates are stored in UTC, RFC 3339, so equal instants compare equal as strings."""
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
