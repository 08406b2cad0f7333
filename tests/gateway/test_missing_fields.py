"""A field the client must set and did not is INVALID_ARGUMENT with reason MISSING_FIELD
naming it, in every service alike (docs/operations.md, the reasons table). Memory said so;
retrieval, generation and the gateway answered the same omission with the bare reason
INVALID_ARGUMENT (a JSON schema left empty: INVALID_SCHEMA), so a client could not tell
"you forgot X" from "X is wrong" by reason."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from tests.gateway.conftest import ALICE, Stack
from tests.retrieval.conftest import cond, vector_collection
from tests.support.rpc import error_info

EQ = ret_pb.OPERATOR_EQUAL
USER = gen_pb.ROLE_USER


def _count(flt: ret_pb.Filter) -> ret_pb.CountObjectsRequest:
    return ret_pb.CountObjectsRequest(collection="Things", filter=flt)


def _condition(**fields: Any) -> ret_pb.Filter:
    return ret_pb.Filter(condition=ret_pb.Condition(**fields))


def _value(v: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=v)


def _generate(**fields: Any) -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(**fields)


HI = [gen_pb.Message(role=USER, content="hi")]


def _cases(stack: Stack) -> list[tuple[str, Any, Any]]:
    r, m, g = stack.retrieval, stack.memory, stack.stub
    gen = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[arg-type]
    some_id = str(uuid.uuid4())
    return [
        # retrieval
        ("collection", r.CountObjects, (ret_pb.CountObjectsRequest())),
        ("filter", r.CountObjects, (_count(ret_pb.Filter()))),
        (
            "filter.any_of.filters",
            r.CountObjects,
            (_count(ret_pb.Filter(any_of=ret_pb.FilterGroup()))),
        ),
        (
            "filter.condition.property",
            r.CountObjects,
            (_count(_condition(operator=EQ, value=_value("x")))),
        ),
        (
            "filter.condition.value",
            r.CountObjects,
            (_count(_condition(property="title", operator=EQ))),
        ),
        (
            "filter.condition.operator",
            r.CountObjects,
            (_count(_condition(property="title", value=_value("x")))),
        ),
        ("id", r.GetObject, (ret_pb.GetObjectRequest(collection="Things"))),
        ("ids", r.BatchGetObjects, (ret_pb.BatchGetObjectsRequest(collection="Things"))),
        ("ids", r.DeleteObjects, (ret_pb.DeleteObjectsRequest(collection="Things"))),
        (
            "collection.name",
            r.CreateCollection,
            (ret_pb.CreateCollectionRequest(collection=vector_collection(""))),
        ),
        (
            "collection.properties[0].data_type",
            r.CreateCollection,
            (
                ret_pb.CreateCollectionRequest(
                    collection=ret_pb.Collection(
                        name="Typeless",
                        properties=[ret_pb.Property(name="title")],
                        vectorizer=ret_pb.Vectorizer(
                            kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=4
                        ),
                    )
                )
            ),
        ),
        (
            "collection.vectorizer.dimensions",
            r.CreateCollection,
            (
                ret_pb.CreateCollectionRequest(
                    collection=ret_pb.Collection(
                        name="Sizeless",
                        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE),
                    )
                )
            ),
        ),
        # memory
        ("conversation_id", m.GetConversation, (mem_pb.GetConversationRequest())),
        (
            "request_id",
            m.CheckStorage,
            (mem_pb.CheckStorageRequest(claim_token="t", claim_seconds=5)),
        ),
        (
            "claim_seconds",
            m.CheckStorage,
            (mem_pb.CheckStorageRequest(request_id="r", claim_token="t")),
        ),
        # generation (through the gateway)
        ("messages", gen.Generate, (_generate())),
        (
            "messages[0].content",
            gen.Generate,
            (_generate(messages=[gen_pb.Message(role=USER)])),
        ),
        ("messages[0].role", gen.Generate, (_generate(messages=[gen_pb.Message(content="hi")]))),
        (
            "fallback[0].provider",
            gen.Generate,
            (_generate(messages=HI, fallback=[gen_pb.ModelChoice(model="m")])),
        ),
        (
            "response_format.json_schema",
            gen.Generate,
            (_generate(messages=HI, response_format=gen_pb.ResponseFormat())),
        ),
        # gateway
        ("llm_question", g.Ask, (gw_pb.AskRequest(collection="Things"))),
        ("collection", g.Ask, (gw_pb.AskRequest(llm_question="why?"))),
        (
            "ids",
            g.GenerateOnObjects,
            (
                gw_pb.GenerateOnObjectsRequest(
                    collection="Things", generate=gw_pb.Generate(single_prompt="x")
                )
            ),
        ),
        (
            "generate.single_prompt",
            g.GenerateOnObjects,
            (
                gw_pb.GenerateOnObjectsRequest(
                    collection="Things",
                    ids=gw_pb.ObjectIds(ids=[some_id]),
                    generate=gw_pb.Generate(),
                )
            ),
        ),
        (
            "generate.grouped_task",
            g.GenerateOnObjects,
            (
                gw_pb.GenerateOnObjectsRequest(
                    collection="Things",
                    ids=gw_pb.ObjectIds(ids=[some_id]),
                    generate=gw_pb.Generate(grouped_properties=["title"]),
                )
            ),
        ),
    ]


async def test_a_field_left_unset_is_missing_field_in_every_service(stack: Stack) -> None:
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=vector_collection("Things")), metadata=ALICE
    )
    wrong = []
    for field, method, request in _cases(stack):
        try:
            await method(request, metadata=ALICE)
        except grpc.aio.AioRpcError as err:
            info = error_info(err)
            got = (err.code(), info.reason, info.metadata.get("field"))
            if got != (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD", field):
                wrong.append((field, got, err.details()))
            continue
        wrong.append((field, "succeeded"))
    assert wrong == [], "\n".join(map(str, wrong))


async def test_a_field_set_but_wrong_is_not_missing(stack: Stack) -> None:
    # The other side of the line: a value that is there but bad keeps its own reason.
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=vector_collection("Things")), metadata=ALICE
    )
    stack_calls = [
        stack.retrieval.GetObject(
            ret_pb.GetObjectRequest(collection="Things", id="nope"), metadata=ALICE
        ),
        stack.retrieval.CountObjects(_count(cond("title", 99, "x")), metadata=ALICE),
    ]
    for call in stack_calls:
        try:
            await call
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(err).reason != "MISSING_FIELD", err.details()
            continue
        raise AssertionError("succeeded")
