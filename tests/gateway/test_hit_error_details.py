"""A per-hit (or grouped) GenerationError carries the ErrorInfo a failed call would: its
domain and metadata (field, property, max_chars, setting, provider, attempts ...), with
the same reason and the same metadata keys as the unary error of the same failure, so a
client reads a hit's limit or missing property without parsing the message. Gateway-made
errors and errors relayed from the generation service, unary and streamed."""

from __future__ import annotations

import uuid

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb

from tests.gateway.conftest import ALICE, Stack, StackFactory, books_search, create_books
from tests.gateway.test_named_objects import by_ids, inline
from tests.support.fake_openai import Behaviour
from tests.support.rpc import error_info, failure_of

RENDERED = "GENSEARCH_GATEWAY_MAX_RENDERED_PROMPT_CHARS"


def _streamed(request: gw_pb.GenerativeSearchRequest) -> gw_pb.StreamGenerativeSearchRequest:
    stream = gw_pb.StreamGenerativeSearchRequest()
    stream.ParseFromString(request.SerializeToString())
    return stream


async def _both(
    stack: Stack, request: gw_pb.GenerativeSearchRequest
) -> list[tuple[dict[str, gw_pb.GenerationResult], gw_pb.GenerationResult]]:
    """The per-hit results by title and the grouped result, unary then streamed."""
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    unary = {h.hit.properties.fields["title"].string_value: h.generation for h in response.hits}
    events = [
        e async for e in stack.stub.StreamGenerativeSearch(_streamed(request), metadata=ALICE)
    ]
    (hits,) = [e.hits.hits for e in events if e.HasField("hits")]
    titles = [h.properties.fields["title"].string_value for h in hits]
    streamed = {
        titles[e.hit_result.hit_index]: e.hit_result.generation
        for e in events
        if e.HasField("hit_result")
    }
    grouped = [e.grouped for e in events if e.HasField("grouped")]
    return [
        (unary, response.grouped),
        (streamed, grouped[0] if grouped else gw_pb.GenerationResult()),
    ]


async def test_gateway_made_errors_carry_their_error_info(stack_factory: StackFactory) -> None:
    stack = await stack_factory(max_rendered_prompt_chars=100)
    await create_books(stack)
    request = books_search(
        limit=5, single_prompt="About {title}: {body} {body}", grouped_task="Which is oldest?"
    )
    for hits, grouped in await _both(stack, request):
        draft = hits["Untitled draft"].error  # body ""
        assert (draft.reason, draft.domain) == ("MISSING_PROPERTY", "gensearch")
        assert dict(draft.metadata) == {"field": "generate.single_prompt", "property": "body"}
        long = hits["Foundation"].error  # its body renders past 100 characters
        assert (long.reason, long.domain) == ("PROMPT_TOO_LONG", "gensearch")
        assert dict(long.metadata) == {
            "field": "generate.single_prompt",
            "max_chars": "100",
            "setting": RENDERED,
        }
        assert grouped.error.reason == "PROMPT_TOO_LONG"
        assert dict(grouped.error.metadata) | {"chars": ""} == {
            "field": "generate.grouped_task",
            "max_chars": "100",
            "setting": RENDERED,
            "chars": "",
        }
        assert int(grouped.error.metadata["chars"]) > 100
        assert hits["Dune"].result and not hits["Dune"].HasField("error")


async def test_a_missing_object_and_a_blank_prompt_name_their_field(stack: Stack) -> None:
    ids = await create_books(stack)
    missing = str(uuid.uuid4())
    response = await stack.stub.GenerateOnObjects(
        by_ids([ids[0], missing], single_prompt="Title: {title}"), metadata=ALICE
    )
    gone = response.hits[1].generation.error
    assert (gone.reason, gone.domain) == ("OBJECT_NOT_FOUND", "gensearch")
    assert dict(gone.metadata) == {"field": "ids.ids[1]", "id": missing}
    blank = await stack.stub.GenerateOnObjects(
        inline([{"a": " ", "b": "\n"}], single_prompt="{a}{b}"), metadata=ALICE
    )
    error = blank.hits[0].generation.error
    assert (error.reason, error.domain) == ("BLANK_PROMPT", "gensearch")
    assert dict(error.metadata) == {
        "field": "generate.single_prompt",
        "property": "a",
        "properties": "a,b",
    }


async def test_a_relayed_prompt_refusal_says_what_asks_unary_error_says(
    stack_factory: StackFactory,
) -> None:
    """Generation's PROMPT_TOO_LONG: a hit's error and an Ask's failed call carry the same
    reason and metadata (but the field, each the caller's own)."""
    stack = await stack_factory(generation_settings={"max_prompt_chars": 120})
    await create_books(stack)
    long = " Answer in one short sentence, plainly, without any preamble at all." * 2
    err = await failure_of(
        stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="Which?" + long), metadata=ALICE
        )
    )
    unary = error_info(err)
    request = books_search(limit=2, single_prompt="About {title}." + long)
    for hits, _ in await _both(stack, request):
        for result in hits.values():
            error = result.error
            assert (error.reason, error.domain) == (unary.reason, unary.domain)
            assert error.metadata["field"] == "generate.single_prompt"
            expected = dict(unary.metadata) | {"field": "generate.single_prompt"}
            assert dict(error.metadata) | {"chars": ""} == expected | {"chars": ""}
            assert error.metadata["max_chars"] == "120"
            assert error.metadata["service"] == "generation"
    assert stack.fake.chat_requests == []


async def test_an_upstream_failure_says_what_asks_unary_error_says(stack: Stack) -> None:
    """The provider's 401: the hit's error has the unary error's reason and metadata
    (provider, attempts, upstream_status, upstream_calls ...), unary and streamed."""
    await create_books(stack)
    stack.fake.enqueue(Behaviour.unauthorized())
    err = await failure_of(
        stack.stub.Ask(gw_pb.AskRequest(collection="Books", llm_question="Which?"), metadata=ALICE)
    )
    unary = error_info(err)
    assert unary.reason == "UPSTREAM_UNAUTHENTICATED"
    request = books_search(limit=1, single_prompt="About {title}")
    for _ in range(2):
        stack.fake.enqueue(Behaviour.unauthorized())
    for hits, _ in await _both(stack, request):
        (result,) = hits.values()
        error = result.error
        assert (error.status, error.reason, error.domain) == (
            "UNAUTHENTICATED",
            unary.reason,
            unary.domain,
        )
        assert set(error.metadata) == set(unary.metadata)
        for key in ("provider", "attempts", "upstream_status", "upstream_calls"):
            assert error.metadata[key] == unary.metadata[key], key
        assert error.metadata["provider"] == "fake"
        assert result.attempts == int(error.metadata["attempts"]) == 1
        assert result.upstream_calls == int(error.metadata["upstream_calls"]) == 1
