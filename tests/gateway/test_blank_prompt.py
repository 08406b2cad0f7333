"""A per-hit prompt that renders blank (its properties hold only spaces and line breaks) is
that hit's own error, made by the gateway before any generation call: the generation
service used to refuse it naming ``messages[0].content``, a field the caller never sent,
after the tenant's LLM-calls quota had been charged for it."""

from __future__ import annotations

import uuid
from typing import Any

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import ALICE, DIM, Stack, StackFactory, create_books
from tests.gateway.test_named_objects import inline

BLANK = " \n\t\u00a0 "  # spaces, a line break, a tab, a no-break space: no text


def _blank_error(result: gw_pb.GenerationResult, *properties: str) -> None:
    error = result.error
    assert (error.status, error.reason) == ("FAILED_PRECONDITION", "BLANK_PROMPT"), error
    assert error.code == 9
    assert "generate.single_prompt" in error.message
    assert "messages" not in error.message
    for name in properties:
        assert repr(name) in error.message
    assert result.upstream_calls == 0 and result.attempts == 0


async def test_an_object_whose_prompt_renders_blank_fails_alone_before_any_call(
    stack: Stack,
) -> None:
    objects: list[dict[str, Any]] = [
        {"title": BLANK, "body": "\n"},
        {"title": "Dune", "body": BLANK},  # blank body, but the prompt has text
        {"title": "  ", "body": " "},
    ]
    request = inline(objects, single_prompt="{title}\n{body}", debug=True)
    response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    first, dune, third = (h.generation for h in response.hits)
    _blank_error(first, "title", "body")
    _blank_error(third, "title", "body")
    assert not first.prompt  # nothing was sent
    assert dune.result.startswith("Dune")
    assert len(stack.fake.chat_requests) == 1  # the blank objects cost no LLM call
    assert response.upstream_calls == 1

    stack.fake.reset_stats()
    stream = gw_pb.StreamGenerateOnObjectsRequest()
    stream.ParseFromString(request.SerializeToString())
    stream.generate.stream_tokens = True
    events = [e async for e in stack.stub.StreamGenerateOnObjects(stream, metadata=ALICE)]
    results = {
        e.hit_result.hit_index: e.hit_result.generation for e in events if e.HasField("hit_result")
    }
    _blank_error(results[0], "title", "body")
    _blank_error(results[2], "title", "body")
    assert results[1].result.startswith("Dune")
    tokens = {e.token.hit_index for e in events if e.HasField("token")}
    assert tokens == {1}
    assert len(stack.fake.chat_requests) == 1


async def test_a_hit_whose_prompt_renders_blank_is_its_own_error_in_a_search(
    stack_factory: StackFactory, shared_redis: RedisProcess
) -> None:
    """Through GenerativeSearch, with a per-tenant LLM-calls quota: the blank hit is
    neither sent nor charged."""
    from tests.gateway.test_llm_call_charges import Metered

    prefix = f"q-{uuid.uuid4().hex[:8]}"
    stack = await stack_factory(
        redis_url=shared_redis.url, quota_key_prefix=prefix, quota_llm_calls_per_minute=100
    )
    books = [
        {"title": BLANK, "body": "x", "year": 1, "tags": []},
        {"title": "Emma", "body": "y", "year": 2, "tags": []},
    ]
    await create_books(stack, books=books)
    metered = Metered(stack, stack.fake, shared_redis, prefix)
    await metered.fresh_window()
    request = gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=2,
        generate=gw_pb.Generate(single_prompt="{title}"),
    )
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    by_title = {h.hit.properties.fields["title"].string_value: h.generation for h in response.hits}
    _blank_error(by_title[BLANK], "title")
    assert by_title["Emma"].result == "Emma"
    assert len(stack.fake.chat_requests) == 1
    assert await metered.counted() == 1  # the quota was charged for Emma's call alone
