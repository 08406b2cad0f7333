"""Filters from plain Python values: ``Filter.by_property("year").less_than(1970)``.

Combine with ``&`` (all of), ``|`` (any of) and ``~`` (none of). Values are any JSON value,
or a ``datetime``/``date`` (sent as an RFC 3339 date-time; a ``date`` as midnight UTC). A
filter may also be given as a dict in the proto's JSON form
(``{"condition": {"property": ..., "operator": "OPERATOR_EQUAL", ...}}``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.protobuf import json_format, struct_pb2


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        offset = aware.utcoffset()
        if offset is not None and offset % timedelta(minutes=1):
            # RFC 3339 offsets are whole minutes (the service refuses "+00:19:32", the
            # offset of a historical zone's local mean time): sent in UTC instead.
            aware = aware.astimezone(UTC)
        return aware.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        # A plain date is midnight UTC: the service takes RFC 3339 date-times only, and
        # refused "2024-05-01" alone.
        return f"{value.isoformat()}T00:00:00Z"
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def to_value(value: Any) -> struct_pb2.Value:
    """A ``google.protobuf.Value`` from a plain Python value (by the protobuf library)."""
    return json_format.ParseDict(_jsonable(value), struct_pb2.Value())


def to_struct_dict(properties: dict[str, Any]) -> dict[str, Any]:
    """Properties ready for a ``Struct`` field (dates as RFC 3339 strings)."""
    return {str(k): _jsonable(v) for k, v in properties.items()}


class Filter:
    """A boolean tree of conditions on properties."""

    __slots__ = ("_proto",)

    def __init__(self, proto: rpb.Filter) -> None:
        self._proto = proto

    @staticmethod
    def by_property(name: str) -> Where:
        return Where(name)

    @staticmethod
    def all_of(filters: Iterable[FilterLike]) -> Filter:
        return Filter(rpb.Filter(all_of=rpb.FilterGroup(filters=[as_filter(f) for f in filters])))

    @staticmethod
    def any_of(filters: Iterable[FilterLike]) -> Filter:
        return Filter(rpb.Filter(any_of=rpb.FilterGroup(filters=[as_filter(f) for f in filters])))

    @staticmethod
    def none_of(filters: Iterable[FilterLike]) -> Filter:
        return Filter(rpb.Filter(none_of=rpb.FilterGroup(filters=[as_filter(f) for f in filters])))

    def __and__(self, other: FilterLike) -> Filter:
        return Filter.all_of([self, other])

    def __or__(self, other: FilterLike) -> Filter:
        return Filter.any_of([self, other])

    def __invert__(self) -> Filter:
        return Filter.none_of([self])

    def to_proto(self) -> rpb.Filter:
        return self._proto

    def to_dict(self) -> dict[str, Any]:
        return json_format.MessageToDict(self._proto, preserving_proto_field_name=True)

    def __repr__(self) -> str:
        return f"Filter({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and self._proto == other._proto

    __hash__ = None  # type: ignore[assignment]


class Where:
    """The property side of a condition: pick an operator."""

    __slots__ = ("property",)

    def __init__(self, name: str) -> None:
        self.property = name

    def _op(self, operator: int, value: Any) -> Filter:
        condition = rpb.Condition(property=self.property, operator=operator)  # type: ignore[arg-type]
        condition.value.CopyFrom(to_value(value))
        return Filter(rpb.Filter(condition=condition))

    def equal(self, value: Any) -> Filter:
        return self._op(rpb.OPERATOR_EQUAL, value)

    def not_equal(self, value: Any) -> Filter:
        return self._op(rpb.OPERATOR_NOT_EQUAL, value)

    def less_than(self, value: Any) -> Filter:
        return self._op(rpb.OPERATOR_LESS_THAN, value)

    def less_or_equal(self, value: Any) -> Filter:
        return self._op(rpb.OPERATOR_LESS_THAN_EQUAL, value)

    def greater_than(self, value: Any) -> Filter:
        return self._op(rpb.OPERATOR_GREATER_THAN, value)

    def greater_or_equal(self, value: Any) -> Filter:
        return self._op(rpb.OPERATOR_GREATER_THAN_EQUAL, value)

    def contains_any(self, values: Iterable[Any]) -> Filter:
        return self._op(rpb.OPERATOR_CONTAINS_ANY, list(values))

    def contains_all(self, values: Iterable[Any]) -> Filter:
        return self._op(rpb.OPERATOR_CONTAINS_ALL, list(values))

    def text_match(self, text: str) -> Filter:
        return self._op(rpb.OPERATOR_TEXT_MATCH, text)

    __lt__ = less_than
    __le__ = less_or_equal
    __gt__ = greater_than
    __ge__ = greater_or_equal


FilterLike = Filter | rpb.Filter | dict[str, Any]


def as_filter(value: FilterLike) -> rpb.Filter:
    if isinstance(value, Filter):
        return value.to_proto()
    if isinstance(value, rpb.Filter):
        return value
    if isinstance(value, dict):
        return json_format.ParseDict(_jsonable(value), rpb.Filter())
    raise TypeError(f"a filter is a Filter or a dict, not {type(value).__name__}")
