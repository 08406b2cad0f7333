"""Fallback chains, sampling parameters, JSON-schema outputs, caller base URLs and known
models through the gateway (GenerativeSearch and its streaming form, Ask), against the
loopback fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, json_format, struct_pb2

from tests.gateway.conftest import (
    ALICE,
    DIM,
    KEYS,
    WITH_BODY,
    Stack,
    StackFactory,
    books_search,
    books_stream_search,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info
from tests.support.schema_gate import HELD_TITLE, hold_schema_checks

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["title"],
}


def _schema(name: str = "", extra: dict[str, Any] | None = None) -> gen_pb.ResponseFormat:
    s = struct_pb2.Struct()
    s.update({**SCHEMA, **(extra or {})})
    return gen_pb.ResponseFormat(name=name, json_schema=s)


async def _schema_refused(stack: Stack, fmt: gen_pb.ResponseFormat) -> Any:
    """The ErrorInfo of a generative search whose ``fmt`` the gateway refuses: before any
    search or LLM call, INVALID_ARGUMENT naming the schema's field."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", response_format=fmt), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "INVALID_SCHEMA",
        "generate.response_format.json_schema",
    )
    assert stack.fake.chat_requests == []
    return info


def _title(hit: gw_pb.GenerativeHit) -> str:
    return hit.hit.properties.fields["title"].string_value


def _models(fake: FakeOpenAI) -> list[str]:
    return [r.json["model"] for r in fake.chat_requests]


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


# -- fallback -------------------------------------------------------------------------------
async def test_per_hit_fallback_names_the_pair_that_answered(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    stack = await stack_factory(
        extra_providers=[fake_provider(fake2, name="backup", default_model="b-model")]
    )
    await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    fake2.reply = "backup answer"
    response = await stack.stub.GenerativeSearch(
        books_search(
            single_prompt="About {title}",
            grouped_task="Compare",
            model="primary",
            fallback=[gen_pb.ModelChoice(provider="backup")],
        ),
        metadata=ALICE,
    )
    for hit in [*(h.generation for h in response.hits), response.grouped]:
        assert hit.result == "backup answer"
        assert (hit.provider, hit.model, hit.fallback_index) == ("backup", "b-model", 1)
    assert set(_models(stack.fake)) == {"primary"}
    assert len(fake2.chat_requests) == 5


async def test_a_collections_chain_applies_and_a_400_does_not_fall_back(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake",
        model="primary",
        fallback=[ret_pb.GenerativeModel(provider="fake", model="backup")],
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    stack.fake.by_model["primary"] = Behaviour.error(500)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}"), metadata=ALICE
    )
    assert {h.generation.model for h in response.hits} == {"backup"}
    assert {h.generation.fallback_index for h in response.hits} == {1}
    stack.fake.reset_stats()
    stack.fake.by_model["primary"] = Behaviour.error(400)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}"), metadata=ALICE
    )
    assert {h.generation.error.status for h in response.hits} == {"INVALID_ARGUMENT"}
    assert set(_models(stack.fake)) == {"primary"}


async def test_streaming_falls_back_before_the_first_token(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    events = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            books_stream_search(
                single_prompt="About {title}",
                model="primary",
                stream_tokens=True,
                fallback=[gen_pb.ModelChoice(provider="fake", model="backup")],
            ),
            metadata=ALICE,
        )
    ]
    results = [e.hit_result.generation for e in events if e.WhichOneof("event") == "hit_result"]
    assert len(results) == 4
    assert {(r.model, r.fallback_index) for r in results} == {("backup", 1)}
    tokens = [e.token for e in events if e.WhichOneof("event") == "token"]
    assert tokens and not any(t.restart for t in tokens)


@pytest.mark.parametrize(
    ("fallback", "field"),
    [
        (
            [gen_pb.ModelChoice(provider="fake"), gen_pb.ModelChoice(provider="nope")],
            "generate.fallback[1].provider",
        ),
        ([gen_pb.ModelChoice(provider="")], "generate.fallback[0].provider"),
        ([gen_pb.ModelChoice(provider="anyscale", model="gpt-4")], "generate.fallback[0].model"),
        ([gen_pb.ModelChoice(provider="fake")] * 9, "generate.fallback"),
        ([gen_pb.ModelChoice(provider="fake", model="a\nb")], "generate.fallback[0].model"),
        ([gen_pb.ModelChoice(provider="fake", model="m" * 257)], "generate.fallback[0].model"),
    ],
)
async def test_bad_chains_fail_the_request_before_any_call(
    stack: Stack, fallback: list[gen_pb.ModelChoice], field: str
) -> None:
    await create_books(stack, books=WITH_BODY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", fallback=fallback), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == field
    assert stack.fake.chat_requests == []


async def test_a_collections_unknown_fallback_provider_is_named(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake", fallback=[ret_pb.GenerativeModel(provider="gone")]
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}"), metadata=ALICE
        )
    field = error_info(caught.value).metadata["field"]
    assert field == "collection.generative.fallback[0].provider"
    # No change to the request fixes a stored value: the collection must be (as for its
    # max_tokens past a window); it was INVALID_ARGUMENT.
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


FAKE = gen_pb.ModelChoice(provider="fake", model="fake-model")


@pytest.mark.parametrize(
    ("fallback", "field", "repeats"),
    [
        # The primary (the stack's default: fake, fake-model) three times over: each pair
        # re-ran the failing endpoint with all its retries, charged to the tenant.
        ([FAKE] * 3, "generate.fallback[0]", "primary"),
        # An empty model is the provider's default; a provider's name is read as
        # generation reads it (case, spaces around it).
        ([gen_pb.ModelChoice(provider=" FAKE ")], "generate.fallback[0]", "primary"),
        (
            [
                gen_pb.ModelChoice(provider="fake", model="backup"),
                gen_pb.ModelChoice(provider="Fake", model="backup"),
            ],
            "generate.fallback[1]",
            "generate.fallback[0]",
        ),
    ],
)
async def test_a_chain_repeating_an_endpoint_is_refused_before_any_call(
    stack: Stack, fallback: list[gen_pb.ModelChoice], field: str, repeats: str
) -> None:
    await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["fake-model"] = Behaviour.error(503)
    for call in (
        lambda: stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", fallback=fallback), metadata=ALICE
        ),
        lambda: _drain(
            stack.stub.StreamGenerativeSearch(
                books_stream_search(single_prompt="About {title}", fallback=fallback),
                metadata=ALICE,
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == ("DUPLICATE_FALLBACK", field)
        assert info.metadata["repeats"] == repeats
    assert stack.fake.chat_requests == []


async def test_a_collections_chain_repeating_its_primary_is_named(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake",
        model="fake-model",
        fallback=[ret_pb.GenerativeModel(provider="fake")],
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}"), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "DUPLICATE_FALLBACK",
        "collection.generative.fallback[0]",
    )
    assert stack.fake.chat_requests == []
    # The request's own model makes the stored pair another endpoint: it is a fallback.
    stack.fake.by_model["other"] = Behaviour.error(503)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", model="other"), metadata=ALICE
    )
    assert {h.generation.fallback_index for h in response.hits} == {1}


async def test_a_callers_base_url_is_another_endpoint_than_the_operators(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    stack = await stack_factory(
        generation_settings={"allowed_hosts": "http://127.0.0.1:" + str(fake2.port)},
    )
    await create_books(stack, books=WITH_BODY)
    fake2.by_model["fake-model"] = Behaviour.error(503)
    response = await stack.stub.GenerativeSearch(
        books_search(
            single_prompt="About {title}",
            base_url=fake2.base_url,
            model="fake-model",
            fallback=[FAKE],
        ),
        metadata=ALICE,
    )
    assert {h.generation.fallback_index for h in response.hits} == {1}
    assert stack.fake.chat_requests


@pytest.mark.parametrize(
    ("generative", "reason", "field"),
    [
        (ret_pb.GenerativeConfig(provider="gone"), "UNKNOWN_PROVIDER", "provider"),
        (ret_pb.GenerativeConfig(provider="anyscale", model="gpt-4"), "UNKNOWN_MODEL", "model"),
    ],
)
async def test_a_collections_unknown_provider_or_model_is_named_as_the_collections(
    stack: Stack, generative: ret_pb.GenerativeConfig, reason: str, field: str
) -> None:
    # The request names no provider nor model: the error named generate.provider (Ask:
    # provider), a field the caller never sent, for the collection's stored default.
    await create_books(stack, books=WITH_BODY, generative=generative)
    ask = gw_pb.AskRequest(
        collection="Books", llm_question="Which?", near_vector=ret_pb.NearVector(vector=[0.5] * DIM)
    )
    for call in (
        stack.stub.GenerativeSearch(books_search(single_prompt="About {title}"), metadata=ALICE),
        stack.stub.Ask(ask, metadata=ALICE),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == (reason, f"collection.generative.{field}")
        # The collection's stored value, not the request, is at fault (it was
        # INVALID_ARGUMENT, unlike a stored max_tokens past a window).
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The request's own choice is still named as the request's, and a bad argument.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", provider="gone2"), metadata=ALICE
        )
    assert error_info(caught.value).metadata["field"] == "generate.provider"
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Ask(_with(ask, provider="anyscale", llm_model="nope"), metadata=ALICE)
    assert error_info(caught.value).metadata["field"] == "llm_model"
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stack.fake.chat_requests == []


async def test_a_mistyped_provider_names_the_closest(stack: Stack) -> None:
    # Before: "unknown provider 'fakee' (configured: …)" alone, unlike a mistyped property
    # or collection, which name the closest; a fallback pair's and a collection's too
    # (the collection's stored provider is the primary when the request names none).
    await create_books(
        stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig(provider="fakeee")
    )
    for request, field, code in (
        (
            books_search(single_prompt="About {title}", provider="Fakee"),
            "generate.provider",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            books_search(
                single_prompt="About {title}",
                provider="fake",
                fallback=[gen_pb.ModelChoice(provider="fakee", model="fake-model")],
            ),
            "generate.fallback[0].provider",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            books_search(single_prompt="About {title}"),
            "collection.generative.provider",
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GenerativeSearch(request, metadata=ALICE)
        assert caught.value.code() == code
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"], info.metadata["suggestion"]) == (
            "UNKNOWN_PROVIDER",
            field,
            "fake",
        )
        assert "did you mean 'fake'?" in (caught.value.details() or "")
    assert stack.fake.chat_requests == []


@pytest.mark.parametrize(
    ("configured", "suggestion"), [("nosuch", None), ("fakee", "fake")], ids=["unknown", "mistyped"]
)
async def test_a_bad_gateway_default_provider_is_named_as_the_setting(
    stack_factory: StackFactory, configured: str, suggestion: str | None
) -> None:
    # The gateway cannot check GENSEARCH_GATEWAY_DEFAULT_PROVIDER at start: the providers
    # are the generation service's. A request that names none was refused INVALID_ARGUMENT
    # on generate.provider, a field the caller never sent, for the operator's setting. An
    # operator's typo is suggested as a caller's is: the setting's refusal had no "did you
    # mean" nor metadata suggestion before (only callers' fields had them).
    stack = await stack_factory(default_provider=configured)
    # A collection without generative defaults: the gateway's default applies.
    await create_books(stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig())
    ask = gw_pb.AskRequest(
        collection="Books", llm_question="Which?", near_vector=ret_pb.NearVector(vector=[0.5] * DIM)
    )
    for call, field in (
        (
            stack.stub.GenerativeSearch(
                books_search(single_prompt="About {title}"), metadata=ALICE
            ),
            "generate.provider",
        ),
        (stack.stub.Ask(ask, metadata=ALICE), "provider"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"], info.metadata["setting"]) == (
            "UNKNOWN_PROVIDER",
            field,
            "GENSEARCH_GATEWAY_DEFAULT_PROVIDER",
        )
        details = caught.value.details() or ""
        assert "GENSEARCH_GATEWAY_DEFAULT_PROVIDER" in details
        assert info.metadata.get("suggestion") == suggestion
        if suggestion is not None:
            assert f"did you mean '{suggestion}'?" in details
    assert stack.fake.chat_requests == []
    # A request naming a provider of its own is answered.
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", provider="fake"), metadata=ALICE
    )
    assert all(h.generation.result for h in response.hits)
    assert len(stack.fake.chat_requests) == len(response.hits)


async def test_an_unknown_gateway_default_model_is_named_as_the_setting(
    stack_factory: StackFactory,
) -> None:
    # GENSEARCH_GATEWAY_DEFAULT_MODEL is the operator's, as the default provider is: a
    # request naming no model was refused INVALID_ARGUMENT on generate.model (Ask:
    # llm_model), a field the caller never sent, with nothing naming the setting.
    stack = await stack_factory(default_provider="anyscale", default_model="gpt-4")
    # The collection's model is the setting's by value but belongs to another provider:
    # the model a request naming anyscale gets is still the setting's (it was named as
    # the collection's, collection.generative.model).
    await create_books(
        stack,
        books=WITH_BODY,
        generative=ret_pb.GenerativeConfig(provider="fake", model="gpt-4"),
    )
    await create_books(stack, "Plain", books=WITH_BODY, generative=ret_pb.GenerativeConfig())
    vector = ret_pb.NearVector(vector=[0.5] * DIM)
    calls = []
    for collection in ("Plain", "Books"):
        # Plain: nothing names a provider nor a model; Books: the request names the
        # default provider, so the collection's model (fake's) does not apply.
        provider = "" if collection == "Plain" else "anyscale"
        search = books_search(single_prompt="About {title}", provider=provider)
        search.collection = collection
        ask = gw_pb.AskRequest(
            collection=collection, llm_question="Which?", near_vector=vector, provider=provider
        )
        calls += [
            (stack.stub.GenerativeSearch(search, metadata=ALICE), "generate.model"),
            (stack.stub.Ask(ask, metadata=ALICE), "llm_model"),
        ]
    for call, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"], info.metadata["setting"]) == (
            "UNKNOWN_MODEL",
            field,
            "GENSEARCH_GATEWAY_DEFAULT_MODEL",
        )
        assert "GENSEARCH_GATEWAY_DEFAULT_MODEL" in (caught.value.details() or "")
    # The request's own unknown model is still the caller's bad argument, no setting.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", provider="anyscale", model="nope"),
            metadata=ALICE,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.metadata["field"] == "generate.model"
    assert "setting" not in info.metadata
    assert stack.fake.chat_requests == []


def _with(request: gw_pb.AskRequest, **fields: Any) -> gw_pb.AskRequest:
    changed = gw_pb.AskRequest()
    changed.CopyFrom(request)
    for name, value in fields.items():
        setattr(changed, name, value)
    return changed


async def test_ask_names_the_provider_that_answered(stack: Stack) -> None:
    generative = ret_pb.GenerativeConfig(
        provider="fake",
        model="primary",
        fallback=[ret_pb.GenerativeModel(provider="fake", model="backup")],
    )
    await create_books(stack, books=WITH_BODY, generative=generative)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    reply = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Which book is about a desert?",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        ),
        metadata=ALICE,
    )
    assert (reply.provider, reply.model) == ("fake", "backup")


# -- sampling -------------------------------------------------------------------------------
async def test_every_sampling_parameter_reaches_the_provider(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    stack.fake.reply = '{"title": "x"}'
    generate: dict[str, Any] = {
        "single_prompt": "About {title}",
        "grouped_task": "Compare",
        "top_p": 0.8,
        "stop": ["\n\n"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "seed": 7,
        "response_format": _schema(),
    }
    await stack.stub.GenerativeSearch(books_search(**generate), metadata=ALICE)
    async for _ in stack.stub.StreamGenerativeSearch(
        books_stream_search(stream_tokens=True, **generate), metadata=ALICE
    ):
        pass
    assert len(stack.fake.chat_requests) == 10
    for request in stack.fake.chat_requests:
        sent = request.json
        assert (sent["top_p"], sent["stop"], sent["seed"]) == (0.8, ["\n\n"], 7)
        assert (sent["frequency_penalty"], sent["presence_penalty"]) == (0.5, -0.5)
        assert sent["response_format"]["json_schema"]["schema"] == SCHEMA


@pytest.mark.parametrize(
    ("generate", "field"),
    [
        ({"top_p": 0.0}, "generate.top_p"),
        ({"frequency_penalty": 3.0}, "generate.frequency_penalty"),
        ({"presence_penalty": float("nan")}, "generate.presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "generate.stop"),
        ({"stop": ["x" * 1000]}, "generate.stop[0]"),
        ({"response_format": gen_pb.ResponseFormat()}, "generate.response_format.json_schema"),
        # QA: each hit failed on its own instead.
        ({"response_format": _schema(name="bad name!")}, "generate.response_format.name"),
        # A Struct holds infinity, JSON does not: json_format raised ValueError, INTERNAL.
        (
            {"response_format": _schema(extra={"maximum": float("inf")})},
            "generate.response_format.json_schema.maximum",
        ),
        (
            {"response_format": _schema(extra={"properties": {"n": {"$ref": "#/$defs/n"}}})},
            "generate.response_format.json_schema",
        ),
        # Checked by the gateway as by generation (services/common/json_schema.py): more
        # subschemas than MAX_SCHEMA_NODES (the metaschema check held the event loop ~0.4
        # ms each), a nested $schema (its patterns ran on re, unbudgeted), groups nested
        # past Python's recursion limit (INTERNAL).
        (
            {"response_format": _schema(extra={"allOf": [{}] * 1001})},
            "generate.response_format.json_schema",
        ),
        (
            {
                "response_format": _schema(
                    extra={
                        "properties": {"t": {"$schema": "http://json-schema.org/draft-07/schema#"}}
                    }
                )
            },
            "generate.response_format.json_schema",
        ),
        (
            {
                "response_format": _schema(
                    extra={"properties": {"t": {"pattern": "(" * 1000 + ")" * 1000}}}
                )
            },
            "generate.response_format.json_schema",
        ),
        # A loop through the dynamic scope ($dynamicRef to the outermost "m", the root,
        # which applies "sub" in place again): it passed, cost two upstream calls a hit and
        # came back INVALID_OUTPUT on every hit.
        (
            {
                "response_format": _schema(
                    extra={
                        "$id": "https://example.com/root",
                        "$dynamicAnchor": "m",
                        "allOf": [{"$ref": "#/$defs/sub"}],
                        "$defs": {
                            "sub": {
                                "$id": "sub",
                                "$defs": {"leaf": {"$dynamicAnchor": "m"}},
                                "allOf": [{"$dynamicRef": "#m"}],
                            }
                        },
                    }
                )
            },
            "generate.response_format.json_schema",
        ),
        ({"model": "gpt-4", "provider": "anyscale"}, "generate.model"),
        # Spaces alone were read as "the default model" (the fake provider lists none, so
        # nothing else refused them).
        ({"model": "   "}, "generate.model"),
        (
            {"fallback": [gen_pb.ModelChoice(provider="fake", model=" ")]},
            "generate.fallback[0].model",
        ),
    ],
)
async def test_bad_options_fail_the_request_naming_the_field(
    stack: Stack, generate: dict[str, Any], field: str
) -> None:
    await create_books(stack, books=WITH_BODY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", **generate), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == field
    assert stack.fake.chat_requests == []


# -- max_tokens and the context window ------------------------------------------------------
async def test_max_tokens_beyond_a_context_window_fails_the_request(
    stack_factory: StackFactory, fake: FakeOpenAI, fake2: FakeOpenAI
) -> None:
    """QA: 2147483647 was sent upstream on every hit. The primary's window is checked,
    the request's max_tokens or the collection's, before any search's LLM call, whatever
    the chain: a fallback pair that could take it would hide the caller's mistake. (A
    fallback pair too small for max_tokens is skipped instead: test_fallback_skip.py.)"""
    stack = await stack_factory(
        provider=fake_provider(fake, context_window=4096),
        extra_providers=[fake_provider(fake2, name="backup", context_window=1_000_000)],
    )
    await create_books(stack, books=WITH_BODY)
    cases = [
        (books_search(single_prompt="About {title}", max_tokens=2147483647), "fake"),
        (
            books_search(
                single_prompt="About {title}",
                max_tokens=5000,
                fallback=[gen_pb.ModelChoice(provider="backup")],
            ),
            "fake",
        ),
    ]
    for request, provider in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GenerativeSearch(request, metadata=ALICE)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == (
            "CONTEXT_WINDOW_EXCEEDED",
            "generate.max_tokens",
        )
        assert info.metadata["provider"] == provider
    assert fake.chat_requests == [] and fake2.chat_requests == []
    # The window itself is allowed.
    await stack.stub.GenerativeSearch(
        books_search(limit=1, single_prompt="About {title}", max_tokens=4096), metadata=ALICE
    )
    assert fake.chat_requests[-1].json["max_tokens"] == 4096


async def test_a_prompt_past_a_providers_window_names_the_callers_field(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    """A provider's context window holds for each of its models in the generation service:
    a hit's prompt past it came back naming ``messages`` (CONTEXT_WINDOW_EXCEEDED), a field
    a generative search's caller never sends. Now the caller's field that the prompt was
    rendered from, reason and metadata kept, no LLM call made."""
    stack = await stack_factory(
        provider=fake_provider(fake, context_window=300, models=["fake-model", "big"])
    )
    await create_books(stack, books=WITH_BODY)
    long_text = "word " * 800  # ~1000 tokens by the estimate: past 300 (and its slack)
    response = await stack.stub.GenerativeSearch(
        books_search(limit=1, single_prompt="{title} " + long_text, model="big"),
        metadata=ALICE,
        timeout=30,
    )
    error = response.hits[0].generation.error
    assert (error.reason, error.metadata["field"]) == (
        "CONTEXT_WINDOW_EXCEEDED",
        "generate.single_prompt",
    )
    assert error.metadata["service"] == "generation"
    assert "generate.single_prompt" in error.message and "messages" not in error.message
    assert fake.chat_requests == []


async def test_max_tokens_past_the_service_limit_fails_the_request_without_a_window(
    stack: Stack,
) -> None:
    """A provider declaring no context window: the generation service's MAX_TOKENS_LIMIT
    (from ListModels) refuses the request once, before any LLM call, not on every hit."""
    await create_books(stack, books=WITH_BODY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", max_tokens=2147483647), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("OUT_OF_RANGE", "generate.max_tokens")
    assert info.metadata["max"] == "1000000"
    assert stack.fake.chat_requests == []


async def test_a_collections_max_tokens_is_named_as_the_collections(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await stack_factory(provider=fake_provider(fake, context_window=4096))
    generative = ret_pb.GenerativeConfig(provider="fake", max_tokens=5000)
    await create_books(stack, books=WITH_BODY, generative=generative)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}"), metadata=ALICE
        )
    # The collection's setting, not the request, is at fault.
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).metadata["field"] == "collection.generative.max_tokens"
    assert fake.chat_requests == []


# -- JSON schema ------------------------------------------------------------------------------
def _json_replies(fake: FakeOpenAI) -> None:
    """Per title: Dune answers invalid JSON once then valid; Emma never valid; the rest
    valid at once; the grouped task valid."""
    seen: dict[str, int] = {}

    def reply(body: dict[str, Any]) -> str:
        prompt = body["messages"][0]["content"]
        if prompt.startswith("Compare"):
            return '{"title": "all", "n": 4}'
        title = prompt.removeprefix("Extract ").strip()
        seen[title] = seen.get(title, 0) + 1
        if title == "Emma" or (title == "Dune" and seen[title] == 1):
            return '{"n": "not a number"}'
        return json.dumps({"title": title, "n": len(title)})

    fake.reply = reply


async def test_schema_outputs_per_hit_and_grouped(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    _json_replies(stack.fake)
    response = await stack.stub.GenerativeSearch(
        books_search(
            single_prompt="Extract {title}", grouped_task="Compare", response_format=_schema()
        ),
        metadata=ALICE,
    )
    by_title = {_title(h): h.generation for h in response.hits}
    emma = by_title.pop("Emma")
    assert emma.error.reason == "INVALID_OUTPUT" and not emma.HasField("structured")
    # Its answer and the corrective retry (QA: attempts 0, no wait time).
    assert (emma.attempts, emma.upstream_calls) == (2, 2)
    assert emma.HasField("wait_time")
    for title, result in by_title.items():
        assert json_format.MessageToDict(result.structured) == {"title": title, "n": len(title)}
        assert json.loads(result.result) == {"title": title, "n": len(title)}
    assert json_format.MessageToDict(response.grouped.structured) == {"title": "all", "n": 4}
    # Dune was corrected once, Emma retried once and no more: 4 hits + 2 retries + grouped.
    assert len(stack.fake.chat_requests) == 7


async def test_streamed_schema_outputs_restart_for_a_correction(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    _json_replies(stack.fake)
    events = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            books_stream_search(
                single_prompt="Extract {title}",
                grouped_task="Compare",
                response_format=_schema(),
                stream_tokens=True,
            ),
            metadata=ALICE,
        )
    ]
    hits = events[0].hits.hits
    titles = [h.properties.fields["title"].string_value for h in hits]
    restarts = {
        titles[e.token.hit_index] for e in events if e.HasField("token") and e.token.restart
    }
    assert restarts == {"Dune", "Emma"}
    results = {
        titles[e.hit_result.hit_index]: e.hit_result.generation
        for e in events
        if e.HasField("hit_result")
    }
    assert results["Emma"].error.reason == "INVALID_OUTPUT"
    assert json_format.MessageToDict(results["Dune"].structured) == {"title": "Dune", "n": 4}
    grouped = next(e.grouped for e in events if e.HasField("grouped"))
    assert json_format.MessageToDict(grouped.structured) == {"title": "all", "n": 4}


# -- caller base URL -------------------------------------------------------------------------
OPERATOR_KEY = "sk-operator-gw-789"


async def test_a_callers_base_url_is_allowed_only_on_the_allowlist(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    stack = await stack_factory(
        generation_settings={"allowed_hosts": "http://127.0.0.1:" + str(fake2.port)},
    )
    await create_books(stack, books=WITH_BODY)
    fake2.reply = "theirs"
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", base_url=fake2.base_url), metadata=ALICE
    )
    assert {h.generation.result for h in response.hits} == {"theirs"}
    assert stack.fake.chat_requests == []
    assert all("Authorization" not in r.headers for r in fake2.chat_requests)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", base_url=stack.fake.base_url),
            metadata=ALICE,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("URL_NOT_ALLOWED", "generate.base_url")
    assert stack.fake.chat_requests == []
    # A password in the URL is never echoed back (nor logged with the error).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(
                single_prompt="About {title}", base_url="http://svc:S3cretPw@127.0.0.2/v1"
            ),
            metadata=ALICE,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "S3cretPw" not in caught.value.details()
    assert "***@127.0.0.2" in caught.value.details()


@pytest.mark.parametrize("blank", [" ", "\t\n"])
async def test_a_blank_base_url_is_invalid_naming_it(stack: Stack, blank: str) -> None:
    """As the generation service says it (reason INVALID_ARGUMENT): before, the gateway
    put blanks to its allowlist and answered PERMISSION_DENIED / URL_NOT_ALLOWED, as if the
    caller had named a host it may not use."""
    await create_books(stack, books=WITH_BODY)
    objects = gw_pb.GenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=[struct_pb2.Struct()]),
        generate=gw_pb.Generate(single_prompt="Say hi", base_url=blank),
    )
    calls = [
        stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", base_url=blank), metadata=ALICE
        ),
        stack.stub.GenerateOnObjects(objects, metadata=ALICE),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == ("INVALID_ARGUMENT", "generate.base_url")
        assert "blank" in (caught.value.details() or "")
    assert stack.fake.chat_requests == []


async def test_spaces_around_an_allowed_base_url_are_read_as_generation_reads_them(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    """The generation service strips them; the gateway put the raw text to its allowlist
    and refused " http://allowed/v1 " PERMISSION_DENIED ("not a plain URL"), while the
    same URL in a forwarded Generate was answered."""
    stack = await stack_factory(
        generation_settings={"allowed_hosts": "http://127.0.0.1:" + str(fake2.port)},
    )
    await create_books(stack, books=WITH_BODY)
    padded = f"  {fake2.base_url}\t"
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", base_url=padded), metadata=ALICE
    )
    assert [h.generation.error.code for h in response.hits] == [0] * len(response.hits)
    assert len(fake2.chat_requests) == len(response.hits) > 0
    forwarded = gen_grpc.GenerationServiceStub(stack.channel)
    reply = await forwarded.Generate(
        gen_pb.GenerateRequest(
            messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")],
            base_url=padded,
            debug=True,
        ),
        metadata=ALICE,
    )
    assert reply.text
    assert reply.debug.url == f"{fake2.base_url}/chat/completions"  # the caller's own URL


async def test_a_provider_name_is_read_as_generation_reads_it(stack: Stack) -> None:
    """Generation takes " FAKE " as the provider fake (spaces stripped, case ignored); the
    gateway refused it UNKNOWN_PROVIDER before any call, so a forwarded Generate answered
    what GenerativeSearch refused."""
    await create_books(stack, books=WITH_BODY)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", provider=" FAKE "), metadata=ALICE
    )
    assert response.hits and all(h.generation.result for h in response.hits)


async def test_a_callers_base_url_with_a_query_is_refused_naming_it(
    stack_factory: StackFactory, fake2: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # Accepted before: the SDK joins its path after the query ("/v1/?key=S3cretQchat/
    # completions"), so every call failed 404 upstream, and httpx logged that URL, the
    # query's secret in it, at INFO.
    stack = await stack_factory(
        generation_settings={"allowed_hosts": "http://127.0.0.1:" + str(fake2.port)},
    )
    await create_books(stack, books=WITH_BODY)
    for url in (fake2.base_url + "?key=S3cretQ", fake2.base_url + "?"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GenerativeSearch(
                books_search(single_prompt="About {title}", base_url=url), metadata=ALICE
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == ("URL_NOT_ALLOWED", "generate.base_url")
        assert "query" in caught.value.details()
        assert "S3cretQ" not in caught.value.details()
    assert fake2.requests == []
    assert not any("S3cretQ" in r.getMessage() for r in caplog.records)


async def test_the_operators_key_never_goes_to_a_callers_url(
    stack_factory: StackFactory,
    fake: FakeOpenAI,
    fake2: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_TEST_GW_FAKE_KEY", OPERATOR_KEY)
    # The operator's provider has a key in the environment.
    stack = await stack_factory(
        provider=fake_provider(fake, api_key_env=["GENSEARCH_TEST_GW_FAKE_KEY"]),
        generation_settings={"allowed_hosts": "http://127.0.0.1"},
    )
    await create_books(stack, books=WITH_BODY)
    async for _ in stack.stub.StreamGenerativeSearch(
        books_stream_search(
            single_prompt="About {title}", base_url=fake2.base_url, stream_tokens=True
        ),
        metadata=(*ALICE, ("x-fake-api-key", "sk-callers-own")),
    ):
        pass
    assert len(fake2.chat_requests) == 4
    for request in fake2.chat_requests:
        assert request.headers["Authorization"] == "Bearer sk-callers-own"
        assert OPERATOR_KEY not in json.dumps(request.headers)
    await stack.stub.GenerativeSearch(books_search(single_prompt="About {title}"), metadata=ALICE)
    assert stack.fake.chat_requests[-1].headers["Authorization"] == f"Bearer {OPERATOR_KEY}"


@pytest.mark.parametrize("checked", [True, False])
async def test_the_model_check_follows_the_providers_setting(
    stack_factory: StackFactory, fake: FakeOpenAI, checked: bool
) -> None:
    stack = await stack_factory(
        provider=fake_provider(fake, models=["fake-model"], check_models=checked)
    )
    await create_books(stack, books=WITH_BODY)
    request = books_search(single_prompt="About {title}", model="newer-model")
    if checked:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GenerativeSearch(request, metadata=ALICE)
        assert error_info(caught.value).metadata["field"] == "generate.model"
        assert fake.chat_requests == []
    else:
        response = await stack.stub.GenerativeSearch(request, metadata=ALICE)
        assert {h.generation.model for h in response.hits} == {"newer-model"}


async def test_a_hanging_primary_falls_back_within_the_hits_budget(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    stack.fake.by_model["primary"] = Behaviour.hang(60)
    events = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            books_stream_search(
                single_prompt="About {title}",
                model="primary",
                stream_tokens=True,
                timeout=duration_pb2.Duration(seconds=4),
                fallback=[gen_pb.ModelChoice(provider="fake", model="backup")],
            ),
            metadata=ALICE,
        )
    ]
    results = [e.hit_result.generation for e in events if e.HasField("hit_result")]
    assert [r.error.status for r in results if r.HasField("error")] == []
    assert {(r.model, r.fallback_index) for r in results} == {("backup", 1)}


async def test_a_collections_fallback_chain_longer_than_allowed_fails_once_on_the_collection(
    stack_factory: StackFactory,
) -> None:
    # A collection stores up to the default MAX_FALLBACKS (4) pairs; an operator may lower
    # the gateway's since. Before: every hit failed on its own with INVALID_ARGUMENT naming
    # no field.
    # The keys on retrieval too: the collection stored straight there is Alice's.
    stack = await stack_factory(max_fallbacks=3, shared={"api_keys": KEYS})
    chain = [ret_pb.GenerativeModel(provider="fake", model=f"m{i}") for i in range(4)]
    await create_books(
        stack,
        books=WITH_BODY,
        generative=ret_pb.GenerativeConfig(provider="fake", fallback=chain),
        direct=True,  # stored under the default max (4): through this gateway it is refused
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}"), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "OUT_OF_RANGE",
        "collection.generative.fallback",
    )
    assert stack.fake.chat_requests == []


async def test_a_collection_chain_past_this_gateways_max_is_refused_at_create(
    stack_factory: StackFactory,
) -> None:
    """Created through the gateway, a chain is held to its MAX_FALLBACKS (retrieval alone
    knows only the default, 4): before, 4 pairs were stored under a max of 2, then every
    search falling back to them was FAILED_PRECONDITION."""
    stack = await stack_factory(max_fallbacks=2)
    chain = [ret_pb.GenerativeModel(provider="fake", model=f"m{i}") for i in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_books(
            stack, generative=ret_pb.GenerativeConfig(provider="fake", fallback=chain)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"], info.metadata["max"]) == (
        "OUT_OF_RANGE",
        "collection.generative.fallback",
        "2",
    )
    assert "GENSEARCH_GATEWAY_MAX_FALLBACKS" in (caught.value.details() or "")
    await create_books(
        stack, generative=ret_pb.GenerativeConfig(provider="fake", fallback=chain[:2])
    )


async def test_the_gateways_schema_pattern_bounds_are_its_settings(
    stack_factory: StackFactory,
) -> None:
    """The gateway checks a response_format schema by its own settings (the bounds of a
    pattern were constants of services/common/json_schema.py): set lower, a pattern the
    defaults take is refused before any search or call, naming the field, the bound and
    the gateway's variable."""
    stack = await stack_factory(max_schema_class_span=30)
    await create_books(stack, books=WITH_BODY)
    fmt = _schema(extra={"properties": {"title": {"type": "string", "pattern": "[a-z][0-9]"}}})
    info = await _schema_refused(stack, fmt)
    assert info.metadata["max_class_span"] == "30"
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_MAX_SCHEMA_CLASS_SPAN"


async def test_a_model_of_spaces_is_refused_on_ask_too(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    for fields, field in (
        ({"llm_model": "  "}, "llm_model"),
        ({"fallback": [gen_pb.ModelChoice(provider="fake", model="  ")]}, "fallback[0].model"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Ask(
                gw_pb.AskRequest(collection="Books", llm_question="Which book?", **fields),
                metadata=ALICE,
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == ("INVALID_ARGUMENT", field)
        assert "only spaces" in caught.value.details()
    assert stack.fake.chat_requests == []


async def test_a_provider_needing_a_key_the_caller_lacks_fails_once_before_any_hit(
    stack_factory: StackFactory,
) -> None:
    # Each hit failed on its own (UNAUTHENTICATED / MISSING_PROVIDER_API_KEY from the
    # generation service), and each was charged to the tenant's LLM-call quota.
    keyed = {
        "name": "keyed",
        "base_url": "http://127.0.0.1:1/v1",
        "default_model": "keyed-model",
        "requires_key": True,
        "api_key_env": ["GENSEARCH_TEST_NO_SUCH_KEY_VARIABLE"],
    }
    stack = await stack_factory(extra_providers=[keyed])
    await create_books(stack, books=WITH_BODY)
    for call in (stack.stub.GenerativeSearch, stack.stub.StreamGenerativeSearch):
        request = books_search(single_prompt="About {title}", grouped_task="All", provider="keyed")
        if call is stack.stub.StreamGenerativeSearch:
            request = books_stream_search(
                single_prompt="About {title}", grouped_task="All", provider="keyed"
            )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(request, metadata=ALICE)
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = error_info(caught.value)
        assert info.reason == "MISSING_PROVIDER_API_KEY"
        assert "x-keyed-api-key" in caught.value.details()
        assert info.metadata["field"] == "x-keyed-api-key"
    # With the caller's own key the call goes ahead (to an endpoint that is down here:
    # each hit says so on its own).
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", provider="keyed"),
        metadata=(*ALICE, ("x-keyed-api-key", "sk-callers-own")),
    )
    assert {h.generation.error.reason for h in response.hits} == {"UPSTREAM_CONNECTION_FAILED"}
    # A fallback pair's key is asked for only if the chain reaches it.
    response = await stack.stub.GenerativeSearch(
        books_search(
            single_prompt="About {title}", fallback=[gen_pb.ModelChoice(provider="keyed")]
        ),
        metadata=ALICE,
    )
    assert all(h.generation.result for h in response.hits)


async def test_a_callers_key_reaches_a_provider_named_with_an_underscore(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # Provider names may hold '_' (PROVIDER_NAME), but the gateway passed on only the key
    # headers without one: x-my_llm-api-key was dropped and the call refused
    # MISSING_PROVIDER_API_KEY, however the caller sent it.
    keyed = {
        "name": "my_llm",
        "base_url": fake.base_url,
        "default_model": "fake-model",
        "requires_key": True,
        "api_key_env": ["GENSEARCH_TEST_NO_SUCH_KEY_VARIABLE"],
    }
    stack = await stack_factory(extra_providers=[keyed])
    await create_books(stack, books=WITH_BODY)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", provider="my_llm"),
        metadata=(*ALICE, ("x-my_llm-api-key", "sk-callers-own")),
    )
    assert response.hits and all(h.generation.result for h in response.hits)
    sent = {r.headers.get("Authorization") for r in fake.chat_requests}
    assert sent == {"Bearer sk-callers-own"}


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_a_new_schemas_check_leaves_the_event_loop_to_other_calls(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway checked response_format's schema against the metaschema on its event
    loop (~0.4 s near MAX_SCHEMA_NODES): a caller sending a new schema per call stalled
    every other caller. It runs on a worker thread: while it is held, another call is
    answered; the held search then gets its structured answers as before."""
    await create_books(stack, books=WITH_BODY)
    gate = hold_schema_checks(monkeypatch)
    stack.fake.reply = '{"title": "x"}'
    held = asyncio.ensure_future(
        stack.stub.GenerativeSearch(
            books_search(
                limit=2,
                single_prompt="About {title}",
                response_format=_schema(extra={"title": HELD_TITLE}),
            ),
            metadata=ALICE,
            timeout=60,
        )
    )
    try:
        assert await asyncio.to_thread(gate.entered.wait, 60)
        assert gate.threads and gate.loop_thread not in gate.threads
        plain = gw_pb.GenerativeSearchRequest(
            collection="Books", near_vector=ret_pb.NearVector(vector=[0.5] * DIM), limit=2
        )
        other = await stack.stub.GenerativeSearch(plain, metadata=ALICE, timeout=60)
        assert len(other.hits) == 2
        assert not held.done()
    finally:
        gate.release.set()
    reply = await held
    structured = [json_format.MessageToDict(h.generation.structured) for h in reply.hits]
    assert structured == [{"title": "x"}] * 2


async def test_a_request_naming_another_provider_gets_that_providers_default_model(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    """A model belongs to its provider: the collection's (provider fake, model fake-model)
    applies only while a request names no other provider. Before, a request naming
    provider "other" had "fake-model" sent to it (and the anyscale preset refused its own
    default, naming the collection's model)."""
    other = fake_provider(fake2, name="other", default_model="other-default")
    stack = await stack_factory(extra_providers=[other], default_model="gateway-default")
    await create_books(stack, books=WITH_BODY)
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", grouped_task="G", provider="other"),
        metadata=ALICE,
    )
    assert {h.generation.model for h in response.hits} == {"other-default"}
    assert response.grouped.model == "other-default"
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="Which?", provider="other"),
        metadata=ALICE,
    )
    assert answer.model == "other-default"
    assert {r.json["model"] for r in fake2.chat_requests} == {"other-default"}
    # The request naming the collection's own provider keeps the collection's model.
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", provider=" FAKE "), metadata=ALICE
    )
    assert {h.generation.model for h in response.hits} == {"fake-model"}


@pytest.mark.parametrize(
    ("setting", "field", "generate"),
    [
        (
            "max_model_chars",
            "generate.fallback[0].model",
            {"fallback": [gen_pb.ModelChoice(provider="fake", model="m" * 21)]},
        ),
        ("max_url_chars", "generate.base_url", {"base_url": "https://a.example/" + "x" * 3}),
    ],
)
async def test_model_name_and_url_bounds_are_settings_the_refusal_names(
    stack_factory: StackFactory, setting: str, field: str, generate: dict[str, Any]
) -> None:
    """GENSEARCH_GATEWAY_MAX_MODEL_CHARS and _MAX_URL_CHARS (were a fixed 256 and 2048,
    named by no refusal; a long URL was PERMISSION_DENIED): refused by the gateway before
    any call, though generation (at its defaults) would take the value."""
    stack = await stack_factory(**{setting: 20})
    await create_books(stack, books=WITH_BODY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="About {title}", **generate), metadata=ALICE
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("FIELD_TOO_LARGE", field)
    assert (info.metadata["max_chars"], info.metadata["setting"]) == (
        "20",
        f"GENSEARCH_GATEWAY_{setting.upper()}",
    )
    assert stack.fake.chat_requests == []


async def test_a_schema_far_past_its_bound_is_refused_before_it_is_read(stack: Stack) -> None:
    # A 3 MB schema (within the request's bound) was read whole into Python on the event
    # loop before its size was checked: 1.4 s, every other call stalled. Its serialized
    # size now refuses it first: the infinity at its end, found by reading it, is not
    # what the refusal names.
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "enum": [{"a": i} for i in range(150_000)]})
    schema.fields["enum"].list_value.values.add().number_value = float("inf")
    fmt = gen_pb.ResponseFormat(name="t", json_schema=schema)
    info = await _schema_refused(stack, fmt)
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_MAX_SCHEMA_CHARS"
