"""A request past a bound the operator sets is told which bound, as GENSEARCH_GATEWAY_MAX_HITS
tells it on ``limit``: the ErrorInfo names the field, the bound (``max`` for a count,
``max_chars`` for a length) and the variable that sets it (``setting``), so a client
splits or trims by it without parsing the message. Before, the stop sequences, Ask's
context_size and interaction_size and the fallback chain named the field alone."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from google.protobuf import duration_pb2

from tests.gateway.conftest import ALICE, Stack, books_ask, books_search, create_books
from tests.support.rpc import error_info

_PAIR = gen_pb.ModelChoice(provider="fake", model="fake-model")


@pytest.mark.parametrize(
    ("generate", "field", "bound", "setting"),
    [
        ({"stop": ["s"] * 5}, "generate.stop", ("max", "4"), "MAX_STOP_SEQUENCES"),
        ({"stop": ["x" * 257]}, "generate.stop[0]", ("max_chars", "256"), "MAX_STOP_CHARS"),
        ({"fallback": [_PAIR] * 5}, "generate.fallback", ("max", "4"), "MAX_FALLBACKS"),
    ],
)
async def test_a_generate_block_past_a_bound_names_it(
    stack: Stack, generate: dict[str, Any], field: str, bound: tuple[str, str], setting: str
) -> None:
    await create_books(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="{title}", **generate), metadata=ALICE
        )
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info.metadata["field"] == field
    assert info.metadata[bound[0]] == bound[1]
    assert info.metadata["setting"] == f"GENSEARCH_GATEWAY_{setting}"
    if bound[0] == "max":  # a count's OUT_OF_RANGE names its setting in the message too
        assert info.metadata["setting"] in err.details()


@pytest.mark.parametrize(
    ("fields", "field", "bound", "setting"),
    [
        ({"context_size": 51}, "context_size", "50", "MAX_CONTEXT_SIZE"),
        ({"context_size": -1}, "context_size", "50", "MAX_CONTEXT_SIZE"),
        ({"interaction_size": 101}, "interaction_size", "100", "MAX_INTERACTION_SIZE"),
        ({"fallback": [_PAIR] * 5}, "fallback", "4", "MAX_FALLBACKS"),
    ],
)
async def test_an_ask_past_a_bound_names_it(
    stack: Stack, fields: dict[str, Any], field: str, bound: str, setting: str
) -> None:
    await create_books(stack)
    for call in (
        stack.stub.Ask(books_ask(**fields), metadata=ALICE),
        _first_event(
            stack.stub.StreamAsk(gw_pb.StreamAskRequest(**_ask_fields(fields)), metadata=ALICE)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        err = caught.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        info = error_info(err)
        assert info.reason == "OUT_OF_RANGE"
        assert info.metadata["field"] == field
        assert info.metadata["max"] == bound
        assert info.metadata["setting"] == f"GENSEARCH_GATEWAY_{setting}"
        assert info.metadata["setting"] in err.details()


def _ask_fields(fields: dict[str, Any]) -> dict[str, Any]:
    request = books_ask(**fields)
    return {f.name: v for f, v in request.ListFields()}


async def _first_event(stream: Any) -> None:
    async for _ in stream:
        return


def _hello(**fields: Any) -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(
        provider="fake",
        messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hello")],
        **fields,
    )


@pytest.mark.parametrize(
    ("fields", "field", "bound", "setting"),
    [
        ({"stop": ["s"] * 5}, "stop", ("max", "4"), "MAX_STOP_SEQUENCES"),
        ({"stop": ["x" * 257]}, "stop[0]", ("max_chars", "256"), "MAX_STOP_CHARS"),
        ({"fallback": [_PAIR] * 5}, "fallback", ("max", "4"), "MAX_FALLBACKS"),
        (
            {"messages": [gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")] * 513},
            "messages",
            ("max", "512"),
            "MAX_MESSAGES",
        ),
        ({"max_tokens": 1_000_001}, "max_tokens", ("max", "1000000"), "MAX_TOKENS_LIMIT"),
    ],
)
async def test_a_forwarded_generate_past_a_bound_names_it(
    stack: Stack, fields: dict[str, Any], field: str, bound: tuple[str, str], setting: str
) -> None:
    """Generate through the gateway reaches the generation service's own bounds, which say
    so the same way (GENSEARCH_GENERATION_*)."""
    generation = gen_grpc.GenerationServiceStub(stack.channel)
    request = _hello()
    request.MergeFrom(gen_pb.GenerateRequest(**{k: v for k, v in fields.items()}))
    if "messages" in fields:
        del request.messages[0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generation.Generate(request, metadata=ALICE)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info.metadata["field"] == field
    assert info.metadata[bound[0]] == bound[1]
    assert info.metadata["setting"] == f"GENSEARCH_GENERATION_{setting}"
    if bound[0] == "max":
        assert info.metadata["setting"] in err.details()


async def test_a_generate_block_past_the_token_limit_names_it(stack: Stack) -> None:
    """The gateway's own check of max_tokens against the generation service's limit (as
    ListModels gives it) says its setting as the generation service's does; before, the
    ErrorInfo had ``max`` alone."""
    await create_books(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerativeSearch(
            books_search(single_prompt="{title}", max_tokens=1_000_001), metadata=ALICE
        )
    _out_of_range(
        caught.value,
        "generate.max_tokens",
        ("max", "1000000"),
        "GENSEARCH_GENERATION_MAX_TOKENS_LIMIT",
    )


@pytest.mark.parametrize("seconds", [601, 0])
async def test_an_ask_timeout_past_its_bound_names_it(stack: Stack, seconds: int) -> None:
    await create_books(stack)
    request = books_ask(timeout=duration_pb2.Duration(seconds=seconds))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Ask(request, metadata=ALICE)
    _out_of_range(
        caught.value, "timeout", ("max_seconds", "600"), "GENSEARCH_GATEWAY_MAX_ASK_TIMEOUT"
    )


def _out_of_range(
    err: grpc.aio.AioRpcError, field: str, bound: tuple[str, str], setting: str
) -> None:
    """``err`` is services.common.errors.out_of_range's refusal: OUT_OF_RANGE, the field,
    the bound and the setting in the ErrorInfo, and the setting in the message too."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info.reason == "OUT_OF_RANGE"
    assert info.metadata["field"] == field
    assert info.metadata[bound[0]] == bound[1]
    assert info.metadata["setting"] == setting
    assert setting in (err.details() or "")
