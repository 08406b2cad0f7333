"""A request past a bound the operator sets is told which bound, as GENSEARCH_GATEWAY_MAX_HITS
tells it on ``limit``: the ErrorInfo names the field, the bound (``max`` for a count,
``max_chars`` for a length) and the variable that sets it (``setting``), so a client
splits or trims by it without parsing the message. Before, the stop sequences, Ask's
context_size and interaction_size and the fallback chain named the field alone."""

from __future__ import annotations

from collections.abc import Awaitable
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


async def _refused_naming_the_bound(
    call: Awaitable[Any],
    field: str,
    bound: tuple[str, str],
    setting: str,
    *,
    reason: str | None = None,
) -> None:
    """``call`` fails INVALID_ARGUMENT (with ``reason``, when given), its ErrorInfo naming
    the ``field``, the bound (``bound``: its key and value) and the ``setting`` that sets
    it."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    if reason is not None:
        assert info.reason == reason
    assert info.metadata["field"] == field
    assert info.metadata[bound[0]] == bound[1]
    assert info.metadata["setting"] == setting
    if (
        bound[0] == "max" or reason == "OUT_OF_RANGE"
    ):  # errors.out_of_range names it in the text too
        assert setting in (err.details() or "")


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
    request = books_search(single_prompt="{title}", **generate)
    call = stack.stub.GenerativeSearch(request, metadata=ALICE)
    await _refused_naming_the_bound(call, field, bound, f"GENSEARCH_GATEWAY_{setting}")


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
        await _refused_naming_the_bound(
            call, field, ("max", bound), f"GENSEARCH_GATEWAY_{setting}", reason="OUT_OF_RANGE"
        )


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
    call = generation.Generate(request, metadata=ALICE)
    await _refused_naming_the_bound(call, field, bound, f"GENSEARCH_GENERATION_{setting}")


async def test_a_generate_block_past_the_token_limit_names_it(stack: Stack) -> None:
    """The gateway's own check of max_tokens against the generation service's limit (as
    ListModels gives it) says its setting as the generation service's does; before, the
    ErrorInfo had ``max`` alone."""
    await create_books(stack)
    await _refused_naming_the_bound(
        stack.stub.GenerativeSearch(
            books_search(single_prompt="{title}", max_tokens=1_000_001), metadata=ALICE
        ),
        "generate.max_tokens",
        ("max", "1000000"),
        "GENSEARCH_GENERATION_MAX_TOKENS_LIMIT",
        reason="OUT_OF_RANGE",
    )


@pytest.mark.parametrize("seconds", [601, 0])
async def test_an_ask_timeout_past_its_bound_names_it(stack: Stack, seconds: int) -> None:
    await create_books(stack)
    request = books_ask(timeout=duration_pb2.Duration(seconds=seconds))
    await _refused_naming_the_bound(
        stack.stub.Ask(request, metadata=ALICE),
        "timeout",
        ("max_seconds", "600"),
        "GENSEARCH_GATEWAY_MAX_ASK_TIMEOUT",
        reason="OUT_OF_RANGE",
    )
