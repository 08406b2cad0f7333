"""What a caller was charged is on what it gets back: ``upstream_calls`` on every per-hit
and grouped GenerationResult, summed on the response and on the stream's DoneEvent (and
GenerateOnObjects likewise), and on Ask's answer (question rewrite and answer). Checked,
through real servers, against the requests the loopback fakes received: a chain whose
primary fails with a 5xx (retried once) before the backup answers, a JSON answer invalid
then corrected, a failed hit; answers from the exact and the semantic cache say 0; the
tenant's LLM-calls quota counted the same total."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.devlaunch.redis_server import RedisProcess
from tests.gateway.conftest import (
    ALICE,
    BOOKS,
    DIM,
    StackFactory,
    create_books,
    fake_provider,
)
from tests.gateway.test_llm_call_charges import Metered
from tests.support.fake_openai import Behaviour, FakeOpenAI, RecordedRequest
from tests.support.rpc import error_info

BACKUP = [gen_pb.ModelChoice(provider="backup")]
GROUPED_TASK = "Which is oldest?"
# The hit whose first JSON answer does not match the schema (a corrective retry follows).
INVALID_FIRST = "Title: Dune"


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def _backup_reply(body: dict[str, Any]) -> str:
    """The backup's JSON: valid, but for INVALID_FIRST's first answer (a corrective retry
    carries the invalid answer back as an assistant message)."""
    messages = body["messages"]
    corrective = any(m["role"] == "assistant" for m in messages)
    if messages[0]["content"] == INVALID_FIRST and not corrective:
        return '{"title": 7}'
    return '{"title": "ok"}'


@pytest.fixture
async def metered(
    stack_factory: StackFactory, fake2: FakeOpenAI, shared_redis: RedisProcess
) -> Metered:
    """A stack whose "primary" model always answers 503 (two attempts for the last pair of
    a chain; one for the primary, which a next pair takes over at once), with a
    backup provider on ``fake2``, the exact cache and the LLM quota on a real Redis."""
    prefix = f"uc-{uuid.uuid4().hex[:8]}"
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
        quota_llm_calls_per_minute=10_000,
        collection_cache_ttl=60,
        extra_providers=[fake_provider(fake2, name="backup", default_model="b-model")],
        generation_settings={"retry_max_attempts": 2},
    )
    await create_books(stack)
    stack.fake.by_model["primary"] = Behaviour.error(503)
    fake2.reply = _backup_reply
    # The tests that compare with the quota's count call m.fresh_window() first.
    return Metered(stack, fake2, shared_redis, prefix)


def _schema() -> gen_pb.ResponseFormat:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"title": {"type": "string"}}})
    schema["required"] = ["title"]
    return gen_pb.ResponseFormat(json_schema=schema)


def _generate(**fields: Any) -> gw_pb.Generate:
    defaults: dict[str, Any] = {
        "single_prompt": "Title: {title}",
        "grouped_task": GROUPED_TASK,
        "model": "primary",
        "fallback": BACKUP,
        "response_format": _schema(),
    }
    return gw_pb.Generate(**{**defaults, **fields})


def _search(**generate: Any) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=len(BOOKS),
        generate=_generate(**generate),
    )


def _stream(request: gw_pb.GenerativeSearchRequest) -> gw_pb.StreamGenerativeSearchRequest:
    streamed = gw_pb.StreamGenerativeSearchRequest()
    streamed.ParseFromString(request.SerializeToString())  # the same numbering
    return streamed


def _requests(m: Metered) -> list[RecordedRequest]:
    return [*m.stack.fake.chat_requests, *m.fake2.chat_requests]


def _sent_for(requests: list[RecordedRequest], prompt: str) -> int:
    """Requests (to either fake) whose first message is ``prompt``: one hit's calls."""
    return sum(1 for r in requests if r.json["messages"][0]["content"] == prompt)


def _sent_grouped(requests: list[RecordedRequest]) -> int:
    return sum(1 for r in requests if GROUPED_TASK in r.json["messages"][0]["content"])


async def test_generative_search_reports_each_hits_calls_and_their_sum(metered: Metered) -> None:
    m = metered
    await m.fresh_window()
    response = await m.stack.stub.GenerativeSearch(_search(), metadata=ALICE, timeout=30)
    sent = _requests(m)
    per_hit = {h.hit.properties["title"]: h.generation.upstream_calls for h in response.hits}
    assert per_hit == {t: _sent_for(sent, f"Title: {t}") for t in per_hit}
    # The primary once (a 5xx with a next pair: not retried), then the backup: its
    # invalid answer and the correction for Dune, one answer for the others.
    assert per_hit["Dune"] == 3 and per_hit["Emma"] == 2
    assert all(h.generation.fallback_index == 1 for h in response.hits)
    assert json_format.MessageToDict(response.hits[0].generation.structured) == {"title": "ok"}
    assert response.grouped.upstream_calls == _sent_grouped(sent) == 2
    assert response.upstream_calls == m.received() == len(sent) == 3 + 2 * 4 + 2
    # What the tenant's quota counted is what the response says.
    assert await m.counted() == response.upstream_calls


async def test_the_stream_reports_them_on_each_result_and_on_done(metered: Metered) -> None:
    m = metered
    await m.fresh_window()
    events = [
        e
        async for e in m.stack.stub.StreamGenerativeSearch(
            _stream(_search(stream_tokens=True)), metadata=ALICE, timeout=30
        )
    ]
    sent = _requests(m)
    hits = list(events[0].hits.hits)
    results = [e.hit_result for e in events if e.WhichOneof("event") == "hit_result"]
    per_hit = {hits[r.hit_index].properties["title"]: r.generation.upstream_calls for r in results}
    assert per_hit == {
        h.properties["title"]: _sent_for(sent, f"Title: {h.properties['title']}") for h in hits
    }
    assert per_hit["Dune"] == 3
    grouped = [e.grouped for e in events if e.WhichOneof("event") == "grouped"]
    assert [g.upstream_calls for g in grouped] == [_sent_grouped(sent)] == [2]
    assert events[-1].done.upstream_calls == m.received() == len(sent) == 13
    assert await m.counted() == events[-1].done.upstream_calls


async def test_generate_on_objects_and_a_failed_hit(metered: Metered) -> None:
    m = metered
    await m.fresh_window()

    def inline(titles: list[str]) -> gw_pb.InlineObjects:
        objects = []
        for title in titles:
            s = struct_pb2.Struct()
            s.update({"title": title})
            objects.append(s)
        return gw_pb.InlineObjects(objects=objects)

    response = await m.stack.stub.GenerateOnObjects(
        gw_pb.GenerateOnObjectsRequest(
            inline=inline(["Dune", "Emma"]), generate=_generate(grouped_task="")
        ),
        metadata=ALICE,
        timeout=30,
    )
    assert [h.generation.upstream_calls for h in response.hits] == [3, 2]
    assert response.upstream_calls == m.received() == 5
    before = m.received()
    streamed = gw_pb.StreamGenerateOnObjectsRequest(
        inline=inline(["Dune", "Emma"]), generate=_generate(grouped_task="")
    )
    events = [
        e async for e in m.stack.stub.StreamGenerateOnObjects(streamed, metadata=ALICE, timeout=30)
    ]
    calls = {
        e.hit_result.hit_index: e.hit_result.generation.upstream_calls
        for e in events
        if e.WhichOneof("event") == "hit_result"
    }
    assert calls == {0: 3, 1: 2}
    assert events[-1].done.upstream_calls == m.received() - before == 5

    # Both pairs fail: the hit's error says what was spent on it (the primary's one
    # attempt, the last pair's two).
    m.fake2.by_model["b-model"] = Behaviour.error(500)
    before = m.received()
    failed = await m.stack.stub.GenerateOnObjects(
        gw_pb.GenerateOnObjectsRequest(inline=inline(["Kim"]), generate=_generate(grouped_task="")),
        metadata=ALICE,
        timeout=30,
    )
    generation = failed.hits[0].generation
    assert generation.HasField("error") and generation.error.status == "UNAVAILABLE"
    assert generation.upstream_calls == m.received() - before == 3
    assert failed.upstream_calls == 3
    assert await m.counted() == m.received()


async def test_answers_from_the_generation_cache_say_0(metered: Metered) -> None:
    m = metered
    use = gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE)
    first = await m.stack.stub.GenerativeSearch(_search(cache=use), metadata=ALICE, timeout=30)
    assert first.upstream_calls == m.received() == 13
    second = await m.stack.stub.GenerativeSearch(_search(cache=use), metadata=ALICE, timeout=30)
    assert m.received() == 13  # no call at all
    assert all(h.generation.cached for h in second.hits) and second.grouped.cached
    assert [h.generation.upstream_calls for h in second.hits] == [0] * len(BOOKS)
    assert second.grouped.upstream_calls == 0 and second.upstream_calls == 0
    events = [
        e
        async for e in m.stack.stub.StreamGenerativeSearch(
            _stream(_search(cache=use)), metadata=ALICE, timeout=30
        )
    ]
    assert m.received() == 13
    results = [e.hit_result.generation for e in events if e.WhichOneof("event") == "hit_result"]
    assert len(results) == len(BOOKS) and all(g.cached for g in results)
    assert [g.upstream_calls for g in results] == [0] * len(BOOKS)
    grouped = [e.grouped for e in events if e.WhichOneof("event") == "grouped"]
    assert grouped[0].cached and grouped[0].upstream_calls == 0
    assert events[-1].done.upstream_calls == 0


def _ask(conversation_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "collection": "Books",
        "llm_question": "When was it written?",
        "near_vector": ret_pb.NearVector(vector=[0.5] * DIM),
        "llm_model": "primary",
        "fallback": BACKUP,
        "conversation_id": conversation_id,
        "rewrite_query": True,
        **fields,
    }


async def test_ask_counts_its_rewrite_and_its_answer(metered: Metered) -> None:
    m = metered
    await m.fresh_window()
    m.fake2.reply = "It was written in 1965 [1]."
    made = await m.stack.memory.CreateConversation(
        mem_pb.CreateConversationRequest(), metadata=ALICE
    )
    cid = made.conversation.conversation_id
    await m.stack.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(
            conversation_id=cid,
            input="Tell me about the desert planet book",
            response="Dune is about a desert planet.",
        ),
        metadata=ALICE,
    )
    reply = await m.stack.stub.Ask(gw_pb.AskRequest(**_ask(cid)), metadata=ALICE, timeout=30)
    # The rewrite (primary only, no chain: 503 twice, then the fallback query), then the
    # answer (the primary once, a next pair taking its 5xx over at once, the backup once).
    assert reply.rewrite_method == gw_pb.REWRITE_METHOD_FALLBACK
    assert reply.fallback_index == 1
    assert reply.upstream_calls == m.received() == 4
    events = [
        e
        async for e in m.stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(**_ask(cid)), metadata=ALICE, timeout=30
        )
    ]
    assert events[-1].answer.upstream_calls == m.received() - 4 == 4
    assert await m.counted() == m.received()

    # The answer fails on both pairs too: the error counts the rewrite's calls (2) and the
    # answer's (1 + 2: the last pair retried), all of them charged.
    m.fake2.by_model["b-model"] = Behaviour.error(500)
    before = m.received()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await m.stack.stub.Ask(gw_pb.AskRequest(**_ask(cid)), metadata=ALICE, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err.value)
    assert int(info.metadata["upstream_calls"]) == m.received() - before == 5
    assert await m.counted() == m.received()


async def test_answers_from_the_semantic_cache_say_0(metered: Metered) -> None:
    m = metered
    m.fake2.reply = "Dune [1]."
    fields: dict[str, Any] = {
        "collection": "Books",
        "llm_question": "Which book is set on a desert planet?",
        "llm_model": "primary",
        "fallback": BACKUP,
        "context_size": 2,
        "semantic_cache": gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE),
    }
    first = await m.stack.stub.Ask(gw_pb.AskRequest(**fields), metadata=ALICE, timeout=30)
    assert not first.cached and first.upstream_calls == m.received() == 2
    await m.stack.ask.idle()  # the answer's store, made after it
    second = await m.stack.stub.Ask(gw_pb.AskRequest(**fields), metadata=ALICE, timeout=30)
    assert second.cached and second.answer == first.answer
    assert second.upstream_calls == 0 and m.received() == 2
    events = [
        e
        async for e in m.stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(**fields), metadata=ALICE, timeout=30
        )
    ]
    assert events[-1].answer.cached and events[-1].answer.upstream_calls == 0
    assert m.received() == 2
