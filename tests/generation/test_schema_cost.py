"""What validating a model's answer against a caller's JSON schema may cost: the model's
answer is the caller's to steer, so no keyword may make its check quadratic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from google.protobuf import json_format, struct_pb2

from services.common.json_schema import SchemaLimits, check_schema, parse_output
from tests.generation.conftest import Service, StartService, fake_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info
from tests.support.schema_gate import HELD_TITLE, hold_schema_checks

SCHEMA = {
    "type": "object",
    "properties": {"rows": {"type": "array", "uniqueItems": True}},
    "required": ["rows"],
}


async def test_unique_items_over_a_long_answer_is_checked_in_linear_time(
    start_service: StartService, fake: FakeOpenAI
) -> None:
    """jsonschema compares objects pairwise for uniqueItems: an answer of 25,000 small
    objects (300 KB, well within MAX_ANSWER_CHARS) took minutes of a worker thread, mostly
    holding the GIL; a 1 MB one, over an hour. Validated by hashing, it is done at once.
    The check is given 20 s, not the default 1 s: on a loaded 2-core machine the linear
    check of 25,000 rows took 3.6 s, and the pairwise one still takes minutes."""
    service = await start_service([fake_provider(fake)], schema_validate_seconds=20)
    rows = [{"k": i, "tags": [i, str(i)]} for i in range(25_000)]
    fake.reply = json.dumps({"rows": rows})
    schema = struct_pb2.Struct()
    schema.update(SCHEMA)
    reply = await service.stub.Generate(
        pb.GenerateRequest(
            messages=[user("list them")],
            response_format=pb.ResponseFormat(json_schema=schema),
        ),
        timeout=30,
    )
    assert len(json_format.MessageToDict(reply.structured)["rows"]) == 25_000


def test_unique_items_keeps_json_equality() -> None:
    """Equal as JSON: 1 and 1.0; not equal: 1 and true, 0 and false, "1" and 1; objects
    whatever their keys' order; arrays in order."""
    schema = check_schema(SCHEMA, "response_format.json_schema", SchemaLimits())

    def unique(rows: list[object]) -> bool:
        value, _why = parse_output(json.dumps({"rows": rows}), schema)
        return value is not None

    assert not unique([1, 1.0])
    assert unique([1, True]) and unique([0, False]) and unique(["1", 1]) and unique([None, 0])
    assert not unique([{"a": 1, "b": [2, 3]}, {"b": [2, 3.0], "a": 1}])
    assert unique([[1, 2], [2, 1]]) and not unique([[1, {"x": None}], [1.0, {"x": None}]])
    assert unique([{"a": True}, {"a": 1}]) and not unique([[], []])
    assert unique([{}, []]) and unique(["a", ["a"]])


async def _refused(
    service: Service, schema: struct_pb2.Struct, prompt: str, timeout: float = 30
) -> grpc.aio.AioRpcError:
    """The error of a Generate asking for ``schema``: it must fail."""
    request = pb.GenerateRequest(
        messages=[user(prompt)], response_format=pb.ResponseFormat(json_schema=schema)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await service.stub.Generate(request, timeout=timeout)
    return raised.value


def _assert_invalid_schema(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert (info.reason, info.metadata["field"]) == (
        "INVALID_SCHEMA",
        "response_format.json_schema",
    )


# Each level tries the first branch to the bottom, fails it on "required", then the second:
# twice the work a level, 2^depth in all.
BRANCHING: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "n": {
            "anyOf": [
                {"properties": {"x": {"$ref": "#/$defs/n"}}, "required": ["never"]},
                {"properties": {"x": {"$ref": "#/$defs/n"}}},
            ]
        }
    },
    "$ref": "#/$defs/n",
}


async def test_a_schema_whose_check_is_exponential_stops_at_its_budget(
    service: Service, fake: FakeOpenAI
) -> None:
    """An answer of 22 nested objects (150 bytes) against a schema whose anyOf branches
    both recurse took minutes to check (30 levels, within the answer depth, hours), a
    worker thread holding the GIL all along. The check has a time budget
    (SCHEMA_VALIDATE_SECONDS): past it the answer is invalid, corrected once, then
    INVALID_OUTPUT naming the setting."""
    nested: dict[str, Any] = {}
    for _ in range(22):
        nested = {"x": nested}
    fake.reply = json.dumps(nested)
    schema = struct_pb2.Struct()
    schema.update(BRANCHING)
    err = await _refused(service, schema, "nest")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert error_info(err).reason == "INVALID_OUTPUT"
    assert "GENSEARCH_GENERATION_SCHEMA_VALIDATE_SECONDS" in (err.details() or "")
    assert len(fake.chat_requests) == 2  # the answer and its corrective retry


def test_the_validate_budget_is_named_in_full() -> None:
    """The budget is said as every bound in seconds is (``seconds_text``); with ``:g`` a
    0.0123456789 s budget read "0.0123457", more than it is."""
    nested: dict[str, Any] = {}
    for _ in range(22):
        nested = {"x": nested}
    output = check_schema(BRANCHING, "schema", SchemaLimits(validate_seconds=0.0123456789))
    value, why = parse_output(json.dumps(nested), output)
    assert value is None
    assert "took longer than 0.0123456789 s (" in why


async def test_a_nested_dialect_is_refused_before_any_call(
    service: Service, fake: FakeOpenAI
) -> None:
    """A subschema's own "$schema" made jsonschema validate it with the library's validator,
    whose patterns run on re with no budget: ^(a|a)+$ against an answer the caller steered
    held the service's GIL for as long as the backtracking took (exponential in the
    answer). Now it is INVALID_SCHEMA naming the field, and nothing is sent upstream."""
    fake.reply = json.dumps({"t": "a" * 26 + "!"})
    schema = struct_pb2.Struct()
    schema.update(
        {
            "type": "object",
            "properties": {
                "t": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "string",
                    "pattern": "^(a|a)+$",
                }
            },
        }
    )
    err = await _refused(service, schema, "steer")
    _assert_invalid_schema(err)
    assert "$schema" in (err.details() or "")
    assert fake.chat_requests == []


async def test_a_pattern_nesting_past_the_parsers_recursion_is_invalid_not_internal(
    service: Service, fake: FakeOpenAI
) -> None:
    """A 2 KB pattern of 1000 nested groups made the schema check raise RecursionError
    (Python's regex parser recurses per group): INTERNAL. It is INVALID_SCHEMA naming the
    field, before any call."""
    schema = struct_pb2.Struct()
    pattern = "(" * 1000 + "a" + ")" * 1000
    schema.update({"type": "object", "properties": {"t": {"type": "string", "pattern": pattern}}})
    err = await _refused(service, schema, "nest")
    _assert_invalid_schema(err)
    assert fake.chat_requests == []


async def test_an_answer_integer_past_a_double_is_invalid_output_not_internal(
    service: Service, fake: FakeOpenAI
) -> None:
    """An answer of a 400-digit integer (the caller steers the answer) against a
    fractional multipleOf made jsonschema's division raise OverflowError: INTERNAL. It is
    an invalid answer like any number a Struct cannot carry: corrected once, then
    INVALID_OUTPUT."""
    fake.reply = '{"n": 1' + "0" * 400 + "}"
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}})
    err = await _refused(service, schema, "big")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert error_info(err).reason == "INVALID_OUTPUT"
    assert "out of the range of a double" in (err.details() or "")
    assert len(fake.chat_requests) == 2  # the answer and its corrective retry


async def test_a_schema_of_many_subschemas_is_refused_by_its_count(
    service: Service, fake: FakeOpenAI
) -> None:
    """{"allOf": [{}, {}, ...]} of 20,000 empty subschemas (60 KB, within MAX_SCHEMA_CHARS)
    took ~8 s of the event loop to check against the metaschema, on every request whose
    schema was new. Past MAX_SCHEMA_NODES subschemas it is INVALID_SCHEMA naming the field,
    counted before the check, and nothing is sent upstream."""
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "allOf": [{}] * 20_000})
    err = await _refused(service, schema, "many", timeout=60)
    _assert_invalid_schema(err)
    assert "GENSEARCH_GENERATION_MAX_SCHEMA_NODES" in (err.details() or "")
    assert fake.chat_requests == []


async def test_a_ref_chain_validation_cannot_follow_is_refused_before_any_call(
    service: Service, fake: FakeOpenAI
) -> None:
    """A chain of 600 $refs was accepted; validating any answer then passed Python's
    recursion limit: INVALID_OUTPUT after the answer and its corrective retry, both
    charged, for the schema's fault. It is INVALID_SCHEMA up front."""
    defs: dict[str, Any] = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(600)}
    defs["a600"] = {"type": "string"}
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/a0"}}})
    fake.reply = '{"x": "s"}'
    err = await _refused(service, schema, "chain")
    _assert_invalid_schema(err)
    assert fake.chat_requests == []


async def test_a_new_schemas_check_leaves_the_event_loop_to_other_calls(
    service: Service, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metaschema check of a schema not seen before (~0.4 ms a subschema, ~0.4 s near
    MAX_SCHEMA_NODES) ran on the event loop: a caller sending a new schema per call stalled
    every other caller. It runs on a worker thread: while it is held, another call is
    answered; then the held call gets its answer as before."""
    gate = hold_schema_checks(monkeypatch)
    fake.reply = '{"n": 1}'
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "title": HELD_TITLE, "properties": {"n": {"type": "integer"}}})
    held = asyncio.ensure_future(
        service.stub.Generate(
            pb.GenerateRequest(
                messages=[user("count")], response_format=pb.ResponseFormat(json_schema=schema)
            ),
            timeout=60,
        )
    )
    try:
        assert await asyncio.to_thread(gate.entered.wait, 60)
        assert gate.threads and gate.loop_thread not in gate.threads
        other = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=60)
        assert other.text == '{"n": 1}'
        assert not held.done()
    finally:
        gate.release.set()
    reply = await held
    assert json_format.MessageToDict(reply.structured) == {"n": 1}


async def test_character_classes_spanning_too_much_are_refused_before_any_call(
    service: Service, fake: FakeOpenAI
) -> None:
    """Python's re, which compiles every pattern when a new schema is checked, builds a
    character class by walking each code point of its ranges: 7,000 distinct ranges such as
    "a-\\uffff" (56 KB of schema, within MAX_SCHEMA_CHARS) held a CPU for most of a minute
    per request, every variant anew, and the call then went upstream. The classes' span is
    bounded (MAX_SCHEMA_CLASS_SPAN) before re sees them: INVALID_SCHEMA naming the field."""
    lows = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ranges = "".join(f"{lows[i % 62]}-{chr(0xFFFF - i // 62)}" for i in range(20))
    schema = struct_pb2.Struct()
    schema.update(
        {"type": "object", "properties": {"t": {"type": "string", "pattern": f"[{ranges}]"}}}
    )
    fake.reply = '{"t": "b"}'
    err = await _refused(service, schema, "wide")
    _assert_invalid_schema(err)
    assert "character classes" in (err.details() or "")
    info = error_info(err)
    assert info.metadata["max_class_span"] == str(16 * 0x10000)
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_MAX_SCHEMA_CLASS_SPAN"
    assert fake.chat_requests == []


async def test_the_schema_pattern_bounds_are_the_services_settings(
    start_service: StartService, fake: FakeOpenAI
) -> None:
    """The bounds of a schema's patterns were constants no operator could change. Set
    lower, a pattern the defaults take is refused, before any call, with the bound and
    the setting in ErrorInfo."""
    service = await start_service([fake_provider(fake)], max_schema_pattern_size=5)
    schema = struct_pb2.Struct()
    schema.update(
        {"type": "object", "properties": {"t": {"type": "string", "pattern": r"^\d{3}-\d{4}$"}}}
    )
    fake.reply = '{"t": "555-1234"}'
    err = await _refused(service, schema, "phone")
    _assert_invalid_schema(err)
    info = error_info(err)
    assert info.metadata["max_size"] == "5"
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_MAX_SCHEMA_PATTERN_SIZE"
    assert fake.chat_requests == []
