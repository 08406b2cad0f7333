"""A call whose prompt plus max_tokens can never fit a provider's tokens_per_minute window
(tokens counted reserved) is refused by the generation service naming its ``max_tokens``
(PROVIDER_TOKEN_LIMIT_EXCEEDED). Through the gateway the refusal names the caller's field
instead, as a refused prompt does: ``generate.max_tokens`` per hit, grouped and over named
objects, Ask's ``max_tokens``, or the collection's stored default that set it."""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import (
    ALICE,
    Stack,
    StackFactory,
    books_ask,
    books_search,
    books_stream_ask,
    create_books,
    fake_provider,
)
from tests.gateway.test_hit_error_details import _both
from tests.gateway.test_named_objects import by_ids
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import bad_request_field, error_info, failure_of

# A window allows 3000 tokens: room for any of these prompts, never with 4000 more to come.
TOKENS, TOO_MANY = 3000, 4000
REASON = "PROVIDER_TOKEN_LIMIT_EXCEEDED"
OWN, STORED = "generate.max_tokens", "collection.generative.max_tokens"


async def _limited(
    stack_factory: StackFactory, fake: FakeOpenAI, generative: ret_pb.GenerativeConfig | None = None
) -> tuple[Stack, list[str]]:
    """A stack whose fake provider allows ``TOKENS`` a window, counted reserved (the
    default), and its Books (with ``generative`` defaults)."""
    stack = await stack_factory(provider=fake_provider(fake, tokens_per_minute=TOKENS))
    return stack, await create_books(stack, generative=generative)


def _check(error: gw_pb.GenerationError, field: str, status: str) -> None:
    assert (error.status, error.reason) == (status, REASON), error
    assert error.message.startswith(f"{field}: "), error.message
    assert dict(error.metadata) == {
        "field": field,
        "provider": "fake",
        "tokens": str(TOKENS),
        "service": "generation",
    }


async def test_hits_and_grouped_name_generate_max_tokens(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack, ids = await _limited(stack_factory, fake)
    request = books_search(
        single_prompt="About {title}.", grouped_task="Which is oldest?", max_tokens=TOO_MANY
    )
    for hits, grouped in await _both(stack, request):
        assert len(hits) == 4
        for result in [*hits.values(), grouped]:
            _check(result.error, OWN, "INVALID_ARGUMENT")
    named = await stack.stub.GenerateOnObjects(
        by_ids(ids[:2], single_prompt="About {title}.", max_tokens=TOO_MANY), metadata=ALICE
    )
    assert len(named.hits) == 2
    for hit in named.hits:
        _check(hit.generation.error, OWN, "INVALID_ARGUMENT")
    assert fake.chat_requests == []  # refused before any call upstream


async def test_a_collections_stored_max_tokens_is_named_as_the_collections(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stored = ret_pb.GenerativeConfig(provider="fake", model="fake-model", max_tokens=TOO_MANY)
    stack, _ = await _limited(stack_factory, fake, stored)
    request = books_search(single_prompt="About {title}.", grouped_task="Which is oldest?")
    for hits, grouped in await _both(stack, request):
        for result in [*hits.values(), grouped]:
            # A state of the collection, as the gateway's own checks of it say.
            _check(result.error, STORED, "FAILED_PRECONDITION")
    for call in (
        stack.stub.Ask(books_ask(), metadata=ALICE),
        stack.stub.StreamAsk(books_stream_ask(), metadata=ALICE),
    ):
        err = await failure_of(call)
        assert err.code().name == "FAILED_PRECONDITION"
        assert (error_info(err).reason, bad_request_field(err)) == (REASON, STORED)
    assert fake.chat_requests == []


async def test_ask_names_max_tokens(stack_factory: StackFactory, fake: FakeOpenAI) -> None:
    stack, _ = await _limited(stack_factory, fake)
    for call in (
        stack.stub.Ask(books_ask(max_tokens=TOO_MANY), metadata=ALICE),
        stack.stub.StreamAsk(books_stream_ask(max_tokens=TOO_MANY), metadata=ALICE),
    ):
        err = await failure_of(call)
        assert err.code().name == "INVALID_ARGUMENT"
        info = error_info(err)
        assert (info.reason, bad_request_field(err)) == (REASON, "max_tokens")
        assert dict(info.metadata) == {
            "field": "max_tokens",
            "provider": "fake",
            "tokens": str(TOKENS),
            "service": "generation",
        }
    assert fake.chat_requests == []
