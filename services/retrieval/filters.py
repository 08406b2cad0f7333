"""Our ``Filter`` (a tree of conditions on properties) checked against the schema and turned
into a small engine-neutral tree, which each storage adapter maps to its Qdrant models.

Semantics follow Qdrant's: a condition on an array property holds when one element matches
(so EQUAL on a text array means "contains"); NOT_EQUAL holds when no element equals the value,
and also when the property is absent. Numbers are compared as floats, dates by their UTC
instant (exact to the microsecond in every year: the engine's datetime), and TEXT_MATCH
needs every word of the value in the property (case-insensitive, and Unicode-normalized on
both sides: NFKC, see ``normalize``). EQUAL stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import json_format

from services.common.errors import InvalidArgument, MissingField, quote
from services.common.property_types import RFC3339_DATE_TIME, ObjectInvalid, format_date, parse_date
from services.common.settings import MAX_QUERY_TEXT
from services.common.suggest import did_you_mean
from services.common.values import (
    DEFAULT_MAX_DEPTH,
    check_chars,
    check_value,
    past_exact_integer,
    past_exact_integer_message,
)
from services.retrieval.normalize import NORMALIZED, nfkc

# The defaults of the settings GENSEARCH_RETRIEVAL_MAX_FILTER_DEPTH, _MAX_FILTER_CONDITIONS
# and _MAX_FILTER_VALUES (settings.py): levels of all_of/any_of/none_of, conditions in one
# filter, values in one CONTAINS_ANY/ALL list.
MAX_DEPTH = 8
MAX_CONDITIONS = 256
MAX_LIST = 1024
DEPTH_SETTING = "GENSEARCH_RETRIEVAL_MAX_FILTER_DEPTH"
CONDITIONS_SETTING = "GENSEARCH_RETRIEVAL_MAX_FILTER_CONDITIONS"
VALUES_SETTING = "GENSEARCH_RETRIEVAL_MAX_FILTER_VALUES"
# The most conditions the engine evaluates for one filter, after CONTAINS_ANY/ALL and
# TEXT_MATCH expand into one per value (a number or date CONTAINS_ANY is a range per value:
# the engine has no set match for them). Without it 256 conditions of 1024 dates each made
# 262 144 ranges, each checked against every point on the engine's one thread (qdrant-edge:
# ~2 s per 1024 ranges over 1000 points), stalling every tenant's calls for minutes.
# The default of the setting GENSEARCH_RETRIEVAL_MAX_FILTER_CHECKS (settings.py).
MAX_ENGINE_CONDITIONS = 2048
MAX_CHECKS_SETTING = "GENSEARCH_RETRIEVAL_MAX_FILTER_CHECKS"
# Characters of one string value of a condition (EQUAL's text, TEXT_MATCH's words, each
# value of a list): the bound of a search's text, the other key a caller looks things up
# with. Before it a value had none but the 4 MB request, all of it sent to the engine.
VALUE_CHARS_SETTING = "GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS"

Scalar = str | int | bool


@dataclass(frozen=True)
class Match:
    key: str
    value: Scalar


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class DateRange:
    """Bounds on a stored date (``p.<name>``, RFC 3339 in UTC), RFC 3339 in UTC too: the
    engine reads both as datetimes, microseconds in an int64, exact in years 1 to 9999."""

    key: str
    gt: str | None = None
    gte: str | None = None
    lt: str | None = None
    lte: str | None = None


@dataclass(frozen=True)
class Text:
    key: str
    text: str


@dataclass(frozen=True)
class Bool:
    must: tuple[Node, ...] = ()
    should: tuple[Node, ...] = ()
    must_not: tuple[Node, ...] = ()


Node = Match | MatchAny | Range | DateRange | Text | Bool

_RANGE_OPS = {
    pb.OPERATOR_LESS_THAN: "lt",
    pb.OPERATOR_LESS_THAN_EQUAL: "lte",
    pb.OPERATOR_GREATER_THAN: "gt",
    pb.OPERATOR_GREATER_THAN_EQUAL: "gte",
}


def build_filter(
    message: pb.Filter,
    types: dict[str, int],
    field: str = "filter",
    *,
    max_value_depth: int = DEFAULT_MAX_DEPTH,
    max_checks: int = MAX_ENGINE_CONDITIONS,
    max_depth: int = MAX_DEPTH,
    max_conditions: int = MAX_CONDITIONS,
    max_values: int = MAX_LIST,
    max_value_chars: int = MAX_QUERY_TEXT,
) -> Node:
    """Validate ``message`` against the property ``types``; errors name the offending field.
    ``max_value_depth`` bounds the nesting inside each condition's value, ``max_checks``
    the conditions the engine evaluates once CONTAINS_ANY/ALL and TEXT_MATCH expand,
    ``max_depth`` the levels of groups, ``max_conditions`` the conditions as written and
    ``max_values`` the values of one list, ``max_value_chars`` the characters of each
    string value."""
    walk = _Walk(
        types, max_value_depth, max_checks, max_depth, max_conditions, max_values, max_value_chars
    )
    return _node(message, walk, field, 0)


@dataclass
class _Walk:
    """What one filter's checks share: the schema, the limit, the conditions seen."""

    types: dict[str, int]
    max_value_depth: int
    # The most conditions the engine may evaluate (MAX_FILTER_CHECKS).
    max_checks: int
    # MAX_FILTER_DEPTH, MAX_FILTER_CONDITIONS, MAX_FILTER_VALUES.
    max_depth: int
    max_conditions: int
    max_values: int
    # MAX_QUERY_TEXT_CHARS: characters of one string value.
    max_value_chars: int
    conditions: int = 0
    # Conditions the engine evaluates, counted against max_checks.
    engine_conditions: int = 0


def _node(message: pb.Filter, b: _Walk, field: str, depth: int) -> Node:
    if depth > b.max_depth:
        raise InvalidArgument(
            f"{field}: filters nest at most {b.max_depth} deep ({DEPTH_SETTING})",
            field=field,
            reason="NESTING_TOO_DEEP",
            metadata={"max": str(b.max_depth), "setting": DEPTH_SETTING},
        )
    kind = message.WhichOneof("filter")
    if kind is None:
        raise MissingField(
            f"{field} is empty: set condition, all_of, any_of or none_of", field=field
        )
    if kind == "condition":
        b.conditions += 1
        if b.conditions > b.max_conditions:
            raise InvalidArgument(
                f"a filter holds at most {b.max_conditions} conditions ({CONDITIONS_SETTING})",
                field=field,
                reason="FILTER_TOO_LARGE",
                metadata={"max": str(b.max_conditions), "setting": CONDITIONS_SETTING},
            )
        leaf = _condition(message.condition, b, f"{field}.condition")
        b.engine_conditions += _engine_conditions(leaf)
        if b.engine_conditions > b.max_checks:
            raise InvalidArgument(
                f"{field}.condition: the filter's conditions expand to more than "
                f"{b.max_checks} checks ({MAX_CHECKS_SETTING}; each value of a number or "
                "date CONTAINS_ANY, of a CONTAINS_ALL, each TEXT_MATCH twice); use fewer values",
                field=f"{field}.condition",
                reason="FILTER_TOO_LARGE",
                metadata={"max": str(b.max_checks), "setting": MAX_CHECKS_SETTING},
            )
        return leaf
    group: pb.FilterGroup = getattr(message, kind)
    where = f"{field}.{kind}.filters"
    if not group.filters:
        raise MissingField(f"{where} must not be empty", field=where)
    children = tuple(
        _node(child, b, f"{where}[{i}]", depth + 1) for i, child in enumerate(group.filters)
    )
    if kind == "all_of":
        return Bool(must=children)
    if kind == "any_of":
        return Bool(should=children)
    return Bool(must_not=children)


def _condition(cond: pb.Condition, b: _Walk, field: str) -> Node:
    name = cond.property
    if not name:
        raise MissingField(f"{field}.property is required", field=f"{field}.property")
    data_type = b.types.get(name)
    if data_type is None:
        hint, metadata = did_you_mean(name, b.types)  # this collection's own names only
        raise InvalidArgument(
            f"{field}.property: no property {quote(name)} in this collection{hint}",
            field=f"{field}.property",
            reason="UNKNOWN_PROPERTY",
            metadata=metadata,
        )
    op = cond.operator
    value_field = f"{field}.value"
    if not cond.HasField("value"):
        raise MissingField(f"{value_field} is required", field=value_field)
    # Before json_format, which refuses NaN and ±Infinity with a bare ValueError.
    check_value(cond.value, value_field, b.max_value_depth)
    value = json_format.MessageToDict(cond.value)
    _check_value_chars(value, value_field, b.max_value_chars)
    is_date = data_type == pb.DATA_TYPE_DATE

    if op in (pb.OPERATOR_EQUAL, pb.OPERATOR_NOT_EQUAL):
        if is_date:
            leaf = _date_equal(name, *_date_bound(value, value_field))
        else:
            leaf = _equal(name, data_type, _scalar(data_type, value, value_field))
        return leaf if op == pb.OPERATOR_EQUAL else Bool(must_not=(leaf,))
    if op in _RANGE_OPS:
        if data_type not in (pb.DATA_TYPE_INT, pb.DATA_TYPE_NUMBER, pb.DATA_TYPE_DATE):
            raise InvalidArgument(
                f"{field}.operator: {quote(name)} is not a number or date, so it has no order",
                field=f"{field}.operator",
            )
        if is_date:
            stamp, exact = _date_bound(value, value_field)
            side = _RANGE_OPS[op]
            if not exact:
                # The bound lies strictly between its microsecond and the next one, where
                # no stored date is: "< bound" holds for its microsecond, "≥ bound" does not.
                side = {"lt": "lte", "gte": "gt"}.get(side, side)
            return DateRange(key=f"p.{name}", **{side: stamp})  # type: ignore[arg-type]
        # Any finite number bounds an int property too: the engine compares as floats, and
        # "year > 2016.5" or "year < 1e300" are questions with answers (they were WRONG_TYPE,
        # "must be an integer", as an EQUAL to such a value still is).
        bound = _scalar(pb.DATA_TYPE_NUMBER, value, value_field)
        return Range(key=f"p.{name}", **{_RANGE_OPS[op]: float(bound)})  # type: ignore[arg-type]
    if op in (pb.OPERATOR_CONTAINS_ANY, pb.OPERATOR_CONTAINS_ALL):
        if op == pb.OPERATOR_CONTAINS_ALL and data_type != pb.DATA_TYPE_TEXT_ARRAY:
            raise InvalidArgument(
                f"{field}.operator: CONTAINS_ALL needs a text array property",
                field=f"{field}.operator",
            )
        if not isinstance(value, list) or not value:
            raise InvalidArgument(f"{value_field} must be a non-empty list", field=value_field)
        if len(value) > b.max_values:
            raise InvalidArgument(
                f"{value_field} holds more than {b.max_values} values ({VALUES_SETTING})",
                field=value_field,
                reason="FILTER_TOO_LARGE",
                metadata={"max": str(b.max_values), "setting": VALUES_SETTING},
            )
        items = [_scalar(data_type, v, f"{value_field}[{i}]") for i, v in enumerate(value)]
        # Each value once: a repeated one adds a check to the engine's work, never a match
        # (one property's values are all of one type, so 1 and True never meet here).
        items = list(dict.fromkeys(items))
        if op == pb.OPERATOR_CONTAINS_ALL:
            return Bool(must=tuple(_equal(name, data_type, v) for v in items))
        if data_type in (pb.DATA_TYPE_TEXT, pb.DATA_TYPE_TEXT_ARRAY):
            return MatchAny(key=f"p.{name}", values=tuple(str(v) for v in items))
        if data_type == pb.DATA_TYPE_INT:
            return MatchAny(key=f"p.{name}", values=tuple(int(v) for v in items))
        if is_date:
            # By instant and exactness, not by timestamp alone (an inexact bound matches
            # nothing, an exact one at the same timestamp does).
            bounds = list(
                dict.fromkeys(_date_bound(v, f"{value_field}[{i}]") for i, v in enumerate(value))
            )
            return Bool(should=tuple(_date_equal(name, *bound) for bound in bounds))
        return Bool(should=tuple(_equal(name, data_type, v) for v in items))
    if op == pb.OPERATOR_TEXT_MATCH:
        if data_type not in (pb.DATA_TYPE_TEXT, pb.DATA_TYPE_TEXT_ARRAY):
            raise InvalidArgument(
                f"{field}.operator: TEXT_MATCH needs a text property", field=f"{field}.operator"
            )
        if not isinstance(value, str) or not any(ch.isalnum() for ch in value):
            raise InvalidArgument(f"{value_field} must be a string with words", field=value_field)
        # Words match whatever Unicode form either side was written in (normalize.py): the
        # NFKC query against the stored value (already NFKC for nearly all text) and against
        # its NFKC copy, kept where NFKC changes the value. Not the query as typed against
        # the value as stored: the engine's tokenizer drops combining marks, so a decomposed
        # "cafe\u0301" would also find "cafe". Objects stored before the copies existed match
        # through their NFKC text only (re-import those with NFD/compatibility text).
        wanted = nfkc(value)
        texts = (Text(key=f"p.{name}", text=wanted), Text(key=f"{NORMALIZED}.{name}", text=wanted))
        return Bool(should=texts)
    if op == pb.OPERATOR_UNSPECIFIED:
        raise MissingField(f"{field}.operator is required", field=f"{field}.operator")
    raise InvalidArgument(f"{field}.operator: {op} is not an Operator", field=f"{field}.operator")


def _check_value_chars(value: Any, field: str, limit: int) -> None:
    """FIELD_TOO_LARGE naming the first string value (the value, or an element of its list)
    longer than ``limit`` characters. Other kinds inside a list are refused by type later."""
    if isinstance(value, str):
        check_chars(value, field, limit, VALUE_CHARS_SETTING)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                check_chars(item, f"{field}[{i}]", limit, VALUE_CHARS_SETTING)


def _engine_conditions(node: Node) -> int:
    """How many conditions the engine evaluates for ``node`` (a set match is one)."""
    if isinstance(node, Bool):
        return sum(_engine_conditions(n) for n in (*node.must, *node.should, *node.must_not))
    return 1


def _date_bound(value: Any, field: str) -> tuple[str, bool]:
    """A date filter value as its microsecond in UTC, RFC 3339 (dates are kept to the
    microsecond), and whether it is exactly that: False when its fraction has further
    digits that are not all zero (RFC3339Nano's "….000000001Z")."""
    stamp = _scalar(pb.DATA_TYPE_DATE, value, field)
    match = RFC3339_DATE_TIME.fullmatch(value)
    fraction = (match["fraction"] or "") if match else ""
    return stamp, not fraction[7:].strip("0")


def _date_equal(name: str, stamp: str, exact: bool) -> Node:
    if exact:
        return _equal(name, pb.DATA_TYPE_DATE, stamp)
    # No stored date lies between two microseconds: an empty interval matches none.
    return DateRange(key=f"p.{name}", gt=stamp, lt=stamp)


def _equal(name: str, data_type: int, value: Any) -> Node:
    if data_type == pb.DATA_TYPE_DATE:
        return DateRange(key=f"p.{name}", gte=value, lte=value)
    if data_type == pb.DATA_TYPE_NUMBER:
        # Qdrant's exact match takes no floats; a closed interval of one point does.
        return Range(key=f"p.{name}", gte=value, lte=value)
    if data_type == pb.DATA_TYPE_BOOL:
        return Match(key=f"b.{name}", value=int(value))
    return Match(key=f"p.{name}", value=value)


def _scalar(data_type: int, value: Any, field: str) -> Any:
    """One value of the property's (element) type; dates become their microsecond in UTC,
    RFC 3339, as stored (``property_types.format_date``)."""
    ok: Any = None
    if data_type in (pb.DATA_TYPE_TEXT, pb.DATA_TYPE_TEXT_ARRAY):
        ok = value if isinstance(value, str) else None
        expected = "a string"
    elif data_type == pb.DATA_TYPE_INT:
        is_int = _is_number(value) and float(value).is_integer()
        if is_int and past_exact_integer(value):
            # The double may not be the integer the client meant: an EQUAL on 2^60 + 1
            # matched 2^60. Past int64 too, which no int property holds.
            raise InvalidArgument(
                past_exact_integer_message(field), field=field, reason="WRONG_TYPE"
            )
        ok = int(value) if is_int else None
        expected = "an integer"
    elif data_type == pb.DATA_TYPE_NUMBER:
        ok = float(value) if _is_number(value) and math.isfinite(value) else None
        expected = "a number"
    elif data_type == pb.DATA_TYPE_BOOL:
        ok = value if isinstance(value, bool) else None
        expected = "a bool"
    else:
        expected = "an RFC 3339 date-time string"
        if isinstance(value, str):
            try:
                ok = format_date(parse_date(value, field))
            except ObjectInvalid:
                ok = None
            except OverflowError:  # before year 1 or after 9999 in UTC, as no stored date is
                expected = "a date in years 1 to 9999 in UTC"
    if ok is None:
        raise InvalidArgument(
            f"{field} must be {expected} for this property", field=field, reason="WRONG_TYPE"
        )
    return ok


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
