"""What validating a model's answer against a caller's JSON schema may cost: the model's
answer is the caller's to steer, so no keyword may make its check quadratic."""

from __future__ import annotations

import json

from gensearch.generation.v1 import generation_service_pb2 as pb
from google.protobuf import json_format, struct_pb2

from services.common.json_schema import SchemaLimits, check_schema, parse_output
from tests.generation.conftest import Service, user
from tests.support.fake_openai import FakeOpenAI

SCHEMA = {
    "type": "object",
    "properties": {"rows": {"type": "array", "uniqueItems": True}},
    "required": ["rows"],
}


async def test_unique_items_over_a_long_answer_is_checked_in_linear_time(
    service: Service, fake: FakeOpenAI
) -> None:
    """jsonschema compares objects pairwise for uniqueItems: an answer of 25,000 small
    objects (300 KB, well within MAX_ANSWER_CHARS) took minutes of a worker thread, mostly
    holding the GIL; a 1 MB one, over an hour. Validated by hashing, it is done at once."""
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
