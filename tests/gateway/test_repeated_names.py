"""A property named twice in a request's list (return_properties, grouped_properties,
context_field_list) is refused naming the repeat: each repeat was paid for per hit, and a
3 MB request of one name repeated took ~2.5 s of CPU."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from tests.gateway.conftest import ALICE, DIM, Stack, create_books
from tests.support.rpc import error_info

NEAR = ret_pb.NearVector(vector=[0.5] * DIM)
# Within the gateway's request size; refused at its first repeat, before any per-name work.
MANY = ["title"] * 300_000


def _search(**fields: Any) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(collection="Books", near_vector=NEAR, limit=2, **fields)


def _inline(**fields: Any) -> gw_pb.GenerateOnObjectsRequest:
    obj = struct_pb2.Struct()
    obj.update({"title": "Dune", "year": 1965})
    return gw_pb.GenerateOnObjectsRequest(inline=gw_pb.InlineObjects(objects=[obj]), **fields)


def _ask(**fields: Any) -> gw_pb.AskRequest:
    return gw_pb.AskRequest(collection="Books", llm_question="which?", near_vector=NEAR, **fields)


CASES = [
    (
        "GenerativeSearch",
        _search(return_properties=["title", "year", "title"]),
        "return_properties[2]",
    ),
    ("GenerativeSearch", _search(return_properties=MANY), "return_properties[1]"),
    (
        "GenerativeSearch",
        _search(generate=gw_pb.Generate(grouped_task="Compare", grouped_properties=MANY)),
        "generate.grouped_properties[1]",
    ),
    (
        "GenerateOnObjects",
        _inline(
            return_properties=["year", "title", "year"], generate=gw_pb.Generate(grouped_task="x")
        ),
        "return_properties[2]",
    ),
    (
        "GenerateOnObjects",
        _inline(generate=gw_pb.Generate(grouped_task="x", grouped_properties=["year", "year"])),
        "generate.grouped_properties[1]",
    ),
    ("Ask", _ask(context_field_list=["title", "title"]), "context_field_list[1]"),
    ("Ask", _ask(context_field_list=MANY), "context_field_list[1]"),
]


@pytest.mark.parametrize(("method", "request_", "field"), CASES)
async def test_a_name_given_twice_is_refused_naming_the_repeat(
    stack: Stack, method: str, request_: Any, field: str
) -> None:
    await create_books(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stack.stub, method)(request_, metadata=ALICE, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.metadata["field"] == field, caught.value.details()
    # Every case repeats its list's first entry.
    assert info.metadata["first"] == field.split("[")[0] + "[0]"
    assert field in (caught.value.details() or "")
    assert stack.fake.chat_requests == []


async def test_each_name_once_is_accepted(stack: Stack) -> None:
    await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        _search(
            return_properties=["title", "year"],
            generate=gw_pb.Generate(grouped_task="Compare", grouped_properties=["year", "title"]),
        ),
        metadata=ALICE,
    )
    assert len(response.hits) == 2 and response.grouped.result
