"""``structured`` (the answer parsed against ``response_format``'s schema) keeps the JSON's
integers: the README shows ``"structured": {"title": "Dune", "year": 1965}``, but the field
is a ``Struct``, where every number is a double, so the client gave ``{"year": 1965.0}``
for a schema that says ``"type": "integer"``. The client now takes the values from the
answer's own JSON text when it parses to the same object (the server validated that very
text); anything else keeps the Struct's values. Real stack, fake LLM (it echoes the prompt).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gensearch.client import AsyncGensearch, types

from tests.cli.conftest import RunningStack

SCHEMA = {
    "name": "book",
    "json_schema": {
        "type": "object",
        "required": ["title", "year"],
        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    },
}


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


def _exactly(value: object, expected: object) -> None:
    assert value == expected
    assert repr(value) == repr(expected)  # 1965, not 1965.0; 2.5 stays a float


async def test_a_completion_keeps_integers(client: AsyncGensearch) -> None:
    done = await client.generate.complete(
        '{"title": "Dune", "year": 1965, "scores": [1, 2.5], "meta": {"pages": 412}}',
        response_format=SCHEMA,
    )
    _exactly(done.structured, {"title": "Dune", "year": 1965, "scores": [1, 2.5],
                               "meta": {"pages": 412}})  # fmt: skip


async def test_a_fenced_answer_keeps_integers(client: AsyncGensearch) -> None:
    done = await client.generate.complete(
        '```json\n{"title": "Dune", "year": 1965}\n```', response_format=SCHEMA
    )
    _exactly(done.structured, {"title": "Dune", "year": 1965})


async def test_each_hit_and_the_stream_keep_integers(client: AsyncGensearch) -> None:
    objects = [{"title": "Dune", "year": 1965}, {"title": "Solaris", "year": 1961}]
    template = '{{"title": "{title}", "year": {year}}}'
    found = await client.generate.on_objects(
        objects, single_prompt=template, response_format=SCHEMA
    )
    for item, expected in zip(found, objects, strict=True):
        assert item.generation is not None and item.generation.ok, item.generation
        _exactly(item.generation.structured, expected)
    streamed = [
        event.generation
        async for event in client.generate_stream.on_objects(
            objects, single_prompt=template, response_format=SCHEMA
        )
        if isinstance(event, types.HitResultEvent)
    ]
    assert len(streamed) == 2
    for generation in streamed:
        assert generation is not None
        _exactly(generation.structured, objects[0] if "Dune" in generation.result else objects[1])
