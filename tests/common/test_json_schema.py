"""Callers' JSON Schemas and model outputs (services/common/json_schema.py): any schema is
either accepted or refused with INVALID_ARGUMENT naming the field, and validating any
output against an accepted schema never raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.json_schema import (
    MAX_SCHEMA_CLASS_SPAN,
    SchemaLimits,
    check_schema,
    class_span,
    parse_output,
    pattern_problem,
)

FIELD = "generate.response_format.json_schema"
KEYWORDS = [
    "type", "properties", "required", "items", "$ref", "$defs", "$id", "$anchor",
    "$dynamicRef", "pattern", "format", "enum", "const", "allOf", "anyOf", "oneOf", "not",
    "minimum", "maxLength", "additionalProperties", "patternProperties", "if", "then",
    "unevaluatedProperties",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["object", "string", "integer", "#", "#/$defs/a", "(", "[a-", "x://y", ""]),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYWORDS), st.text(max_size=4)), inner, max_size=5
        ),
    ),
    max_leaves=30,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    schema=st.dictionaries(st.sampled_from(KEYWORDS), JSON, max_size=6).map(
        lambda d: {**d, "type": "object"}
    ),
    output=JSON,
)
def test_any_schema_is_accepted_or_refused_and_any_output_checked(
    schema: dict[str, Any], output: Any
) -> None:
    try:
        accepted = check_schema(schema, FIELD, SchemaLimits(max_chars=10_000, max_depth=12))
    except InvalidArgument as err:
        assert err.field == FIELD
        return
    value, why = parse_output(json.dumps(output), accepted)
    assert (value is None) == bool(why)


def test_bounds_and_root() -> None:
    limits = SchemaLimits(max_chars=100, max_depth=3)
    for schema in (
        {"type": "object", "description": "x" * 200},
        {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}},
        {"type": "array"},
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
        {},
    ):
        with pytest.raises(InvalidArgument) as caught:
            check_schema(schema, FIELD, limits)
        assert caught.value.field == FIELD


@pytest.mark.parametrize(
    "ref",
    [
        "#/required/x",  # a list stepped into by a name: int() raised ValueError
        "#/allOf/1e3",
        "#/$defs/t/x",  # a boolean schema stepped into: TypeError
        "#/$defs/t/0",
    ],
)
def test_a_ref_stepping_into_a_list_or_boolean_is_refused_not_a_crash(ref: str) -> None:
    schema = {
        "type": "object",
        "required": ["a"],
        "allOf": [{}],
        "$defs": {"t": True},
        "properties": {"a": {"$ref": ref}},
    }
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits())
    assert caught.value.field == FIELD
    assert caught.value.reason == "INVALID_SCHEMA"


def test_outputs() -> None:
    output = check_schema(
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        FIELD,
        SchemaLimits(),
    )
    assert parse_output('{"n": 1}', output) == ({"n": 1}, "")
    assert parse_output('```json\n{"n": 2}\n```', output) == ({"n": 2}, "")
    value, why = parse_output('{"n": "one"}', output)
    assert value is None and why.startswith("at n:")
    value, why = parse_output("Sure! Here it is", output)
    assert value is None and "not JSON" in why
    # What a Struct (doubles) cannot hold is invalid output, never a crash later.
    for text in ('{"n": 1, "x": 1e400}', '{"n": ' + "9" * 400 + "}", '{"n": 1, "x": NaN}'):
        value, why = parse_output(text, output)
        assert value is None and why


def test_an_accepted_schema_is_checked_once() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    first = check_schema(schema, FIELD, SchemaLimits())
    same = check_schema(
        {"properties": {"a": {"type": "string"}}, "type": "object"}, FIELD, SchemaLimits()
    )
    assert same.validator is first.validator
    # The limits still apply to a schema already accepted under looser ones.
    with pytest.raises(InvalidArgument):
        check_schema(schema, FIELD, SchemaLimits(max_chars=10))


def test_a_pattern_python_cannot_compile_is_refused_not_a_crash() -> None:
    # re.compile raises OverflowError (not re.error) for a repetition above 2**32 - 1.
    # An unclosed character class ending in a backslash made the class-span count read
    # past the pattern's end: IndexError, INTERNAL (found by review).
    for schema in (
        {"type": "object", "properties": {"t": {"type": "string", "pattern": "a{4294967296}"}}},
        {"type": "object", "patternProperties": {"a{4294967296}": {}}},
        *(
            {"type": "object", "properties": {"t": {"type": "string", "pattern": bad}}}
            for bad in ("[\\", "[a-\\", "x[^a\\")
        ),
        {"type": "object", "patternProperties": {"[\\": {}}},
    ):
        with pytest.raises(InvalidArgument) as caught:
            check_schema(schema, FIELD, SchemaLimits())
        assert caught.value.field == FIELD
        assert caught.value.reason == "INVALID_SCHEMA"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="[]\\^-az{}()?*+|.:=!<>P0123", max_size=24))
def test_any_pattern_is_accepted_or_refused_never_a_crash(pattern: str) -> None:
    """Whatever a caller writes as a pattern is a schema accepted or INVALID_ARGUMENT,
    never another exception (the class-span count once read past an unclosed class)."""
    for schema in (
        {"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}},
        {"type": "object", "patternProperties": {pattern: {}}},
    ):
        try:
            check_schema(schema, FIELD, SchemaLimits())
        except InvalidArgument as err:
            assert err.field == FIELD


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        # An answer nested past what json's decoder (or a Struct) can hold.
        ({"type": "object"}, '{"a": ' + "[" * 5000 + "]" * 5000 + "}"),
        ({"type": "object"}, '{"a": ' * 40 + "1" + "}" * 40),
        # A schema that refers to itself for as deep as the answer goes.
        ({"type": "object", "properties": {"c": {"$ref": "#"}}}, '{"c": ' * 900 + "{}" + "}" * 900),
    ],
)
def test_deep_answers_are_invalid_output_not_a_crash(schema: dict[str, Any], text: str) -> None:
    output = check_schema(schema, FIELD, SchemaLimits())
    value, why = parse_output(text, output)
    assert value is None and why


@pytest.mark.parametrize(
    "loop",
    [
        {"properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"$ref": "#/$defs/x"}}},
        {"properties": {"a": {"$ref": "#/properties/a"}}},
        {"$defs": {"x": {"$ref": "#/$defs/y"}, "y": {"allOf": [{"$ref": "#/$defs/x"}]}}},
        {"anyOf": [{"not": {"$ref": "#"}}]},
        {"if": {"$ref": "#/$defs/x"}, "$defs": {"x": {"oneOf": [{"$ref": "#"}]}}},
    ],
)
def test_refs_that_refer_to_each_other_without_end_are_refused_before_any_call(
    loop: dict[str, Any],
) -> None:
    # Found only at validation, each one cost two upstream calls (the answer and its
    # corrective retry) and came back FAILED_PRECONDITION / INVALID_OUTPUT, as if the
    # model were at fault: the schema applies itself to the same value for ever.
    with pytest.raises(InvalidArgument) as caught:
        check_schema({"type": "object", **loop}, FIELD, SchemaLimits())
    assert caught.value.field == FIELD
    assert caught.value.reason == "INVALID_SCHEMA"
    assert "without end" in caught.value.message


@pytest.mark.parametrize(
    "loop",
    [
        # "#" under a nested $id is that subschema: it applies itself for ever.
        {"$defs": {"a": {"$id": "urn:a", "allOf": [{"$ref": "#"}]}}},
        # Through the root into the nested resource, then round inside it.
        {
            "properties": {"p": {"$ref": "#/$defs/a/$defs/x"}},
            "$defs": {"a": {"$id": "sub", "$defs": {"x": {"$ref": "#/$defs/x"}}}},
        },
        # The loop is the root's, beside a nested $id elsewhere.
        {"$defs": {"x": {"$ref": "#/$defs/x"}, "y": {"$id": "urn:y"}}},
    ],
)
def test_a_ref_loop_beside_a_nested_id_is_refused_before_any_call(loop: dict[str, Any]) -> None:
    # A nested $id made the check give up: the loop was found only at validation, after
    # two upstream calls, and came back INVALID_OUTPUT.
    with pytest.raises(InvalidArgument) as caught:
        check_schema({"type": "object", **loop}, FIELD, SchemaLimits())
    assert caught.value.field == FIELD
    assert caught.value.reason == "INVALID_SCHEMA"
    assert "without end" in caught.value.message


# A $dynamicRef whose static target carries the $dynamicAnchor it names resolves, at
# validation, to the outermost subschema of the dynamic scope with that anchor: here the
# root, which applies "sub" in place, whose $dynamicRef applies the root again, for ever.
# Statically "#m" in "sub" is its leaf, which ends: the check passed it, and each call
# cost two upstream calls and came back INVALID_OUTPUT (found by probe-abuser).
DYNAMIC_LOOP = {
    "$id": "https://example.com/root",
    "$dynamicAnchor": "m",
    "type": "object",
    "allOf": [{"$ref": "#/$defs/sub"}],
    "$defs": {
        "sub": {
            "$id": "sub",
            "$defs": {"leaf": {"$dynamicAnchor": "m", "type": "object"}},
            "allOf": [{"$dynamicRef": "#m"}],
        }
    },
}


def test_a_dynamic_ref_looping_through_the_dynamic_scope_is_refused_before_any_call() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_schema(DYNAMIC_LOOP, FIELD, SchemaLimits())
    assert caught.value.field == FIELD
    assert caught.value.reason == "INVALID_SCHEMA"
    assert "without end" in caught.value.message


def test_a_dynamic_ref_that_descends_into_the_answer_may_recur() -> None:
    # The extensible tree of the 2020-12 specification: "strict" extends "tree", whose
    # children are whatever the outermost "node" anchor says (strict's, at validation).
    strict_tree = {
        "$id": "https://example.com/strict-tree",
        "$dynamicAnchor": "node",
        "type": "object",
        "$ref": "#/$defs/tree",
        "unevaluatedProperties": False,
        "$defs": {
            "tree": {
                "$id": "https://example.com/tree",
                "$dynamicAnchor": "node",
                "type": "object",
                "properties": {
                    "data": True,
                    "children": {"type": "array", "items": {"$dynamicRef": "#node"}},
                },
            }
        },
    }
    output = check_schema(strict_tree, FIELD, SchemaLimits())
    value, why = parse_output('{"children": [{"data": 1, "children": []}]}', output)
    assert value is not None, why
    value, why = parse_output('{"children": [{"daat": 1}]}', output)
    assert value is None and why


def test_a_tree_under_a_nested_id_may_recur() -> None:
    # "#" under the nested $id is the node, not the root: a tree's recursion, allowed.
    tree = {
        "type": "object",
        "properties": {"tree": {"$ref": "#/$defs/node"}},
        "$defs": {
            "node": {
                "$id": "urn:node",
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}},
                "allOf": [{"$ref": "#/$defs/leaf"}],
                "$defs": {"leaf": {"required": ["kids"]}},
            }
        },
    }
    output = check_schema(tree, FIELD, SchemaLimits())
    value, why = parse_output('{"tree": {"kids": [{"kids": []}]}}', output)
    assert value is not None, why
    value, why = parse_output('{"tree": {"kids": [{}]}}', output)
    assert value is None and "kids" in why


def test_a_ref_to_nothing_under_a_nested_id_is_refused_before_any_call() -> None:
    # "#/$defs/x" under the nested $id looks in that subschema, which has no x.
    schema = {
        "type": "object",
        "$defs": {"x": {}, "a": {"$id": "urn:a", "allOf": [{"$ref": "#/$defs/x"}]}},
        "properties": {"p": {"$ref": "#/$defs/a"}},
    }
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits())
    assert caught.value.reason == "INVALID_SCHEMA"
    assert "points to nothing" in caught.value.message


def test_a_ref_that_descends_into_the_answer_may_recur() -> None:
    tree = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
        "$defs": {"x": {"properties": {"next": {"$ref": "#/$defs/x"}}}},
        "allOf": [{"$ref": "#/$defs/x"}],
    }
    output = check_schema(tree, FIELD, SchemaLimits())
    value, why = parse_output('{"children": [{"children": []}], "next": {"next": {}}}', output)
    assert value is not None, why


def test_an_answer_as_deep_as_a_struct_carries_is_valid() -> None:
    output = check_schema({"type": "object"}, FIELD, SchemaLimits())
    text = '{"a": ' * 31 + "1" + "}" * 31
    value, why = parse_output(text, output)
    assert why == "" and value is not None


# ^(a|a)+$ backtracks 2**n ways on n "a"s and a "!": 26 take seconds in Python's re,
# which holds the GIL throughout (a whole service stalls), and each 2 more take 4x longer.
SLOW = "^(a|a)+$"
STEERED = "a" * 26 + "!"


@pytest.mark.parametrize(
    ("schema", "answer"),
    [
        (
            {"type": "object", "properties": {"t": {"type": "string", "pattern": SLOW}}},
            {"t": STEERED},
        ),
        ({"type": "object", "patternProperties": {SLOW: {"type": "integer"}}}, {STEERED: 1}),
        (
            {
                "type": "object",
                "patternProperties": {SLOW: {}},
                "additionalProperties": False,
            },
            {STEERED: 1},
        ),
    ],
)
def test_a_pattern_that_backtracks_on_a_steered_answer_stops_at_its_budget(
    schema: dict[str, Any], answer: dict[str, Any]
) -> None:
    output = check_schema(schema, FIELD, SchemaLimits(pattern_seconds=0.05))
    value, why = parse_output(json.dumps(answer), output)
    assert value is None
    assert "took longer than allowed" in why and "SCHEMA_PATTERN_SECONDS" in why


def test_patterns_keep_their_meaning() -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-\\d+$"}},
        "patternProperties": {"^x-": {"type": "integer"}},
        "additionalProperties": False,
    }
    # A budget no loaded machine runs out of: this test is about what patterns mean (at the
    # default 0.1 s, a full suite beside other work once timed the first match out).
    output = check_schema(schema, FIELD, SchemaLimits(pattern_seconds=10))
    assert parse_output('{"code": "ABC-12", "x-a": 1}', output) == (
        {"code": "ABC-12", "x-a": 1},
        "",
    )
    value, why = parse_output('{"code": "abc"}', output)
    assert value is None and "does not match" in why
    value, why = parse_output('{"x-a": "one"}', output)
    assert value is None and "x-a" in why
    value, why = parse_output('{"y": 1}', output)
    assert value is None and "'y'" in why


def test_unevaluated_properties_beside_pattern_properties_is_refused() -> None:
    # jsonschema matches patternProperties with re when it evaluates unevaluatedProperties.
    schema = {
        "type": "object",
        "allOf": [{"patternProperties": {"^a": {}}}],
        "unevaluatedProperties": False,
    }
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits())
    assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"
    # Either alone is fine.
    check_schema({"type": "object", "unevaluatedProperties": False}, FIELD, SchemaLimits())


@pytest.mark.parametrize(
    "pattern",
    [
        "x{10000000}",  # regex writes it out when it compiles it: 2.8 GB, no timeout
        "(?:(?:a{100}){100}){100}",  # 0.76 s to compile, outside any match budget
        "x{4294967294}",
        "a{e<=1}",  # text to re, fuzzy matching to regex
        "(?:a|a){e<=3}+$",
        # A comment, or a space in verbose mode, between a group and its count: the count
        # still repeats the group (1,000,000 written out, 0.5 s and 275 MB to compile).
        "((a{100})(?#){100})(?#){100}",
        "(?x)((a{100}) {100}) {100}",
        "^.{0,5000}$",  # a length: maxLength says it without a 5,000-state pattern
    ],
)
def test_a_pattern_regex_would_write_out_or_read_otherwise_is_refused_up_front(
    pattern: str,
) -> None:
    for schema in (
        {"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}},
        {"type": "object", "patternProperties": {pattern: {}}},
        {"type": "object", "propertyNames": {"pattern": pattern}},
    ):
        with pytest.raises(InvalidArgument) as caught:
            check_schema(schema, FIELD, SchemaLimits())
        assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"


def test_everyday_patterns_and_data_named_pattern_are_accepted() -> None:
    for pattern in (
        r"^\d{3}-\d{4}$",
        r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        r"^.{1,64}$",
        r"^\{[a-z]+\}$",
        "[{}]",
        r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
    ):
        assert pattern_problem(pattern) is None, pattern
        check_schema(
            {"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}},
            FIELD,
            SchemaLimits(),
        )
    # Data that happens to hold a "pattern" key is no regular expression.
    check_schema({"type": "object", "const": {"pattern": "a{e<=1}"}}, FIELD, SchemaLimits())


def test_many_patterns_together_are_bounded_like_one() -> None:
    # Each within the limit, 2,500 of them took 6.4 s and 825 MB to compile.
    properties = {f"p{i}": {"type": "string", "pattern": "(a|b){400}"} for i in range(20)}
    with pytest.raises(InvalidArgument) as caught:
        check_schema({"type": "object", "properties": properties}, FIELD, SchemaLimits())
    assert caught.value.reason == "INVALID_SCHEMA" and "together" in caught.value.message
    few = dict(list(properties.items())[:5])
    check_schema({"type": "object", "properties": few}, FIELD, SchemaLimits())


def wide_ranges(count: int, *, start: int = 0) -> str:
    """A class of ``count`` distinct ranges each spanning most of the BMP (``re`` drops
    repeated items before it builds a class, so each must differ)."""
    lows = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return (
        "["
        + "".join(f"{lows[i % 62]}-{chr(0xFFFF - i // 62)}" for i in range(start, start + count))
        + "]"
    )


@pytest.mark.parametrize(
    ("pattern", "span"),
    [
        ("[a-z0-9_-]", 36),
        ('[^"]', 0),
        (r"^\[a-z\]$", 0),  # escaped brackets: no class
        (r"[\u0000-\uffff]", 0x10000),
        (r"[\x00-\x1f]", 32),
        (r"[\0-\177]", 128),
        ("[]a-c]", 3),  # a "]" first is a literal
        (r"[\n-\r]", 4),
        ("[\U00010000-\U0010ffff]", 0),  # re walks the BMP only
        (r"[\d-z]", 0x10000),  # not a range re takes: counted as the whole plane
        (r"[\p{L}a-c]", 3),  # a property is one item: its braces hold no range
    ],
)
def test_the_span_of_a_patterns_character_classes(pattern: str, span: int) -> None:
    assert class_span(pattern) == span


@pytest.mark.parametrize("where", ["pattern", "patternProperties", "propertyNames"])
def test_character_classes_spanning_too_much_are_refused_before_re_compiles_them(
    where: str,
) -> None:
    """re builds a class by walking each code point of its ranges, in Python, when the
    metaschema check compiles a pattern (before any bound of ours): 7,000 distinct ranges
    such as "a-\\uffff" (56 KB of schema) held a CPU for most of a minute per request.
    The span is bounded, counted before re sees a pattern."""
    pattern = wide_ranges(MAX_SCHEMA_CLASS_SPAN // 0xF000 + 2)
    schema = {
        "pattern": {"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}},
        "patternProperties": {"type": "object", "patternProperties": {pattern: {}}},
        "propertyNames": {"type": "object", "propertyNames": {"pattern": pattern}},
    }[where]
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits())
    assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"
    assert "character classes" in caught.value.message
    # Spread over many patterns, the same: the bound is the schema's.
    properties = {
        f"p{i}": {"type": "string", "pattern": wide_ranges(3, start=3 * i)} for i in range(8)
    }
    with pytest.raises(InvalidArgument):
        check_schema({"type": "object", "properties": properties}, FIELD, SchemaLimits())
    few = dict(list(properties.items())[:4])
    check_schema({"type": "object", "properties": few}, FIELD, SchemaLimits())


DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    "dialect", [DRAFT_2020_12, "http://json-schema.org/draft-07/schema#", "http://x.example/s"]
)
def test_a_nested_dialect_is_refused_before_any_call(dialect: str) -> None:
    """jsonschema picks a subschema's validator by its own "$schema": a nested one left our
    validator for the library's, which matches patterns with re, holding the GIL with no
    budget (^(a|a)+$ on 26 a's and a '!' took ~15 s; each 2 more, 4x that)."""
    slow = {"$schema": dialect, "type": "string", "pattern": SLOW}
    schema = {"type": "object", "properties": {"t": slow}}
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits())
    assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"
    assert "$schema" in str(caught.value)
    # Data is no subschema, and a property may be called "$schema".
    named = {"type": "object", "properties": {"$schema": {"type": "string"}}}
    check_schema(named, FIELD, SchemaLimits())
    check_schema({"type": "object", "const": {"$schema": dialect}}, FIELD, SchemaLimits())


def test_a_root_dialect_is_draft_2020_12_and_a_ref_to_the_root_keeps_the_budget() -> None:
    """A root "$schema" reached again through "$ref": "#" (a tree) switched validators the
    same way as a nested one."""
    tree = {
        "$schema": DRAFT_2020_12,
        "type": "object",
        "properties": {"t": {"type": "string", "pattern": SLOW}, "child": {"$ref": "#"}},
    }
    output = check_schema(tree, FIELD, SchemaLimits(pattern_seconds=0.05))
    value, why = parse_output(json.dumps({"child": {"t": STEERED}}), output)
    assert value is None
    assert "took longer than allowed" in why and "SCHEMA_PATTERN_SECONDS" in why
    with pytest.raises(InvalidArgument) as caught:
        check_schema(
            {**tree, "$schema": "http://json-schema.org/draft-04/schema#"}, FIELD, SchemaLimits()
        )
    assert caught.value.reason == "INVALID_SCHEMA" and "2020-12" in str(caught.value)


@pytest.mark.parametrize("depth", [150, 1000])
@pytest.mark.parametrize("where", ["pattern", "patternProperties"])
def test_a_pattern_nesting_too_deep_is_refused_not_a_crash(where: str, depth: int) -> None:
    """Python's regular expression parsers recurse once per group: a pattern of ~500
    nested groups (1 KB) raised RecursionError out of the schema check (an INTERNAL), and
    where it is raised depends on how deep the caller's stack already is. Groups nest at
    most MAX_PATTERN_NESTING deep."""
    pattern = "(" * depth + "a" + ")" * depth
    if where == "pattern":
        schema = {"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}}
    else:
        schema = {"type": "object", "patternProperties": {pattern: {}}}
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits())
    assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"
    assert "nest" in str(caught.value)
    # Groups side by side are no nesting; a few levels are fine.
    check_schema(
        {"type": "object", "properties": {"t": {"type": "string", "pattern": "(a)" * 200}}},
        FIELD,
        SchemaLimits(),
    )
    nested = "(" * 20 + "a" + ")" * 20
    check_schema({"type": "object", "patternProperties": {nested: {}}}, FIELD, SchemaLimits())


@pytest.mark.parametrize("multiple_of", [0.5, 1e-300])
def test_an_integer_past_a_double_against_a_fractional_multiple_is_invalid_not_a_crash(
    multiple_of: float,
) -> None:
    """jsonschema divides the answer's number by a float multipleOf: a 400-digit integer
    raised OverflowError out of the validation (an INTERNAL). Such a number cannot travel
    in a Struct anyway: it is found before the schema is applied."""
    schema = {"type": "object", "properties": {"n": {"type": "number", "multipleOf": multiple_of}}}
    output = check_schema(schema, FIELD, SchemaLimits())
    value, why = parse_output('{"n": 1' + "0" * 400 + "}", output)
    assert value is None and why == "a number is out of the range of a double"
    assert parse_output('{"n": 3}', output) == ({"n": 3}, "")


@pytest.mark.parametrize(
    "many",
    [
        {"allOf": [{}] * 1001},
        {"anyOf": [True] * 1001},
        {"properties": {f"p{i}": {"type": "string"} for i in range(1001)}},
    ],
)
def test_a_schema_of_more_subschemas_than_allowed_is_refused_before_the_library_sees_it(
    many: dict[str, Any],
) -> None:
    """jsonschema checks a schema against the draft's metaschema at ~0.4 ms a subschema:
    {"allOf": [{}, {}, ...]} within MAX_SCHEMA_CHARS (20,000 of them in 60 KB) held the
    event loop ~8 s, on every request with a schema not seen before. Subschemas are
    counted first (max_nodes), in a walk that stops at the bound."""
    with pytest.raises(InvalidArgument) as caught:
        check_schema({"type": "object", **many}, FIELD, SchemaLimits(max_nodes=1000))
    assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"
    assert "more than 1000 subschemas" in str(caught.value)
    # Data is no subschema, and the bound itself is allowed.
    check_schema({"type": "object", "enum": [{}] * 5000}, FIELD, SchemaLimits(max_nodes=1000))
    check_schema({"type": "object", "allOf": [{}] * 999}, FIELD, SchemaLimits(max_nodes=1000))


def test_a_map_of_named_subschemas_is_no_subschema_of_its_own() -> None:
    # The root, then 999 properties: 1000 subschemas, the "properties" map not one of them.
    properties = {f"p{i}": {"type": "string"} for i in range(999)}
    schema = {"type": "object", "properties": properties}
    check_schema(schema, FIELD, SchemaLimits(max_nodes=1000))
    with pytest.raises(InvalidArgument):
        check_schema(schema, FIELD, SchemaLimits(max_nodes=999))


def _ref_chain(length: int) -> dict[str, Any]:
    """``x`` -> a0 -> a1 -> ... -> a<length>: a string, each step a $ref (no loop)."""
    defs: dict[str, Any] = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(length)}
    defs[f"a{length}"] = {"type": "string"}
    return {"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/a0"}}}


def test_a_ref_chain_deeper_than_validation_can_follow_is_refused_before_any_call() -> None:
    """A chain of 500 $refs (no loop) was accepted, then every answer's validation hit
    Python's recursion limit: the answer was called invalid ("$refs refer to each other
    without end"), corrected once and INVALID_OUTPUT, two upstream calls charged for the
    schema's fault. Subschemas apply one another in place at most MAX_IN_PLACE_DEPTH
    deep."""
    with pytest.raises(InvalidArgument) as caught:
        check_schema(_ref_chain(500), FIELD, SchemaLimits())
    assert caught.value.field == FIELD and caught.value.reason == "INVALID_SCHEMA"
    assert "deep" in str(caught.value)
    output = check_schema(_ref_chain(50), FIELD, SchemaLimits())
    assert parse_output('{"x": "s"}', output) == ({"x": "s"}, "")


def _object(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}}


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        # A POSIX class to regex; to re a class of "[:alph" and a "]" after it.
        (r"^[[:alpha:]]+$", "abc", ":]"),
        # ECMA-262 (JSON Schema's dialect) has both; re refused them ("bad escape \p").
        (r"^\p{L}+$", "héllo", "h3llo"),
        (r"^(?<year>\d{4})$", "2026", "26"),
    ],
)
def test_the_gate_reads_a_pattern_as_the_matcher_does(
    pattern: str, matching: str, not_matching: str
) -> None:
    """The metaschema check compiled patterns with re and answers were matched with
    regex, which read some of them otherwise: a pattern was refused that the matcher would
    use, or accepted meaning one thing and matched meaning another. Both use regex with
    the same flags now: accepted, and matched as regex reads it."""
    output = check_schema(_object(pattern), FIELD, SchemaLimits())
    assert parse_output(json.dumps({"t": matching}), output)[0] == {"t": matching}
    value, why = parse_output(json.dumps({"t": not_matching}), output)
    assert value is None and "does not match" in why


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        # re took it (a class and a "]"); regex has no such POSIX class.
        ("[[:foo:]]", "is not a 'regex'"),
        # Set difference in regex's version 1, not ECMA-262 and not the matcher's version.
        (r"(?V1)^[[a-z]--[aeiou]]+$", "(?V1)"),
        (r"(?V1x)^[[a-z]--[aeiou]]+$", "verbose"),
    ],
)
def test_a_pattern_the_matcher_would_not_use_is_refused_by_the_gate(pattern: str, why: str) -> None:
    """Refused by the gate itself, naming the pattern, never accepted to fail (or mean
    something else) when an answer is matched."""
    with pytest.raises(InvalidArgument) as caught:
        check_schema(_object(pattern), FIELD, SchemaLimits())
    err = caught.value
    assert (err.field, err.reason) == (FIELD, "INVALID_SCHEMA")
    assert pattern in err.message and why in err.message


IN_PLACE_CHAIN: dict[str, Any] = {
    "type": "object",
    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/c"}, "c": {"type": "object"}},
    "$ref": "#/$defs/a",
}


TWO_PATTERNS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "a": {"type": "string", "pattern": r"\d{3}-\d{4}"},
        "b": {"type": "string", "pattern": r"\d{3}-\d{4}"},
    },
}


@pytest.mark.parametrize(
    ("bound", "schema", "key", "setting"),
    [
        ({"max_class_span": 30}, _object("[a-z][0-9]"), "max_class_span", "CLASS_SPAN"),
        ({"max_pattern_size": 5}, _object(r"\d{3}-\d{4}"), "max_size", "PATTERN_SIZE"),
        ({"max_patterns_size": 10}, TWO_PATTERNS, "max_size", "PATTERNS_SIZE"),
        ({"max_pattern_nesting": 2}, _object("(((a)))"), "max_nesting", "PATTERN_NESTING"),
        ({"max_in_place_depth": 3}, IN_PLACE_CHAIN, "max_depth", "IN_PLACE_DEPTH"),
        ({"max_depth": 2}, _object("a"), "max_depth", "DEPTH"),
        ({"max_chars": 20}, _object("a"), "max_chars", "CHARS"),
    ],
)
def test_each_schema_bound_is_a_setting_its_refusal_names(
    bound: dict[str, int], schema: dict[str, Any], key: str, setting: str
) -> None:
    """The bounds of a caller's schema were module constants: an operator could not
    change them, and a refusal did not say which setting (nor, for most, which bound). Each
    is a SchemaLimits field now, from the service's settings; the refusal carries the
    bound and the variable, in the service's namespace. The same schema passes the
    defaults."""
    check_schema(schema, FIELD, SchemaLimits())
    with pytest.raises(InvalidArgument) as caught:
        check_schema(schema, FIELD, SchemaLimits(**bound, namespace="GENSEARCH_GATEWAY_"))
    err = caught.value
    assert (err.field, err.reason) == (FIELD, "INVALID_SCHEMA")
    (value,) = bound.values()
    assert err.metadata[key] == str(value) and str(value) in err.message
    assert err.metadata["setting"] == f"GENSEARCH_GATEWAY_MAX_SCHEMA_{setting}"
