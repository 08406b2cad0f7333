"""Every enum field a client can set, given a number its enum lacks, through the gateway.

A client built from another (newer, older, hand-edited) copy of the protos can send any
number; proto3 keeps it as that number, so a server that only compares with the names it
knows could treat it as the zero value (silently the default) or fail INTERNAL. Each one
must be INVALID_ARGUMENT naming the field, as a non-Python client decodes it from
``grpc-status-details-bin``. The enum fields are found from the request descriptors of the
services the gateway serves, so a new enum field without a case here fails the first test.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import struct_pb2

from tests.gateway.conftest import (
    ALICE,
    Stack,
    StackFactory,
    books_collection,
    create_books,
    vector,
)
from tests.support.rpc import error_info, failure_of

# Typed Any: the generated stubs take only the enum's own values, as a client's would not.
UNKNOWN: Any = 99
FD = pb_descriptor.FieldDescriptor


def enum_fields() -> set[str]:
    """``Service.Method:path.to.field`` of every enum field reachable in a request."""
    found: set[str] = set()

    def walk(message: pb_descriptor.Descriptor, prefix: str, seen: frozenset[str]) -> None:
        if message.full_name.startswith("google.") or message.full_name in seen:
            return
        for field in message.fields:
            path = f"{prefix}{field.name}"
            if field.type == FD.TYPE_ENUM:
                found.add(path)
            elif field.message_type is not None:
                walk(field.message_type, f"{path}.", seen | {message.full_name})

    for module in (gw_pb, gen_pb, mem_pb, ret_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                walk(method.input_type, f"{service.name}.{method.name}:", frozenset())
    return found


def _filter() -> ret_pb.Filter:
    """A condition whose operator is no Operator (nested ones go through the same check)."""
    value = struct_pb2.Value(number_value=1965)
    return ret_pb.Filter(condition=ret_pb.Condition(property="year", operator=UNKNOWN, value=value))


Cases = dict[str, tuple[str, Callable[[], Any]]]


def _cases(stack: Stack, conversation_id: str) -> Cases:
    """Enum field (as enum_fields names it) -> (the field the refusal names, the call)."""
    near = ret_pb.NearVector(vector=vector(0))
    generation = gen_grpc.GenerationServiceStub(stack.channel)
    messages = [gen_pb.Message(role=UNKNOWN, content="hi")]
    cases: Cases = {}

    def on_gateway(fields: dict[str, Any], *methods: str) -> dict[str, Callable[[], Any]]:
        """Each of the gateway's ``methods`` (``"Ask"``, ...), named as enum_fields names
        it, called with its own request message (``AskRequest``, ...) made of ``fields``."""
        return {
            f"GatewayService.{method}": partial(
                getattr(stack.stub, method),
                getattr(gw_pb, f"{method}Request")(**fields),
                metadata=ALICE,
            )
            for method in methods
        }

    def filtered(where: ret_pb.Filter) -> dict[str, Callable[[], Any]]:
        search: dict[str, Any] = {"collection": "Books", "near_vector": near, "filter": where}
        ask: dict[str, Any] = {"collection": "Books", "llm_question": "which?", "filter": where}
        return {
            **on_gateway(search, "GenerativeSearch", "StreamGenerativeSearch"),
            **on_gateway(ask, "Ask", "StreamAsk"),
            "RetrievalService.Search": lambda: stack.retrieval.Search(
                ret_pb.SearchRequest(**search), metadata=ALICE
            ),
            "RetrievalService.CountObjects": lambda: stack.retrieval.CountObjects(
                ret_pb.CountObjectsRequest(collection="Books", filter=where), metadata=ALICE
            ),
            "RetrievalService.DeleteObjects": lambda: stack.retrieval.DeleteObjects(
                ret_pb.DeleteObjectsRequest(collection="Books", filter=where), metadata=ALICE
            ),
        }

    for method, call in filtered(_filter()).items():
        cases[f"{method}:filter.condition.operator"] = ("filter.condition.operator", call)

    bad_generate = gw_pb.Generate(
        single_prompt="{title}", cache=gw_pb.GenerationCache(mode=UNKNOWN)
    )
    searched = {"collection": "Books", "near_vector": near, "generate": bad_generate}
    title = struct_pb2.Struct(fields={"title": struct_pb2.Value(string_value="Dune")})
    inline = {"inline": gw_pb.InlineObjects(objects=[title]), "generate": bad_generate}
    generating = {
        **on_gateway(searched, "GenerativeSearch", "StreamGenerativeSearch"),
        **on_gateway(inline, "GenerateOnObjects", "StreamGenerateOnObjects"),
    }
    for method, call in generating.items():
        cases[f"{method}:generate.cache.mode"] = ("generate.cache.mode", call)

    bad_semantic = gw_pb.SemanticCache(mode=UNKNOWN)
    asked = {"collection": "Books", "llm_question": "which?", "semantic_cache": bad_semantic}
    for method, call in on_gateway(asked, "Ask", "StreamAsk").items():
        cases[f"{method}:semantic_cache.mode"] = ("semantic_cache.mode", call)

    cases["GenerationService.Generate:messages.role"] = (
        "messages[0].role",
        lambda: generation.Generate(
            gen_pb.GenerateRequest(provider="fake", messages=messages), metadata=ALICE
        ),
    )
    cases["GenerationService.StreamGenerate:messages.role"] = (
        "messages[0].role",
        lambda: generation.StreamGenerate(
            gen_pb.StreamGenerateRequest(provider="fake", messages=messages), metadata=ALICE
        ),
    )
    cases["MemoryService.CreateInteraction:traces.step"] = (
        "traces[0].step",
        lambda: stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=conversation_id,
                input="q",
                response="a",
                traces=[mem_pb.Trace(step=UNKNOWN)],
            ),
            metadata=ALICE,
        ),
    )
    cases["MemoryService.SearchInteractions:mode"] = (
        "mode",
        lambda: stack.memory.SearchInteractions(
            mem_pb.SearchInteractionsRequest(query="dune", mode=UNKNOWN), metadata=ALICE
        ),
    )

    def made(change: Callable[[ret_pb.Collection], None]) -> Callable[[], Any]:
        collection = books_collection("Other")
        change(collection)
        return lambda: stack.retrieval.CreateCollection(
            ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
        )

    def data_type(c: ret_pb.Collection) -> None:
        c.properties[0].data_type = UNKNOWN

    def kind(c: ret_pb.Collection) -> None:
        c.vectorizer.kind = UNKNOWN

    def distance(c: ret_pb.Collection) -> None:
        c.vectorizer.distance = UNKNOWN

    cases["RetrievalService.CreateCollection:collection.properties.data_type"] = (
        "collection.properties[0].data_type",
        made(data_type),
    )
    cases["RetrievalService.CreateCollection:collection.vectorizer.kind"] = (
        "collection.vectorizer.kind",
        made(kind),
    )
    cases["RetrievalService.CreateCollection:collection.vectorizer.distance"] = (
        "collection.vectorizer.distance",
        made(distance),
    )
    return cases


def _generic(path: str) -> str:
    """A case's name as enum_fields spells it (no list indexes)."""
    return path.replace("[0]", "")


async def test_every_client_enum_number_not_in_the_proto_is_refused_naming_its_field(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    stack = await stack_factory(memory={"search_index": "keyword", "data_dir": tmp_path / "m"})
    await create_books(stack)
    made = await stack.memory.CreateConversation(
        mem_pb.CreateConversationRequest(name="enums"), metadata=ALICE
    )
    cases = _cases(stack, made.conversation.conversation_id)
    assert {_generic(name) for name in cases} == enum_fields()
    wrong = {}
    for name, (field, call) in cases.items():
        try:
            err = await failure_of(call())
        except AssertionError:  # answered: the number taken for a known one
            wrong[name] = "answered"
            continue
        named = error_info(err).metadata["field"]
        if (err.code(), named) != (grpc.StatusCode.INVALID_ARGUMENT, field):
            wrong[name] = f"{err.code().name} {err.details()}"
    assert wrong == {}
