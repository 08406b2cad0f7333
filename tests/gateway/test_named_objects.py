"""GenerateOnObjects / StreamGenerateOnObjects: the generate block over objects named by id
or given inline, no search; per-object NOT_FOUND, whole-call errors naming the field, the
generation cache applied the same way."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.common.property_types import ObjectInvalid, coerce_value
from services.common.suggest import MAX_KNOWN
from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import ALICE, Stack, StackFactory, create_books, retrieval_calls
from tests.support.rpc import error_info


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def by_ids(ids: list[str], **generate: Any) -> gw_pb.GenerateOnObjectsRequest:
    return gw_pb.GenerateOnObjectsRequest(
        collection="Books",
        ids=gw_pb.ObjectIds(ids=ids),
        generate=gw_pb.Generate(**generate),
    )


def inline(objects: list[dict[str, Any]], **generate: Any) -> gw_pb.GenerateOnObjectsRequest:
    return gw_pb.GenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=[struct(o) for o in objects]),
        generate=gw_pb.Generate(**generate),
    )


async def invalid(stack: Stack, request: gw_pb.GenerateOnObjectsRequest) -> tuple[Any, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    return caught.value.code(), error_info(caught.value).metadata.get("field", "")


async def test_ids_in_the_order_given_with_a_missing_one_as_its_own_error(stack: Stack) -> None:
    ids = await create_books(stack)
    missing = str(uuid.uuid4())
    request = by_ids(
        [ids[2], missing, ids[0]],
        single_prompt="Title: {title}",
        grouped_task="Compare them",
        debug=True,
    )
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert [h.hit.id for h in response.hits] == [ids[2], missing, ids[0]]
    emma, gone, dune = (h.generation for h in response.hits)
    assert emma.result.endswith("Title: Emma") and dune.result.endswith("Title: Dune")
    assert gone.error.status == "NOT_FOUND" and gone.error.reason == "OBJECT_NOT_FOUND"
    assert response.hits[0].hit.properties.fields["year"].number_value == 1815
    # The grouped prompt holds the two found objects, numbered in the order given.
    assert "[1]\nbody: A matchmaker" in response.grouped.prompt
    assert "[2]\nbody: A desert planet" in response.grouped.prompt
    assert "[3]" not in response.grouped.prompt
    assert len(stack.fake.chat_requests) == 3  # two objects + grouped: none for the missing


async def test_a_missing_id_is_its_own_error_with_a_grouped_task_alone(stack: Stack) -> None:
    ids = await create_books(stack)
    missing = str(uuid.uuid4())
    request = by_ids([missing, ids[0]], grouped_task="Sum up")
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    gone, found = response.hits
    assert gone.generation.error.reason == "OBJECT_NOT_FOUND"
    assert not found.HasField("generation")  # no per-object task, no per-object result
    assert response.grouped.result and not response.grouped.HasField("error")
    stream = gw_pb.StreamGenerateOnObjectsRequest()
    stream.ParseFromString(request.SerializeToString())
    events = [e async for e in stack.stub.StreamGenerateOnObjects(stream, metadata=ALICE)]
    errors = {
        e.hit_result.hit_index: e.hit_result.generation.error.reason
        for e in events
        if e.HasField("hit_result")
    }
    assert errors == {0: "OBJECT_NOT_FOUND"}


async def test_a_grouped_task_over_no_object_makes_no_call(stack: Stack) -> None:
    """Before, every id missing still sent the grouped task over "(no results)": a charged
    call for the model's guess. Now the grouped result is NO_RESULTS, with no call; a
    search finding nothing is the same."""
    await create_books(stack)
    request = by_ids([str(uuid.uuid4()), str(uuid.uuid4())], grouped_task="Sum up")
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert [h.generation.error.reason for h in response.hits] == ["OBJECT_NOT_FOUND"] * 2
    error = response.grouped.error
    assert (error.status, error.reason) == ("FAILED_PRECONDITION", "NO_RESULTS")
    assert error.metadata["field"] == "generate.grouped_task"
    assert response.grouped.upstream_calls == 0 and not response.grouped.result
    stream = gw_pb.StreamGenerateOnObjectsRequest()
    stream.ParseFromString(request.SerializeToString())
    events = [e async for e in stack.stub.StreamGenerateOnObjects(stream, metadata=ALICE)]
    grouped = [e.grouped for e in events if e.HasField("grouped")]
    assert [g.error.reason for g in grouped] == ["NO_RESULTS"]

    nothing = gw_pb.GenerativeSearchRequest(
        collection="Books",
        keyword=ret_pb.Keyword(text="zeppelin"),
        generate=gw_pb.Generate(grouped_task="Sum up"),
    )
    found = await stack.stub.GenerativeSearch(nothing, metadata=ALICE)
    assert not found.hits and found.grouped.error.reason == "NO_RESULTS"
    assert stack.fake.chat_requests == []


async def test_ids_are_read_in_one_batch_call(stack: Stack) -> None:
    """However many ids (a missing one too), one BatchGetObjects reaches retrieval
    (counted on retrieval's own server) and no GetObject."""
    ids = await create_books(stack)
    missing = str(uuid.uuid4())
    before = (retrieval_calls("BatchGetObjects"), retrieval_calls("GetObject"))
    request = by_ids([*ids, missing.upper()], single_prompt="Title: {title}")
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    after = (retrieval_calls("BatchGetObjects"), retrieval_calls("GetObject"))
    assert after == (before[0] + 1, before[1])
    assert [h.hit.id for h in response.hits] == [*ids, missing]
    assert response.hits[0].generation.result.endswith("Title: Dune")
    assert response.hits[-1].generation.error.reason == "OBJECT_NOT_FOUND"
    assert len(stack.fake.chat_requests) == len(ids)


async def test_an_id_given_twice_is_refused_before_any_call(stack: Stack) -> None:
    """Each repeat would cost its own LLM call: the whole call is INVALID_ARGUMENT naming
    the repeat and the entry it repeats, unary and streamed, before retrieval or the LLM
    is asked. Ids are compared canonically (upper case repeats lower case)."""
    ids = await create_books(stack)
    before = retrieval_calls("BatchGetObjects")
    request = by_ids(
        [ids[0], ids[1], ids[2], ids[0].upper(), ids[1]], single_prompt="Title: {title}"
    )
    stream = gw_pb.StreamGenerateOnObjectsRequest()
    stream.ParseFromString(request.SerializeToString())
    for call in (
        lambda: stack.stub.GenerateOnObjects(request, metadata=ALICE),
        lambda: stack.stub.StreamGenerateOnObjects(stream, metadata=ALICE).read(),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info.reason == "DUPLICATE_ID"
        assert info.metadata["field"] == "ids.ids[3]"
        assert info.metadata["first"] == "ids.ids[0]"
        assert "ids.ids[3] repeats ids.ids[0]" in (caught.value.details() or "")
    assert retrieval_calls("BatchGetObjects") == before
    assert not stack.fake.chat_requests


async def test_batch_get_objects_is_forwarded_like_get_object(stack_factory: StackFactory) -> None:
    keys = "alice@acme/admin:key-alice-acme,bob@globex/admin:key-bob-globex"
    alice = (("authorization", "Bearer key-alice-acme"),)
    bob = (("authorization", "Bearer key-bob-globex"),)
    stack = await stack_factory(shared={"api_keys": keys})
    ids = await create_books(stack, metadata=alice)
    request = ret_pb.BatchGetObjectsRequest(collection="Books", ids=ids[:2], include_vector=True)
    got = await stack.retrieval.BatchGetObjects(request, metadata=alice)
    assert [o.id for o in got.objects] == ids[:2] and not got.missing_ids
    assert got.objects[0].properties.fields["title"].string_value == "Dune"
    assert all(o.vector for o in got.objects)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.BatchGetObjects(request, metadata=bob)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["field"] == "collection"
    await create_books(stack, metadata=bob, books=[])
    theirs = await stack.retrieval.BatchGetObjects(request, metadata=bob)
    assert not theirs.objects and list(theirs.missing_ids) == ids[:2]


async def test_inline_objects_without_a_collection(stack: Stack) -> None:
    objects = [{"name": "tea", "price": 3}, {"name": "cake", "price": 4.5}]
    response = await stack.stub.GenerateOnObjects(
        inline(objects, single_prompt="Describe {name} at {price}", grouped_task="Total?"),
        metadata=ALICE,
    )
    assert [h.generation.result for h in response.hits] == [
        "Describe tea at 3",
        "Describe cake at 4.5",
    ]
    assert all(h.hit.id == "" for h in response.hits)
    assert response.grouped.result and response.usage.total_tokens > 0


async def test_a_prompt_rendered_past_the_limit_fails_that_object_alone(stack: Stack) -> None:
    # 8,000 placeholders of a 1,000-character value: 8 million characters for one object
    # (a 32,000-character template over a 64 KiB value renders gigabytes), refused per
    # object before it is built, at the default MAX_RENDERED_PROMPT_CHARS of a million.
    request = inline([{"v": "x" * 1_000}, {"v": "short"}], single_prompt="{v}" * 8_000)
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    big, small = (h.generation for h in response.hits)
    assert big.error.status == "INVALID_ARGUMENT" and big.error.reason == "PROMPT_TOO_LONG"
    assert "1000000 characters" in big.error.message
    assert small.result.endswith("short" * 8_000)
    assert len(stack.fake.chat_requests) == 1


async def test_inline_objects_checked_against_a_named_collection(stack: Stack) -> None:
    await create_books(stack)
    request = inline([{"title": "Kim", "body": "India."}], single_prompt="About {title}")
    request.collection = "Books"
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert response.hits[0].generation.result == "About Kim"
    bad = inline([{"title": "Kim", "author": "Kipling"}], single_prompt="About {title}")
    bad.collection = "Books"
    assert await invalid(stack, bad) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "inline.objects[0].author",
    )
    # The path once (QA: "inline.objects[0].author: inline.objects[0]: no property …").
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(bad, metadata=ALICE)
    assert caught.value.details() == (
        "inline.objects[0].author: no property 'author' in collection 'Books'"
    )
    # A property named as the message's first word is still the path, then the message
    # (it read "inline.objects[0].no property 'no' …": the name taken for its subject).
    worded = inline([{"title": "Kim", "no": 1}], single_prompt="About {title}")
    worded.collection = "Books"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(worded, metadata=ALICE)
    assert caught.value.details() == "inline.objects[0].no: no property 'no' in collection 'Books'"
    # An int property's value past 2^53: the Struct's double may not be the integer meant
    # (2^60 + 1 arrives as 2^60), so the prompt would show another number; as retrieval
    # refuses it stored. 2^53 - 1 (the largest safe integer) is exact.
    exact = inline([{"title": "Kim", "year": 2**53 - 1}], single_prompt="{title} {year}")
    exact.collection = "Books"
    response = await stack.stub.GenerateOnObjects(exact, metadata=ALICE)
    assert response.hits[0].generation.result.endswith(f"Kim {2**53 - 1}")
    rounded = inline([{"title": "Kim"}, {"year": 2**60 + 1}], single_prompt="{title}")
    rounded.collection = "Books"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(rounded, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("WRONG_TYPE", "inline.objects[1].year")
    assert "past 2^53" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("value", "name", "where", "expected"),
    [
        (5, "title", "title", "expected text, got the number 5.0"),
        # The element that is not text, by its index: "expected text array, got a list"
        # said neither which element nor what it was, of a value that is a list.
        (["sf", 3], "tags", "tags[1]", "expected text, got the number 3.0"),
        (["sf", None], "tags", "tags[1]", "expected text, got no value"),
        ("1965", "year", "year", "expected int, got the string '1965'"),
        (1965.5, "year", "year", "expected int, got the number 1965.5"),
        (True, "year", "year", "expected int, got a bool"),
    ],
)
async def test_inline_values_of_the_wrong_type_for_a_named_collection_are_wrong_type(
    stack: Stack, value: Any, name: str, where: str, expected: str
) -> None:
    """A named collection's types hold for inline objects as for UpsertObjects (the same
    rule, property_types.coerce_value): a text property given the number 5 was accepted
    and rendered into the prompt as "5.0". Refused before any LLM call, naming the field
    (for a text array, its element)."""
    await create_books(stack)
    objects: list[dict[str, Any]] = [{"title": "Kim"}, {"title": "Emma"}, {"title": "Dune"}]
    objects[2][name] = value
    request = inline(objects, single_prompt="About {title}")
    request.collection = "Books"
    calls = len(stack.fake.chat_requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    path = f"inline.objects[2].{where}"
    assert (info.reason, info.metadata["field"]) == ("WRONG_TYPE", path)
    assert caught.value.details() == f"{path}: {expected}"
    assert len(stack.fake.chat_requests) == calls


async def test_an_inline_value_with_no_kind_is_a_null_as_upsert_objects_takes_it(
    stack: Stack,
) -> None:
    """A protobuf Value with none of its kinds set: UpsertObjects reads it as a null and
    skips it; an inline object over the same collection was refused instead, as WRONG_TYPE
    "expected int, got an object". Now taken as the null it stands for, rendered as one."""
    await create_books(stack)
    unset = struct({"title": "Kim"})
    unset.fields["year"].CopyFrom(struct_pb2.Value())  # no kind set
    stored = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Books", objects=[ret_pb.DataObject(properties=unset, vector=[0.1] * 4)]
        ),
        metadata=ALICE,
    )
    assert not stored.errors and len(stored.ids) == 1
    for obj in (unset, struct({"title": "Kim", "year": None})):
        for prompt in ("About {title}", "About {title} ({year})"):
            request = gw_pb.GenerateOnObjectsRequest(
                collection="Books",
                inline=gw_pb.InlineObjects(objects=[obj]),
                generate=gw_pb.Generate(single_prompt=prompt),
            )
            response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
            generation = response.hits[0].generation
            if "{year}" in prompt:  # a null has no value to render: that object fails alone
                assert generation.error.reason == "MISSING_PROPERTY"
            else:
                assert generation.result == "About Kim"


def test_a_value_of_none_is_described_as_no_value() -> None:
    # The shared rule's message for a None (a null or a kind-less Value, decoded) given
    # where a type is required: it said "got an object".
    with pytest.raises(ObjectInvalid) as caught:
        coerce_value(ret_pb.DATA_TYPE_INT, None, "properties.year")
    assert caught.value.message == "expected int, got no value"


async def test_streaming_with_ids(stack: Stack) -> None:
    ids = await create_books(stack)
    request = gw_pb.StreamGenerateOnObjectsRequest()
    request.ParseFromString(
        by_ids([ids[1], ids[4]], single_prompt="T {title}", grouped_task="G").SerializeToString()
    )
    request.generate.stream_tokens = True
    events = [e async for e in stack.stub.StreamGenerateOnObjects(request, metadata=ALICE)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "hits" and kinds[-2:] == ["grouped", "done"]
    assert [h.id for h in events[0].hits.hits] == [ids[1], ids[4]]
    results = {
        e.hit_result.hit_index: e.hit_result.generation.result
        for e in events[1:-2]
        if e.HasField("hit_result")
    }
    assert results == {0: "T Neuromancer", 1: "T Foundation"}
    assert any(e.HasField("token") for e in events)


async def test_the_cache_applies_to_named_objects(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    stack = await stack_factory(
        redis_url=shared_redis.url, quota_key_prefix=f"no-{uuid.uuid4().hex[:8]}"
    )
    ids = await create_books(stack)
    cache = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)
    request = by_ids(ids[:3], single_prompt="T {title}", cache=cache)
    await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    before = len(stack.fake.chat_requests)
    again = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert len(stack.fake.chat_requests) == before
    assert all(h.generation.cached for h in again.hits)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gw_pb.GenerateOnObjectsRequest(generate=gw_pb.Generate(grouped_task="x")), "ids"),
        (by_ids([]), "generate.single_prompt"),
        (by_ids([], grouped_task="x"), "ids.ids"),
        (by_ids(["00000000-0000-0000-0000-000000000001", "nope"], grouped_task="x"), "ids.ids[1]"),
        (by_ids([str(uuid.UUID(int=i)) for i in range(101)], grouped_task="x"), "ids.ids"),
        (inline([{"a": 1}], single_prompt="no placeholder"), "generate.single_prompt"),
        (inline([{"a": 1}], single_prompt="{b}"), "generate.single_prompt"),
        (inline([{"a": "x" * 70_000}], grouped_task="x"), "inline.objects[0]"),
        (inline([{"a": float("nan")}], grouped_task="x"), "inline.objects[0].a"),
        (by_ids([str(uuid.uuid4())], single_prompt="{nope}"), "generate.single_prompt"),
    ],
)
async def test_bad_requests_name_the_field(
    stack: Stack, request_: gw_pb.GenerateOnObjectsRequest, field: str
) -> None:
    await create_books(stack)
    code, named = await invalid(stack, request_)
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert not stack.fake.chat_requests


async def test_too_many_ids_name_the_bound_and_setting(stack: Stack) -> None:
    """More ids than MAX_HITS: the bound and its setting (the setting was missing)."""
    await create_books(stack)
    request = by_ids([str(uuid.UUID(int=i)) for i in range(101)], grouped_task="x")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("OUT_OF_RANGE", "ids.ids")
    assert info.metadata["max"] == "100"
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_MAX_HITS"


async def test_inline_nesting_is_bounded_by_the_gateways_setting(
    stack_factory: StackFactory,
) -> None:
    """GENSEARCH_GATEWAY_MAX_VALUE_DEPTH bounds an inline object's nesting (QA: the gateway
    held inline objects to a fixed 32 levels, the one such limit no setting moved, while
    retrieval's and memory's have their MAX_VALUE_DEPTH)."""
    stack = await stack_factory(max_value_depth=3)  # the object itself is level 1
    fits = await stack.stub.GenerateOnObjects(
        inline([{"a": {"b": [1]}}], single_prompt="{a}"), metadata=ALICE
    )
    assert fits.hits[0].generation.result
    code, named = await invalid(stack, inline([{"a": {"b": [[1]]}}], single_prompt="{a}"))
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, "inline.objects[0].a.b[0]")
    assert len(stack.fake.chat_requests) == 1


async def test_another_tenants_collection_and_objects_are_not_found(
    stack_factory: StackFactory,
) -> None:
    keys = "alice@acme/admin:key-alice-acme,bob@globex/admin:key-bob-globex"
    alice = (("authorization", "Bearer key-alice-acme"),)
    bob = (("authorization", "Bearer key-bob-globex"),)
    stack = await stack_factory(shared={"api_keys": keys})
    ids = await create_books(stack, metadata=alice)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(by_ids(ids, grouped_task="x"), metadata=bob)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["field"] == "collection"
    # Bob's own collection of that name does not hold Alice's objects.
    await create_books(stack, metadata=bob, books=[])
    response = await stack.stub.GenerateOnObjects(
        by_ids(ids[:2], single_prompt="{title}"), metadata=bob
    )
    assert [h.generation.error.status for h in response.hits] == ["NOT_FOUND"] * 2
    assert not stack.fake.chat_requests


async def test_inline_objects_without_a_collection_name_their_own_properties(
    stack: Stack,
) -> None:
    # There is no collection to blame: the message lists what the objects hold.
    for request in (
        inline([{"a": 1}, {"c": 2}], single_prompt="{b}"),
        inline([{"a": 1}], grouped_task="x", grouped_properties=["b"]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GenerateOnObjects(request, metadata=ALICE)
        details = caught.value.details() or ""
        assert "unknown property 'b'" in details
        assert "collection" not in details and "the objects have" in details


async def test_inline_objects_without_a_collection_refuse_an_unknown_return_property(
    stack: Stack,
) -> None:
    # With a collection an unknown return_properties entry is INVALID_ARGUMENT; without
    # one it was silently ignored (a typo returned the objects with nothing of theirs).
    request = inline([{"a": 1}, {"c": 2}], single_prompt="{a}")
    request.return_properties.append("b")
    assert await invalid(stack, request) == (grpc.StatusCode.INVALID_ARGUMENT, "return_properties")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert "unknown property 'b'" in (caught.value.details() or "")
    assert "the objects have" in (caught.value.details() or "")
    assert not stack.fake.chat_requests
    # A property only some objects hold is known.
    request.return_properties[:] = ["c"]
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert len(response.hits) == 2


async def test_inline_objects_naming_many_properties_are_refused_at_a_bounded_cost(
    stack: Stack,
) -> None:
    # Without a collection the inline objects' own names are what a template may name:
    # a refusal suggested the closest of all of them (difflib over every name, ~190,000
    # within the request's bound, 5.8 s of the event loop when each is made close) and
    # listed them all, sorted. Now: no suggestion among more than a collection could
    # hold, and the first names listed with their count.
    names = [f"p{i:04d}" for i in range(MAX_KNOWN)]
    objects = [{"titel": "Dune", **dict.fromkeys(names, 1)}]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(
            inline(objects, single_prompt="About {title}"), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("UNKNOWN_PROPERTY", "generate.single_prompt")
    assert "suggestion" not in info.metadata
    details = caught.value.details() or ""
    assert f"({MAX_KNOWN + 1} in all)" in details, details
    # A few names still get their suggestion.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(
            inline([{"titel": "Dune", "year": 1965}], single_prompt="About {title}"),
            metadata=ALICE,
        )
    assert error_info(caught.value).metadata["suggestion"] == "titel"


def _values_in(converted: Any) -> int:
    """The protobuf Values a ``json_format`` result holds (a container's elements too)."""
    if isinstance(converted, dict):
        return sum(1 + _values_in(v) for v in converted.values())
    if isinstance(converted, list):
        return sum(1 + _values_in(v) for v in converted)
    return 0


@pytest.fixture
def values_converted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The Values protobuf's ``json_format.MessageToDict`` converts to Python, one entry a
    call, for every caller in the process (the gateway's, wherever it converts)."""
    counted: list[int] = []
    convert = json_format.MessageToDict

    def counting(message: Any, *args: Any, **kwargs: Any) -> Any:
        converted = convert(message, *args, **kwargs)
        if isinstance(message, struct_pb2.Value):
            counted.append(1 + _values_in(converted))
        elif isinstance(message, struct_pb2.Struct | struct_pb2.ListValue):
            counted.append(_values_in(converted))
        return converted

    monkeypatch.setattr(json_format, "MessageToDict", counting)
    return counted


async def test_inline_values_no_template_reads_are_never_converted(
    stack: Stack, values_converted: list[int]
) -> None:
    """Every hit's whole properties were converted to Python before the prompts were
    rendered, values no template reads included: 60 objects of a 15,500-boolean list
    (3.7 MB, within the bounds) held the gateway's event loop ~0.6 s for that alone. Now
    a value is converted when a prompt first reads it, once for both prompts."""
    objects = [{"name": f"o{i}", "flags": [True] * 1_000} for i in range(3)]
    request = inline(
        objects,
        single_prompt="About {name}",
        grouped_task="Sum",
        grouped_properties=["name"],
        debug=True,
    )
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert [h.generation.result for h in response.hits] == ["About o0", "About o1", "About o2"]
    assert response.grouped.prompt.endswith("[3]\nname: o2")
    assert len(response.hits[2].hit.properties.fields["flags"].list_value.values) == 1_000
    # The three names, each once (3,006 before: every value, flags included).
    assert sum(values_converted) == 3, values_converted


async def test_inline_values_checked_against_a_collection_are_converted_once(
    stack: Stack, values_converted: list[int]
) -> None:
    """With a collection, each value was converted for its type check, then again, with
    every other, for the prompts: each value twice. Now the prompts read the check's."""
    await create_books(stack)
    objects = [{"title": f"T{i}", "tags": ["a"] * 500} for i in range(2)]
    request = inline(objects, single_prompt="{title}: {tags}")
    request.collection = "Books"
    values_converted.clear()  # create_books' own writes
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert response.hits[1].generation.result.startswith('T1: ["a", "a"')
    assert sum(values_converted) == 2 * (1 + 1 + 500), values_converted  # 2,008 before


def flagged(objects: int, flags: int) -> list[dict[str, Any]]:
    """``objects`` inline objects of a name and a list of ``flags`` booleans: each holds
    2 + ``flags`` values (the name, the list, its elements)."""
    return [{"name": f"o{i}", "flags": [j % 2 == 0 for j in range(flags)]} for i in range(objects)]


async def test_inline_values_are_bounded_per_request(stack_factory: StackFactory) -> None:
    """GENSEARCH_GATEWAY_MAX_INLINE_VALUES bounds the values of all of one request's inline
    objects, counted as retrieval's MAX_VALUES_PER_BATCH counts (loophold2: the 4 MiB a
    request may hold let in ~2 M values, whose check held the event loop 0.3-0.6 s). Past
    it the whole request is refused, as retrieval refuses a write batch (same reason and
    metadata), before any call; at it, served."""
    stack = await stack_factory(max_inline_values=1000)
    bound = {"max": "1000", "setting": "GENSEARCH_GATEWAY_MAX_INLINE_VALUES"}
    at_bound = inline(flagged(2, 498), single_prompt="About {name}")  # 2 x 500
    served = await stack.stub.GenerateOnObjects(at_bound, metadata=ALICE)
    assert [h.generation.result.endswith(f"About o{i}") for i, h in enumerate(served.hits)] == [
        True,
        True,
    ]
    calls = len(stack.fake.chat_requests)
    over = inline([*flagged(2, 498), {"name": "o2"}], single_prompt="About {name}")  # 1001

    async def streamed() -> None:
        # The same fields, number for number.
        stream = gw_pb.StreamGenerateOnObjectsRequest.FromString(over.SerializeToString())
        async for _ in stack.stub.StreamGenerateOnObjects(stream, metadata=ALICE):
            pass

    for refused in (stack.stub.GenerateOnObjects(over, metadata=ALICE), streamed()):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "GENSEARCH_GATEWAY_MAX_INLINE_VALUES" in (caught.value.details() or "")
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == ("BATCH_TOO_LARGE", "inline.objects")
        assert bound.items() <= dict(info.metadata).items()
    assert len(stack.fake.chat_requests) == calls  # no call for a refused request


async def test_a_list_past_the_inline_values_bound_is_refused_unread(
    stack_factory: StackFactory,
) -> None:
    """A list that takes the request past the bound is refused when it is opened, its
    elements unread (as retrieval's count stops early): the NaN at its end, which a walk
    that read it would name (NUMBER_NOT_FINITE), is not what the refusal is about."""
    stack = await stack_factory(max_inline_values=1000)
    values: list[Any] = [1.0] * 1999 + [float("nan")]
    request_ = inline([{"name": "o", "values": values}], single_prompt="{name}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(request_, metadata=ALICE)
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("BATCH_TOO_LARGE", "inline.objects")
    assert not stack.fake.chat_requests
