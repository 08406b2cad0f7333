"""Each bad input issue 12 reproduced, against the four real services on loopback: NaN and
±Infinity in values, nesting past the limits, client values echoed whole in errors, and
history too large for one message. Every test here failed before the fix (INTERNAL,
UNKNOWN, RESOURCE_EXHAUSTED, or the value stored or echoed whole)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from services.common.auth import Identity, Role, forwarded_identity
from services.common.errors import MAX_MESSAGE_CHARS, MAX_METADATA_CHARS
from tests.gateway.conftest import ALICE, TOKEN, Stack, StackFactory, create_books, vector
from tests.support.rpc import error_info

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FINITE = [float("nan"), float("inf"), float("-inf")]
HUGE = "p" * 8192
# Alice as the gateway vouches for her, for calls straight to a service.
AS_ALICE = forwarded_identity(Identity("alice", "alice", Role.ADMIN), TOKEN)


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stream_failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


def assert_invalid(err: grpc.aio.AioRpcError, field: str | None, reason: str) -> None:
    assert err.code() == INVALID, (err.code(), err.details())
    info = error_info(err)
    assert info.reason == reason, (info, err.details())
    if field is not None:
        assert info.metadata["field"] == field, (info, err.details())


def year_filter(value: struct_pb2.Value, operator: int = ret_pb.OPERATOR_EQUAL) -> ret_pb.Filter:
    return ret_pb.Filter(
        condition=ret_pb.Condition(property="year", operator=operator, value=value)
    )


def _near() -> ret_pb.NearVector:
    return ret_pb.NearVector(vector=vector(0))


def filtered_calls(stack: Stack, where: ret_pb.Filter) -> dict[str, Callable[[], Any]]:
    """Every RPC that takes a filter, direct to retrieval and through the gateway."""
    search = ret_pb.SearchRequest(collection="Books", near_vector=_near(), filter=where)
    count = ret_pb.CountObjectsRequest(collection="Books", filter=where)
    delete = ret_pb.DeleteObjectsRequest(collection="Books", filter=where)
    generative = {"collection": "Books", "near_vector": _near(), "filter": where}
    ask = {"collection": "Books", "llm_question": "which?", "filter": where}
    return {
        "Search": lambda: stack.retrieval_direct.Search(search, metadata=AS_ALICE),
        "CountObjects": lambda: stack.retrieval_direct.CountObjects(count, metadata=AS_ALICE),
        "DeleteObjects": lambda: stack.retrieval.DeleteObjects(delete, metadata=ALICE),
        "gateway Search": lambda: stack.retrieval.Search(search, metadata=ALICE),
        "GenerativeSearch": lambda: stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(**generative), metadata=ALICE
        ),
        "StreamGenerativeSearch": lambda: stack.stub.StreamGenerativeSearch(
            gw_pb.StreamGenerativeSearchRequest(**generative), metadata=ALICE
        ),
        "Ask": lambda: stack.stub.Ask(gw_pb.AskRequest(**ask), metadata=ALICE),
        "StreamAsk": lambda: stack.stub.StreamAsk(gw_pb.StreamAskRequest(**ask), metadata=ALICE),
    }


async def call_failure(call: Any) -> grpc.aio.AioRpcError:
    if hasattr(call, "__aiter__"):
        return await stream_failure(call)
    return await failure(call)


@pytest.mark.parametrize("number", NOT_FINITE)
async def test_a_non_finite_filter_value_names_the_field(stack: Stack, number: float) -> None:
    await create_books(stack)
    scalar = year_filter(struct_pb2.Value(number_value=number))
    listed = struct_pb2.Value()
    listed.list_value.values.add().number_value = 1965
    listed.list_value.values.add().number_value = number
    in_list = year_filter(listed, ret_pb.OPERATOR_CONTAINS_ANY)
    for where, field in (
        (scalar, "filter.condition.value"),
        (in_list, "filter.condition.value[1]"),
    ):
        for name, call in filtered_calls(stack, where).items():
            err = await call_failure(call())
            assert err.code() == INVALID, (name, err.code(), err.details())
            assert error_info(err).metadata["field"] == field, name
            assert error_info(err).reason == "NUMBER_NOT_FINITE", name
    # Nothing was deleted on the way.
    count = await stack.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=ALICE
    )
    assert count.count == 5


async def test_only_the_objects_with_bad_numbers_fail(stack: Stack) -> None:
    await create_books(stack, books=[])
    objects = []
    for i, year in enumerate([1965.0, float("nan"), 1984.0, float("inf")]):
        props = struct_pb2.Struct()
        props.update({"title": f"book {i}", "tags": ["x"]})
        props.fields["year"].number_value = year
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    deep = struct_pb2.Struct()
    deep.update({"title": "deep"})
    value = deep.fields["tags"]
    for _ in range(40):
        value = value.list_value.values.add()
    value.string_value = "x"
    objects.append(ret_pb.DataObject(properties=deep, vector=vector(4)))
    answer = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Books", objects=objects), metadata=ALICE
    )
    assert [(e.index, e.field) for e in answer.errors] == [
        (1, "properties.year"),
        (3, "properties.year"),
        (4, "properties.tags" + "[0]" * 31),
    ]
    assert "NaN" in answer.errors[0].message or "nan" in answer.errors[0].message
    assert "more than 32 deep" in answer.errors[2].message
    assert len(answer.ids) == 2
    count = await stack.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=ALICE
    )
    assert count.count == 2


def _deep_filter(request: Any, levels: int) -> None:
    """``levels`` all_of groups around one condition, built in place."""
    node = request.filter
    for _ in range(levels):
        node = node.all_of.filters.add()
    node.condition.CopyFrom(year_filter(struct_pb2.Value(number_value=1965)).condition)


async def test_filters_nested_too_deep_are_invalid_argument(stack: Stack) -> None:
    await create_books(stack)
    for levels, reason, field in (
        (9, "NESTING_TOO_DEEP", "filter" + ".all_of.filters[0]" * 9),  # MAX_FILTER_DEPTH (8)
        (49, "NESTING_TOO_DEEP", None),  # protobuf's parsing limit: used to be UNKNOWN
    ):
        count = ret_pb.CountObjectsRequest(collection="Books")
        _deep_filter(count, levels)
        ask = gw_pb.AskRequest(collection="Books", llm_question="q")
        _deep_filter(ask, levels)
        for call in (
            stack.retrieval_direct.CountObjects(count, metadata=AS_ALICE),
            stack.retrieval.CountObjects(count, metadata=ALICE),
            stack.stub.Ask(ask, metadata=ALICE),
        ):
            assert_invalid(await failure(call), field, reason)


async def test_a_filter_value_nested_too_deep_names_the_field(stack: Stack) -> None:
    await create_books(stack)
    value = struct_pb2.Value()
    node = value
    for _ in range(33):
        node = node.list_value.values.add()
    node.number_value = 1
    count = ret_pb.CountObjectsRequest(
        collection="Books", filter=year_filter(value, ret_pb.OPERATOR_CONTAINS_ANY)
    )
    err = await failure(stack.retrieval.CountObjects(count, metadata=ALICE))
    assert_invalid(err, "filter.condition.value" + "[0]" * 32, "NESTING_TOO_DEEP")


def _assert_short(err: grpc.aio.AioRpcError) -> None:
    """The status quotes a prefix of the huge value, never the whole of it."""
    assert err.code() == INVALID, (err.code(), err.details())
    details = err.details() or ""
    assert HUGE not in details and len(details) <= MAX_MESSAGE_CHARS, details
    assert "8192 characters" in details or "p" * 64 not in details, details
    info = error_info(err)
    assert all(len(v) <= MAX_METADATA_CHARS for v in info.metadata.values()), info


async def test_client_values_are_echoed_as_a_short_prefix(stack: Stack) -> None:
    """An 8 KB provider name came back whole (in the message and in ErrorInfo): a status
    that large tripped gRPC's header limit and the client saw RESOURCE_EXHAUSTED."""
    await create_books(stack)
    generation = grpc.aio.insecure_channel(f"127.0.0.1:{stack.servers['generation'].port}")
    stack.channels.append(generation)
    generate = gen_grpc.GenerationServiceStub(generation)  # type: ignore[arg-type]
    hello = [gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")]
    near = _near()
    calls = [
        stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(
                collection="Books",
                near_vector=near,
                generate=gw_pb.Generate(single_prompt="{title}", provider=HUGE),
            ),
            metadata=ALICE,
        ),
        stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(
                collection="Books",
                near_vector=near,
                generate=gw_pb.Generate(single_prompt="{" + HUGE + "}"),
            ),
            metadata=ALICE,
        ),
        generate.Generate(gen_pb.GenerateRequest(provider=HUGE, messages=hello), metadata=AS_ALICE),
        stack.retrieval.Search(
            ret_pb.SearchRequest(collection="Books", near_vector=near, return_properties=[HUGE]),
            metadata=ALICE,
        ),
        stack.retrieval.CountObjects(
            ret_pb.CountObjectsRequest(
                collection="Books",
                filter=ret_pb.Filter(
                    condition=ret_pb.Condition(
                        property=HUGE,
                        operator=ret_pb.OPERATOR_EQUAL,
                        value=struct_pb2.Value(number_value=1),
                    )
                ),
            ),
            metadata=ALICE,
        ),
        stack.retrieval.GetObject(
            ret_pb.GetObjectRequest(collection="Books", id=HUGE), metadata=ALICE
        ),
        stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="q", context_field_list=[HUGE]),
            metadata=ALICE,
        ),
    ]
    for call in calls:
        _assert_short(await failure(call))


async def test_ask_on_a_conversation_of_large_turns_answers(
    stack_factory: StackFactory,
) -> None:
    """17 turns of 300,000 characters with messages capped at 2 MiB: memory's page of 17
    (5 MB) did not fit, and Ask failed RESOURCE_EXHAUSTED. Pages now stop at the byte
    budget; Ask reads the newest turns that fit its character budget and answers."""
    stack = await stack_factory(
        shared={"max_message_bytes": 2 * 1024 * 1024}, ask_history_chars=1_000_000
    )
    await create_books(stack)
    made = await stack.memory.CreateConversation(
        mem_pb.CreateConversationRequest(name="long"), metadata=ALICE
    )
    cid = made.conversation.conversation_id
    for n in range(17):
        await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input=f"{n} " + "q" * 150_000, response="a" * 150_000
            ),
            metadata=ALICE,
        )
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="And now?",
            conversation_id=cid,
            interaction_size=17,
            rewrite_query=False,
        ),
        metadata=ALICE,
    )
    assert answer.answer
    # Three turns fit the million characters; the prompt (8192 tokens) holds none of them.
    assert answer.trimmed.history_turns == 17
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid, page_size=100), metadata=ALICE
    )
    assert 0 < len(listed.interactions) < 17 and listed.next_page_token


async def test_an_unparsable_message_in_a_forwarded_stream_is_answered(stack: Stack) -> None:
    """The gateway forwards ImportObjects as a stream: a message it cannot parse used to
    cancel the downstream call and leave the caller waiting for its deadline. What the
    message before it imported stays, and the status says so, either way."""
    await create_books(stack)
    title = struct_pb2.Struct()
    title.update({"title": "Imported first"})
    first = ret_pb.ImportObjectsRequest(
        collection="Books", objects=[ret_pb.DataObject(properties=title, vector=vector(0))]
    )
    deep = ret_pb.ImportObjectsRequest()
    value = deep.objects.add().properties.fields["tags"]
    for _ in range(60):
        value = value.list_value.values.add()
    value.string_value = "x"
    for importer, metadata in ((stack.retrieval, ALICE), (stack.retrieval_direct, AS_ALICE)):
        err = await failure(
            importer.ImportObjects(iter([first, deep]), metadata=metadata, timeout=20)
        )
        assert_invalid(err, None, "NESTING_TOO_DEEP")
        assert error_info(err).metadata["imported_count"] == "1"
        assert "(message 1; 1 objects imported before it)" in (err.details() or "")
    counted = await stack.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=ALICE
    )
    assert counted.count == 7


async def test_a_stream_refused_early_keeps_its_status_through_the_gateway(stack: Stack) -> None:
    """Retrieval refuses ImportObjects at its first message while the gateway is still
    forwarding the rest: grpc-python's asyncio client (the gateway's) used to report
    INTERNAL "Internal error from Core" instead of retrieval's status (grpc/grpc#36066)."""
    await create_books(stack)
    filler = ret_pb.DataObject(id="x" * 65_536)
    stream = [ret_pb.ImportObjectsRequest(objects=[filler]) for _ in range(64)]
    for _ in range(10):
        err = await failure(stack.retrieval.ImportObjects(iter(stream), metadata=ALICE))
        assert err.code() == INVALID, (err.code(), err.details())
        assert error_info(err).metadata["field"] == "collection"


async def test_a_burst_cut_by_a_stopping_service_never_reads_internal(stack: Stack) -> None:
    """Issue 12: under bursts the gateway turned a downstream CANCELLED into INTERNAL
    (fixed with the other gateway errors; covered here with the rest of the bad inputs).
    Twenty Asks are waiting on a slow LLM when generation stops without grace: each
    answers CANCELLED or UNAVAILABLE, never INTERNAL or UNKNOWN."""
    await create_books(stack)
    stack.fake.latency = 2.0
    asks = [
        asyncio.ensure_future(
            stack.stub.Ask(
                gw_pb.AskRequest(collection="Books", llm_question=f"q{n}", context_size=1),
                metadata=ALICE,
                timeout=30,
            )
        )
        for n in range(20)
    ]
    await asyncio.sleep(0.5)
    await stack.stop_service("generation")
    codes = set()
    for ask in asks:
        try:
            await ask
            codes.add(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as err:
            codes.add(err.code())
    assert codes <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}, codes
