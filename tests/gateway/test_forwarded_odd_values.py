"""Every retrieval and memory RPC the gateway forwards, called as a client in another
language with only the protos would: an empty request, then each field of a valid request
(and of the messages it sets, three levels down) set to an odd but type-valid value (empty,
whitespace, 10 kB, negative, huge, NaN/inf, an empty list, 10,000 items, a map with an
empty key, an empty message), one at a time.

Each answer must be OK, or a refusal a client can act on: INVALID_ARGUMENT, OUT_OF_RANGE,
NOT_FOUND or RESOURCE_EXHAUSTED with an ErrorInfo whose reason docs/operations.md's
"Error reasons" tables list (and, for the first two, the field it names). Never INTERNAL,
UNKNOWN or another code, and no traceback logged by any service. The methods come from the
services' descriptors, so a new RPC without a base request here fails the first assertion.
The semantic-cache RPCs, which the gateway does not forward, must be refused as internal.
Per-object errors of UpsertObjects/ImportObjects (an OK answer) are not looked into here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import duration_pb2, field_mask_pb2, message, message_factory, struct_pb2

from tests.gateway.conftest import ALICE, Stack, StackFactory, create_books, vector
from tests.support.rpc import error_info

FD = pb_descriptor.FieldDescriptor
ROOT = Path(__file__).resolve().parents[2]
ACTIONABLE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# The semantic-cache RPCs are internal: the gateway refuses them whatever they hold.
WITHHELD = {"LookupCachedAnswer", "StoreCachedAnswer"}
# A compare-and-set field (UpdateConversationSummary's `expected_…`) that does not match
# what is stored answers as a stale expectation does, documented under ABORTED.
COMPARED = "expected_"
COMPARE_FAILED = (grpc.StatusCode.ABORTED, "SUMMARY_CHANGED")
MANY = 10_000
LONG = "x" * 10_240
DEPTH = 3


def documented_reasons() -> set[str]:
    """The reasons of docs/operations.md's "Error reasons" rows (as
    tests/test_docs_reason_sources.py reads them), and each code's generic one."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Error reasons", 1)[1].split("\n## ", 1)[0]
    rows = {
        reason
        for line in section.splitlines()
        if line.startswith("| `")
        for reason in re.findall(r"`([A-Z][A-Z_]+)`", line.split("|")[1])
    }
    return rows | {code.name for code in grpc.StatusCode}


def forwarded_methods() -> set[str]:
    """``Service.Method`` of every retrieval and memory RPC the gateway serves."""
    return {
        f"{service.name}.{method.name}"
        for module in (ret_pb, mem_pb)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def _odd_values(field: Any) -> Iterator[tuple[str, Any]]:
    """(label, value) of odd but type-valid values for one field."""
    if (
        field.is_repeated
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
    ):
        return
    if field.is_repeated:
        yield "[]", []
        if field.type == FD.TYPE_STRING:
            yield f"{MANY} items", [f"item-{i}" for i in range(MANY)]
            yield "an empty item", [""]
        elif field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            yield f"{MANY} items", [0.5] * MANY
            yield "nan item", [math.nan, 1.0, 1.0, 1.0]
            yield "inf item", [math.inf, 1.0, 1.0, 1.0]
        elif field.message_type is not None:
            yield (
                f"{MANY} empty items",
                [message_factory.GetMessageClass(field.message_type)() for _ in range(MANY)],
            )
        return
    if field.type == FD.TYPE_STRING:
        yield from (("empty", ""), ("whitespace", "  \t "), ("10 kB", LONG))
    elif field.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        yield from (("negative", -1), ("huge", 2**31 - 1), ("most negative", -(2**31)))
    elif field.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        yield from (("negative", -1), ("huge", 2**63 - 1), ("most negative", -(2**63)))
    elif field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        yield from (("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("negative", -1.0))
    elif field.type == FD.TYPE_BYTES:
        yield from (("empty", b""), ("10 kB", LONG.encode()))
    elif field.message_type is not None:
        yield "empty message", message_factory.GetMessageClass(field.message_type)()
        if field.message_type.full_name == "google.protobuf.Struct":
            yield "empty key", struct_pb2.Struct(fields={"": struct_pb2.Value(string_value="v")})
        if field.message_type.full_name == "google.protobuf.Duration":
            yield "negative", duration_pb2.Duration(seconds=-1)
            yield "huge", duration_pb2.Duration(seconds=315_576_000_000)


def _bases(ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``Service.Method`` -> the fields of a valid request (the table a new RPC joins)."""
    props = struct_pb2.Struct()
    props.update({"title": "Odd", "year": 2000})
    obj = ret_pb.DataObject(properties=props, vector=vector(1))
    near = ret_pb.NearVector(vector=vector(0))
    where = ret_pb.Filter(
        condition=ret_pb.Condition(
            property="year",
            operator=ret_pb.OPERATOR_EQUAL,
            value=struct_pb2.Value(number_value=1),
        )
    )
    conversation, interaction = ids["conversation"], ids["interaction"]
    spare_conversation, spare_interaction = ids["spare_conversation"], ids["spare_interaction"]
    book = ids["book"]
    return {
        "RetrievalService.CreateCollection": {
            "collection": ret_pb.Collection(
                name="Other",
                properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
                vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=8),
            )
        },
        "RetrievalService.GetCollection": {"name": "Books"},
        "RetrievalService.ListCollections": {"page_size": 10},
        "RetrievalService.DeleteCollection": {"name": "Spare"},
        "RetrievalService.UpsertObjects": {"collection": "Books", "objects": [obj]},
        "RetrievalService.ImportObjects": {"collection": "Books", "objects": [obj]},
        "RetrievalService.GetObject": {"collection": "Books", "id": book},
        # By ids (the odd lists reach them; beside a filter they are refused as both set),
        # a Books id Spare2 does not hold; CountObjects walks the filter.
        "RetrievalService.DeleteObjects": {"collection": "Spare2", "ids": [book]},
        "RetrievalService.CountObjects": {"collection": "Books", "filter": where},
        "RetrievalService.Search": {"collection": "Books", "near_vector": near, "limit": 2},
        "RetrievalService.LookupCachedAnswer": {"collection": "Books", "question": "q"},
        "RetrievalService.StoreCachedAnswer": {"collection": "Books", "question": "q"},
        "RetrievalService.GetChunks": {
            "collection": "Chunks",
            "ranges": [ret_pb.ChunkRange(document=struct_pb2.Value(string_value="Dune"))],
        },
        "RetrievalService.BatchGetObjects": {"collection": "Books", "ids": [book]},
        "MemoryService.CreateConversation": {"name": "odd", "max_turns": 10},
        "MemoryService.GetConversation": {"conversation_id": conversation},
        "MemoryService.ListConversations": {"page_size": 10},
        "MemoryService.UpdateConversation": {
            "conversation_id": conversation,
            "name": "renamed",
            "update_mask": field_mask_pb2.FieldMask(paths=["name"]),
        },
        "MemoryService.DeleteConversation": {"conversation_id": spare_conversation},
        "MemoryService.CreateInteraction": {
            "conversation_id": conversation,
            "input": "q",
            "response": "a",
        },
        "MemoryService.GetInteraction": {"interaction_id": interaction},
        "MemoryService.ListInteractions": {"conversation_id": conversation, "page_size": 10},
        "MemoryService.UpdateInteraction": {
            "interaction": mem_pb.Interaction(interaction_id=interaction, additional_info=props),
            "update_mask": field_mask_pb2.FieldMask(paths=["additional_info"]),
        },
        "MemoryService.DeleteInteraction": {"interaction_id": spare_interaction},
        "MemoryService.ListInteractionTraces": {"interaction_id": interaction, "page_size": 10},
        "MemoryService.SearchInteractions": {"query": "q", "limit": 5},
        "MemoryService.UpdateConversationSummary": {
            "conversation_id": conversation,
            "text": "summary",
            "through_interaction_id": interaction,
            "summarised_turns": 1,
        },
        "MemoryService.CheckStorage": {"conversation_id": conversation, "bytes": 10},
    }


def _mutations(
    request: message.Message, path: str, depth: int
) -> Iterator[tuple[str, Callable[[message.Message], None]]]:
    """(field path and label, a change to a copy of ``request``) for each odd value of each
    field of ``request``, and of the fields of its messages the base sets (the first item
    of a list), ``depth`` levels down; google.protobuf's own types are leaves."""
    for field in request.DESCRIPTOR.fields:
        name = f"{path}{field.name}"
        for label, value in _odd_values(field):
            yield f"{name}: {label}", partial(_set, field.name, value)
        if depth == 0 or field.message_type is None:
            continue
        if (
            field.message_type.full_name.startswith("google.")
            or field.message_type.GetOptions().map_entry
        ):
            continue
        if field.is_repeated:
            items = getattr(request, field.name)
            if not items:
                continue
            inner, index = items[0], "[0]"
        elif request.HasField(field.name):
            inner, index = getattr(request, field.name), ""
        else:
            continue
        for label, change in _mutations(inner, f"{name}{index}.", depth - 1):
            yield label, partial(_within, field.name, field.is_repeated, change)


def _set(name: str, value: Any, request: message.Message) -> None:
    field = request.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        request.ClearField(name)
        getattr(request, name).extend(value)
    elif field.message_type is not None:
        getattr(request, name).CopyFrom(value)
    else:
        setattr(request, name, value)


def _within(
    name: str, repeated: bool, change: Callable[[message.Message], None], request: message.Message
) -> None:
    change(getattr(request, name)[0] if repeated else getattr(request, name))


def _cases(bases: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, message.Message]]:
    """(Service.Method, what is odd, the request): the empty request, then each field of
    the base request (three levels down) given each odd value, the rest as the base has it."""
    for module in (ret_pb, mem_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                name = f"{service.name}.{method.name}"
                make = message_factory.GetMessageClass(method.input_type)
                yield name, "empty request", make()
                base = make(**bases[name])
                for n, (label, change) in enumerate(_mutations(base, "", DEPTH)):
                    request = make()
                    request.CopyFrom(base)
                    change(request)
                    if isinstance(request, ret_pb.CreateCollectionRequest):
                        _unique_name(request.collection, n)
                    yield name, label, request


def _unique_name(collection: ret_pb.Collection, n: int) -> None:
    """Each case creates its own collection (the base's name taken by an earlier case would
    answer ALREADY_EXISTS before the odd value is read), unless the name is the odd value."""
    if collection.name == "Other":
        collection.name = f"Other{n}"


async def _call(stack: Stack, name: str, request: message.Message) -> grpc.aio.AioRpcError | None:
    service, method = name.split(".")
    stub: Any = stack.retrieval if service == "RetrievalService" else stack.memory
    try:
        if method == "ImportObjects":
            await stub.ImportObjects(iter([request]), metadata=ALICE)
        else:
            await getattr(stub, method)(request, metadata=ALICE)
    except grpc.aio.AioRpcError as err:
        return err
    return None


def _wrong(name: str, odd: str, err: grpc.aio.AioRpcError | None, reasons: set[str]) -> str | None:
    """What is wrong with one answer to the case ``odd`` of ``name``, or None."""
    if err is None:
        return None
    if name.split(".")[1] in WITHHELD:
        ok = err.code() == grpc.StatusCode.PERMISSION_DENIED
        return (
            None
            if ok and error_info(err).reason == "INTERNAL_METHOD"
            else f"{err.code().name} {err.details()}"
        )
    try:
        info = error_info(err)
    except AssertionError:
        return f"{err.code().name} without ErrorInfo: {err.details()}"
    if odd.startswith(COMPARED) and (err.code(), info.reason) == COMPARE_FAILED:
        return None
    if err.code() not in ACTIONABLE:
        return f"{err.code().name} {err.details()}"
    if info.reason not in reasons:
        return f"reason {info.reason} not documented"
    names_a_field = err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
    if names_a_field and not info.metadata.get("field"):
        return f"{info.reason} names no field: {err.details()}"
    return None


async def _fresh_summary(stack: Stack, request: message.Message, ids: dict[str, str]) -> None:
    """An UpdateConversationSummary case on a conversation of its own with one turn: on
    the shared one, the first case stored would make every later one's (unset)
    ``expected_through_interaction_id`` stale, ABORTED before the odd value is read."""
    assert isinstance(request, mem_pb.UpdateConversationSummaryRequest)
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    conversation = made.conversation.conversation_id
    turn = await stack.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=conversation, input="q", response="a"),
        metadata=ALICE,
    )
    if request.conversation_id == ids["conversation"]:
        request.conversation_id = conversation
    if request.through_interaction_id == ids["interaction"]:
        request.through_interaction_id = turn.interaction.interaction_id


async def _setup(stack: Stack) -> dict[str, str]:
    book = (await create_books(stack))[0]
    for spare in ("Spare", "Spare2"):
        await create_books(stack, spare)
    chunked = ret_pb.Collection(
        name="Chunks",
        properties=[
            ret_pb.Property(name="doc_id", data_type=ret_pb.DATA_TYPE_TEXT),
            ret_pb.Property(name="chunk_index", data_type=ret_pb.DATA_TYPE_INT),
        ],
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=8),
        chunking=ret_pb.Chunking(document_property="doc_id", order_property="chunk_index"),
    )
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=chunked), metadata=ALICE
    )
    ids = {"book": book}
    for key in ("conversation", "spare_conversation"):
        made = await stack.memory.CreateConversation(
            mem_pb.CreateConversationRequest(name=key), metadata=ALICE
        )
        ids[key] = made.conversation.conversation_id
    for key in ("interaction", "spare_interaction"):  # the spare one is deleted
        turn = await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=ids["conversation"], input="q", response="a"
            ),
            metadata=ALICE,
        )
        ids[key] = turn.interaction.interaction_id
    return ids


async def test_every_forwarded_rpc_answers_odd_values_with_an_actionable_status(
    stack_factory: StackFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await stack_factory(memory={"search_index": "keyword", "data_dir": tmp_path / "m"})
    ids = await _setup(stack)
    bases = _bases(ids)
    assert set(bases) == forwarded_methods()
    reasons = documented_reasons()
    caplog.set_level(logging.WARNING)
    wrong: dict[str, str] = {}
    for name, odd, request in _cases(bases):
        if name == "MemoryService.UpdateConversationSummary":
            await _fresh_summary(stack, request, ids)
        problem = _wrong(name, odd, await _call(stack, name, request), reasons)
        if problem is not None:
            wrong[f"{name} ({odd})"] = problem
    assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in wrong.items())
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info is not None]
    assert tracebacks == []
