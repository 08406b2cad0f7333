"""The semantic answer cache of Ask, through the whole stack: question vectors from the
retrieval service's local model in the real qdrant-edge engine; hits and misses around the
threshold, other settings, tenants, conversations, collection deletion, objects deleted or
changed since, streaming."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from services.gateway import ask_cache
from services.gateway.clients import RetrievalClient
from tests.gateway.conftest import (
    BOOKS,
    OWN_CONNECTIONS,
    Stack,
    StackFactory,
    books_collection,
    create_books,
    retrieval_calls,
    vector,
)
from tests.gateway.test_rerank_and_chunks import CHUNKS, create_docs, zebra_ask
from tests.support.fake_openai import Behaviour
from tests.support.rpc import error_info

KEYS = (
    "alice@acme/admin:key-alice-acme,carol@acme/reader:key-carol-acme,"
    "bob@globex/admin:key-bob-globex"
)
ALICE = (("authorization", "Bearer key-alice-acme"),)
CAROL = (("authorization", "Bearer key-carol-acme"),)  # alice's tenant, another user
BOB = (("authorization", "Bearer key-bob-globex"),)

Q1 = "Which book is set on a desert planet?"
Q2 = "Which novel takes place on a desert planet?"
UNRELATED = "How long should sourdough bread rise before baking?"
# Far from Q1 in meaning, but it finds a book (an Ask that finds nothing is not stored).
OTHER = "Who is the hacker in a cyberpunk future?"


def ask(question: str, min_similarity: float | None = None, **fields: Any) -> gw_pb.AskRequest:
    cache = gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE)
    if min_similarity is not None:
        cache.min_similarity = min_similarity
    return gw_pb.AskRequest(
        collection="Books", llm_question=question, context_size=2, semantic_cache=cache, **fields
    )


@pytest.fixture
async def sem(stack_factory: StackFactory) -> Stack:
    stack = await stack_factory(shared={"api_keys": KEYS})
    await create_books(stack, metadata=ALICE)
    return stack


async def asked(stack: Stack, request: gw_pb.AskRequest, *, metadata: Any) -> gw_pb.AskResponse:
    """An Ask, and the store its answer queued made: stores run after the answer, in the
    background, and the next question must find what this one stored."""
    response = await stack.stub.Ask(request, metadata=metadata)
    await stack.ask.idle()
    return response


def answer_caches(root: Path) -> list[Path]:
    """The engine's hidden answer-cache shards under a stack's data dirs."""
    return [p for p in root.rglob("_a*") if p.is_dir()]


def calls(stack: Stack) -> int:
    return len(stack.fake.chat_requests)


async def test_a_close_question_gets_the_stored_answer(sem: Stack) -> None:
    first = await asked(sem, ask(Q1), metadata=ALICE)
    assert not first.cached and first.answer
    made = calls(sem)
    second = await asked(sem, ask(Q2, 0.5), metadata=ALICE)
    assert calls(sem) == made  # no LLM call
    assert second.cached and second.answer == first.answer
    assert second.cached_question == Q1
    assert 0.5 <= second.cached_similarity < 1
    assert [h.id for h in second.hits] == [h.id for h in first.hits]
    assert first.attempts == 1
    # What this call spent: nothing, whatever the stored answer's call did.
    assert second.usage.total_tokens == 0 and second.upstream_calls == 0
    assert second.attempts == 0 and not second.HasField("wait_time")
    unrelated = await asked(sem, ask(UNRELATED, 0.5), metadata=ALICE)
    assert not unrelated.cached and calls(sem) == made + 1


async def test_the_threshold_decides(sem: Stack) -> None:
    await asked(sem, ask(Q1), metadata=ALICE)
    near = (await asked(sem, ask(Q2, 0.5), metadata=ALICE)).cached_similarity
    made = calls(sem)
    just_below = await asked(sem, ask(Q2, max(0.5, near - 0.005)), metadata=ALICE)
    assert just_below.cached and calls(sem) == made
    just_above = await asked(sem, ask(Q2, min(1.0, near + 0.005)), metadata=ALICE)
    assert not just_above.cached and calls(sem) == made + 1


async def test_other_settings_never_share_an_answer(sem: Stack) -> None:
    await asked(sem, ask(Q1), metadata=ALICE)
    made = calls(sem)
    other = await asked(sem, ask(Q1, system_prompt="Answer in French."), metadata=ALICE)
    assert not other.cached and calls(sem) == made + 1
    same = await asked(sem, ask(Q1), metadata=ALICE)
    assert same.cached and calls(sem) == made + 1


async def test_a_conversation_never_uses_it(sem: Stack) -> None:
    await asked(sem, ask(Q1), metadata=ALICE)
    made = calls(sem)
    started = await asked(sem, ask(Q1, new_conversation=True), metadata=ALICE)
    assert not started.cached and started.interaction_id
    follow = await asked(
        sem, ask(Q1, conversation_id=started.conversation_id, rewrite_query=False), metadata=ALICE
    )
    assert not follow.cached and follow.interaction_id
    assert calls(sem) == made + 2


async def test_an_empty_or_filtered_answer_is_never_stored(sem: Stack) -> None:
    """Probe: an Ask whose answer the provider filtered (empty) was stored and served,
    empty and marked cached, to every close question of the tenant for the TTL."""
    sem.fake.finish_reason_override = "content_filter"
    sem.fake.enqueue(Behaviour.ok(text=""), Behaviour.ok(text="Du"))
    for _ in range(2):  # empty, then cut short by the filter
        assert not (await asked(sem, ask(Q1), metadata=ALICE)).cached
    sem.fake.finish_reason_override = None
    sem.fake.enqueue(Behaviour.ok(text=""))  # an empty answer that finished
    assert not (await asked(sem, ask(Q1), metadata=ALICE)).cached
    assert calls(sem) == 3
    answered = await asked(sem, ask(Q1), metadata=CAROL)
    assert not answered.cached and answered.answer and calls(sem) == 4
    again = await asked(sem, ask(Q1), metadata=CAROL)
    assert again.cached and again.answer == answered.answer and calls(sem) == 4


async def test_an_ask_that_found_nothing_is_not_stored(stack_factory: StackFactory) -> None:
    """Probe: an Ask over a collection with nothing matching yet was stored with no
    source to check, and after the import that gives it a match every close question got
    the stored "no results" answer, with no hits, for the TTL. One that searches for
    nothing (context_size 0) depends on no object, and is still stored."""
    stack = await stack_factory(shared={"api_keys": KEYS})
    await create_books(stack, metadata=ALICE, books=[])
    first = await asked(stack, ask(Q1), metadata=ALICE)
    assert not first.hits and not first.cached
    dune = str(uuid.uuid4())
    await upsert(stack, dune, 0)  # the import: Dune
    after = await asked(stack, ask(Q1), metadata=ALICE)
    assert not after.cached and [h.id for h in after.hits] == [dune]
    assert calls(stack) == 2
    unsearched = ask(UNRELATED)
    unsearched.context_size = 0
    assert not (await asked(stack, unsearched, metadata=ALICE)).cached
    assert (await asked(stack, unsearched, metadata=ALICE)).cached and calls(stack) == 3


async def test_another_users_question_is_never_told(sem: Stack) -> None:
    """The tenant shares an answer, not the words a colleague typed: a cached answer told
    anyone of the tenant whose question came near the stored question, verbatim."""
    await asked(sem, ask(Q1), metadata=ALICE)
    carols = await asked(sem, ask(Q2, 0.5), metadata=CAROL)
    assert carols.cached and carols.answer
    assert carols.cached_question == "" and carols.cached_similarity >= 0.5
    alices = await asked(sem, ask(Q2, 0.5), metadata=ALICE)
    assert alices.cached and alices.cached_question == Q1  # her own, told back


async def test_answers_never_cross_tenants(sem: Stack) -> None:
    await asked(sem, ask(Q1), metadata=ALICE)
    await create_books(sem, metadata=BOB)  # same name, same objects
    made = calls(sem)
    bobs = await asked(sem, ask(Q1), metadata=BOB)
    assert not bobs.cached and calls(sem) == made + 1


async def test_answers_never_cross_collections_and_leave_only_with_their_own(
    sem: Stack,
) -> None:
    """A twin collection of the tenant (the same objects and settings) never gets Books'
    answer; deleting the twin, or another tenant's namesake, leaves Books' answers."""
    await create_books(sem, name="Twin", metadata=ALICE)
    await create_books(sem, metadata=BOB)
    await asked(sem, ask(Q1), metadata=ALICE)
    made = calls(sem)
    twin = ask(Q1)
    twin.collection = "Twin"
    assert not (await asked(sem, twin, metadata=ALICE)).cached
    assert calls(sem) == made + 1
    for name, who in (("Twin", ALICE), ("Books", BOB)):
        await sem.retrieval.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name=name), metadata=who
        )
    kept = await asked(sem, ask(Q1), metadata=ALICE)
    assert kept.cached and calls(sem) == made + 1


async def test_deleting_the_collection_drops_its_answers(sem: Stack, tmp_path: Path) -> None:
    await asked(sem, ask(Q1), metadata=ALICE)
    hidden = answer_caches(tmp_path)
    assert len(hidden) == 1  # the collection's answer cache, in the engine
    listed = await sem.retrieval.ListCollections(ret_pb.ListCollectionsRequest(), metadata=ALICE)
    assert [c.name for c in listed.collections] == ["Books"]  # never listed
    await sem.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE
    )
    assert answer_caches(tmp_path) == []
    await create_books(sem, metadata=ALICE)
    made = calls(sem)
    fresh = await asked(sem, ask(Q1), metadata=ALICE)
    assert not fresh.cached and calls(sem) == made + 1


@pytest.mark.parametrize(
    ("collection_cache_ttl", "direct"),
    [(0, False), (60, True)],
    ids=["through-the-gateway", "stale-gateway-catalog"],
)
async def test_an_answer_stored_after_its_collection_was_made_again_never_answers_the_new_one(
    stack_factory: StackFactory, collection_cache_ttl: int, direct: bool
) -> None:
    """An Ask's store is made after its answer, naming the collection; deleted and made
    again under that name meanwhile, with the same objects under the same ids, the new
    collection got the old one's answer and served it (docs: a recreated collection starts
    cold). Held deterministically: the Ask's LLM call waits while the collection is made
    again. Also with the gateway's collection cache stale (``collection_cache_ttl`` 60, the
    delete and create sent to retrieval directly, as another gateway replica would): the
    Ask over the new collection still reads the old one's settings, so nothing the gateway
    computes can tell the two apart; retrieval refuses the store (``gone``)."""
    stack = await stack_factory(
        shared={"api_keys": KEYS}, collection_cache_ttl=collection_cache_ttl
    )
    retrieval = stack.retrieval_direct if direct else stack.retrieval
    ids = await create_books(stack, metadata=ALICE)
    stack.fake.gate = asyncio.Event()
    first = asyncio.ensure_future(stack.stub.Ask(ask(Q1), metadata=ALICE))
    await stack.fake.gate_reached.wait()  # its hits read, its answer being written
    await retrieval.DeleteCollection(ret_pb.DeleteCollectionRequest(name="Books"), metadata=ALICE)
    await retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=books_collection()), metadata=ALICE
    )
    for index, object_id in enumerate(ids):
        await upsert(stack, object_id, index)  # the very objects, under the same ids
    gone, failed = stores("gone"), stores("failed")
    stack.fake.gate.set()
    old = await first
    await stack.ask.idle()  # its store made, into whichever collection has the name now
    assert not old.cached and old.hits
    # Refused by retrieval, counted as what it is: no cache failure.
    assert (stores("gone"), stores("failed")) == (gone + 1, failed)
    made = calls(stack)
    fresh = await asked(stack, ask(Q1), metadata=ALICE)
    assert not fresh.cached and calls(stack) == made + 1
    again = await asked(stack, ask(Q1), metadata=ALICE)  # the new one's own answer serves
    assert again.cached and calls(stack) == made + 1


def lookups(outcome: str) -> float:
    labels = {"cache": "semantic", "outcome": outcome}
    return REGISTRY.get_sample_value("gensearch_gateway_cache_lookups_total", labels) or 0


async def upsert(stack: Stack, object_id: str, index: int, **changes: Any) -> None:
    """Writes BOOKS[index] (with ``changes``) as object ``object_id``, through the gateway."""
    props = struct_pb2.Struct()
    props.update({**BOOKS[index], **changes})
    obj = ret_pb.DataObject(id=object_id, properties=props, vector=vector(index))
    response = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Books", objects=[obj]), metadata=ALICE
    )
    assert not response.errors, response.errors


async def test_a_deleted_hit_is_never_served_from_the_cache(sem: Stack) -> None:
    first = await asked(sem, ask(Q1), metadata=ALICE)
    dune = first.hits[0]
    assert dune.properties["title"] == "Dune"
    await sem.retrieval.DeleteObjects(
        ret_pb.DeleteObjectsRequest(collection="Books", ids=[dune.id]), metadata=ALICE
    )
    made, stale = calls(sem), lookups("stale")
    second = await asked(sem, ask(Q2, 0.5), metadata=CAROL)
    assert not second.cached and calls(sem) == made + 1
    assert dune.id not in [h.id for h in second.hits]
    assert lookups("stale") == stale + 1
    # Without Dune the question matches nothing: an answer with no source is not kept
    # (test_an_ask_that_found_nothing_is_not_stored), so the next one asks again.
    assert not second.hits
    third = await asked(sem, ask(Q2, 0.5), metadata=CAROL)
    assert not third.cached and calls(sem) == made + 2


async def test_an_updated_hit_is_never_served_from_the_cache(sem: Stack) -> None:
    first = await asked(sem, ask(Q1), metadata=ALICE)
    dune = first.hits[0]
    revised = "A desert planet, the spice melange, and a revised ending."
    await upsert(sem, dune.id, 0, body=revised)
    made, stale = calls(sem), lookups("stale")
    second = await asked(sem, ask(Q2, 0.5), metadata=CAROL)
    assert not second.cached and calls(sem) == made + 1
    assert lookups("stale") == stale + 1
    assert second.hits[0].id == dune.id and second.hits[0].properties["body"] == revised
    assert revised in str(sem.fake.chat_requests[-1].json["messages"])  # answered from it
    third = await asked(sem, ask(Q2, 0.5), metadata=CAROL)
    assert third.cached and third.hits[0].properties["body"] == revised


async def test_an_unchanged_hit_still_answers_from_the_cache(sem: Stack) -> None:
    first = await asked(sem, ask(Q1), metadata=ALICE)
    dune = first.hits[0]
    others = [h.id for h in first.hits]
    listed = await sem.retrieval.Search(
        ret_pb.SearchRequest(collection="Books", keyword=ret_pb.Keyword(text="matchmaker")),
        metadata=ALICE,
    )
    emma = listed.hits[0].id
    assert emma not in others
    # Written again as it was, and another object changed: the answer still holds.
    await upsert(sem, dune.id, 0)
    await upsert(sem, emma, 2, body="A matchmaker in a village, revised.")
    made, stale = calls(sem), lookups("stale")
    second = await asked(sem, ask(Q2, 0.5), metadata=CAROL)
    assert second.cached and second.answer == first.answer and calls(sem) == made
    assert list(second.hits) == list(first.hits)
    assert lookups("stale") == stale


async def test_a_changed_chunk_of_a_passage_is_a_change_too(sem: Stack) -> None:
    """With ``expand_context`` the prompt holds a hit's neighbours, not in ``hits``: a
    neighbour rewritten since makes the answer stale as well."""
    ids = await create_docs(sem, ALICE)
    request = zebra_ask(neighbors=1)
    request.semantic_cache.mode = gw_pb.CACHE_MODE_USE
    first = await asked(sem, request, metadata=ALICE)
    assert ids["a1"] not in [h.id for h in first.hits]
    assert ids["a1"] in [c for p in first.passages for c in p.chunk_ids]
    assert (await asked(sem, request, metadata=CAROL)).cached
    props = struct_pb2.Struct()
    props.update({"doc_id": "a", "chunk_index": 1, "text": "Alpha one, rewritten."})
    await sem.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Docs",
            objects=[ret_pb.DataObject(id=ids["a1"], properties=props, vector=vector(1))],
        ),
        metadata=ALICE,
    )
    made = calls(sem)
    again = await asked(sem, request, metadata=CAROL)
    assert not again.cached and calls(sem) == made + 1
    assert "Alpha one, rewritten." in str(sem.fake.chat_requests[-1].json["messages"])
    assert CHUNKS[1][2] not in str(sem.fake.chat_requests[-1].json["messages"])


def request_of(request: gw_pb.AskRequest) -> gw_pb.StreamAskRequest:
    streamed = gw_pb.StreamAskRequest()
    streamed.ParseFromString(request.SerializeToString())
    return streamed


async def test_stream_ask_replays_a_cached_answer(sem: Stack) -> None:
    sem.fake.enqueue(Behaviour.ok(text="Dune is set on a desert planet [1]."))
    first = await asked(sem, ask(Q1), metadata=ALICE)
    made = calls(sem) + 1  # the fresh StreamAsk below
    fresh = [e async for e in sem.stub.StreamAsk(request_of(ask(UNRELATED)), metadata=ALICE)]
    events = [e async for e in sem.stub.StreamAsk(request_of(ask(Q1)), metadata=ALICE)]
    # Its context event says what a fresh one says (rewrite_method was UNSPECIFIED).
    assert fresh[0].context.rewrite_method == first.rewrite_method != 0
    assert events[0].context.rewrite_method == first.rewrite_method
    assert [h.id for h in events[0].context.hits] == [h.id for h in first.hits]
    # As every streamed answer: its citation check between the text and the answer (the
    # probe: a cached one had no citations event, though its answer held citations).
    assert [e.WhichOneof("event") for e in events] == ["context", "delta", "citations", "answer"]
    assert events[1].delta == first.answer
    checked = events[2].citations
    assert list(checked.citations) == list(first.citations) and first.citations
    assert list(checked.sentences) == list(first.sentences) and first.sentences
    assert checked.citation_coverage == first.citation_coverage
    assert events[3].answer.cached and calls(sem) == made


@pytest.mark.parametrize(
    ("cache", "field"),
    [
        (gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE, min_similarity=0.2), "min_similarity"),
        (gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE, min_similarity=1.5), "min_similarity"),
        (gw_pb.SemanticCache(mode=7), "mode"),  # type: ignore[arg-type]
    ],
)
async def test_bad_cache_settings_name_the_field(
    sem: Stack, cache: gw_pb.SemanticCache, field: str
) -> None:
    request = ask(Q1)
    request.semantic_cache.CopyFrom(cache)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asked(sem, request, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == f"semantic_cache.{field}"
    assert calls(sem) == 0


async def test_clients_cannot_reach_the_cache_rpcs_through_the_gateway(sem: Stack) -> None:
    store = ret_pb.StoreCachedAnswerRequest(
        collection="Books", question=Q1, answer=b"poison", context_key="k"
    )
    store.ttl.FromSeconds(60)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sem.retrieval.StoreCachedAnswer(store, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sem.retrieval.LookupCachedAnswer(
            ret_pb.LookupCachedAnswerRequest(collection="Books", question=Q1, min_similarity=0.9),
            metadata=ALICE,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_collection_can_turn_it_on_by_default(sem: Stack) -> None:
    on = ret_pb.GenerativeConfig(
        provider="fake",
        model="fake-model",
        cache=ret_pb.CacheDefaults(semantic=True, min_similarity=0.5),
    )
    await create_books(sem, "Cached", metadata=ALICE, generative=on)
    plain = gw_pb.AskRequest(collection="Cached", llm_question=Q1, context_size=2)
    first = await asked(sem, plain, metadata=ALICE)
    made = calls(sem)
    plain.llm_question = Q2
    second = await asked(sem, plain, metadata=ALICE)
    assert not first.cached and second.cached and calls(sem) == made
    plain.semantic_cache.mode = gw_pb.CACHE_MODE_BYPASS  # the request still decides
    assert not (await asked(sem, plain, metadata=ALICE)).cached
    # Off by default elsewhere: Books has no cache defaults.
    await asked(sem, gw_pb.AskRequest(collection="Books", llm_question=Q1), metadata=ALICE)
    made = calls(sem)
    again = await asked(sem, gw_pb.AskRequest(collection="Books", llm_question=Q1), metadata=ALICE)
    assert not again.cached and calls(sem) == made + 1


async def test_the_context_key_is_computed_once_per_ask(
    sem: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miss that is then stored, and a hit, each digest the request once (a spy around
    the real digest counts; the entry it stores is the one a close question finds)."""
    keys: list[str] = []
    real = ask_cache.context_key

    def counted(*args: Any) -> str:
        keys.append(real(*args))
        return keys[-1]

    monkeypatch.setattr(ask_cache, "context_key", counted)
    first = await asked(sem, ask(Q1), metadata=ALICE)
    assert not first.cached and len(keys) == 1  # looked up, missed, stored: one digest
    second = await asked(sem, ask(Q2, 0.5), metadata=ALICE)
    assert second.cached and len(keys) == 2 and keys[0] == keys[1]
    # Off for this Ask: nothing to digest.
    off = ask(Q1)
    off.semantic_cache.mode = gw_pb.CACHE_MODE_BYPASS
    assert not (await asked(sem, off, metadata=ALICE)).cached
    assert len(keys) == 2


class HeldStores:
    """Holds every semantic cache store before it reaches retrieval until ``release``:
    the real client call, made late."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        # Stores cancelled while still held (a stop's drain timeout ending them).
        self.cancelled_while_held = 0
        self.first_started = asyncio.Event()
        self._open = asyncio.Event()
        real = RetrievalClient.store_cached_answer

        async def held(client: RetrievalClient, *args: Any) -> None:
            self.started += 1
            self.first_started.set()
            try:
                await self._open.wait()
            except asyncio.CancelledError:
                self.cancelled_while_held += 1
                raise
            await real(client, *args)

        monkeypatch.setattr(RetrievalClient, "store_cached_answer", held)

    def release(self) -> None:
        self._open.set()


def stores(outcome: str) -> float:
    labels = {"outcome": outcome}
    return REGISTRY.get_sample_value("gensearch_gateway_semantic_cache_stores_total", labels) or 0


def dropped_stores() -> float:
    return stores("dropped")


async def test_the_answer_does_not_wait_for_its_store(
    sem: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldStores(monkeypatch)
    first = await sem.stub.Ask(ask(Q1), metadata=ALICE, timeout=10)
    assert first.answer and not first.cached  # answered while its store is held
    await asyncio.wait_for(held.first_started.wait(), 10)
    held.release()
    await sem.ask.idle()
    assert (await sem.stub.Ask(ask(Q2, 0.5), metadata=ALICE)).cached


async def test_stores_beyond_the_queue_are_dropped(
    stack_factory: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory(
        shared={"api_keys": KEYS},
        semantic_cache_store_queue=1,
        semantic_cache_store_workers=1,
        semantic_cache_store_drain_timeout=0.2,
    )
    await create_books(stack, metadata=ALICE)
    held = HeldStores(monkeypatch)
    dropped = dropped_stores()
    await stack.stub.Ask(ask(Q1), metadata=ALICE)
    await asyncio.wait_for(held.first_started.wait(), 10)  # the worker holds it
    await stack.stub.Ask(ask(OTHER), metadata=ALICE)  # waits in the queue
    third = await stack.stub.Ask(ask("Who wrote Dune?"), metadata=ALICE)
    assert third.answer  # answered all the same; its store was dropped
    assert dropped_stores() == dropped + 1
    held.release()
    await stack.ask.idle()
    assert held.started == 2
    made = calls(stack)
    assert (await stack.stub.Ask(ask(Q2, 0.5), metadata=ALICE)).cached
    assert (await stack.stub.Ask(ask(OTHER), metadata=ALICE)).cached
    assert calls(stack) == made


@pytest.mark.parametrize(("drain", "released_after", "landed"), [(0.2, None, 0), (3.0, 0.2, 1)])
async def test_shutdown_waits_for_a_queued_store_up_to_its_drain_timeout(
    stack_factory: StackFactory,
    monkeypatch: pytest.MonkeyPatch,
    drain: float,
    released_after: float | None,
    landed: int,
) -> None:
    """A store still held when the drain timeout ends is cancelled (stopping takes no
    longer); one that ends within it lands (stopping did wait)."""
    stack = await stack_factory(shared={"api_keys": KEYS}, semantic_cache_store_drain_timeout=drain)
    await create_books(stack, metadata=ALICE)
    held = HeldStores(monkeypatch)
    stored = stores("stored")
    await stack.stub.Ask(ask(Q1), metadata=ALICE)
    await asyncio.wait_for(held.first_started.wait(), 10)
    loop = asyncio.get_running_loop()
    if released_after is not None:
        loop.call_later(released_after, held.release)
    # The outcome, not the stop's wall-clock time (which a loaded machine stretches): a
    # store never released ends the stop only through the drain timeout's cancel; one
    # released within the drain lands, uncancelled.
    await asyncio.wait_for(stack.gateway.stop(0), 10)
    assert held.cancelled_while_held == 1 - landed
    assert stores("stored") == stored + landed


async def test_the_ask_span_says_whether_the_cache_answered(
    sem: Stack, spans: InMemorySpanExporter
) -> None:
    first = await asked(sem, ask(Q1), metadata=ALICE)
    second = await asked(sem, ask(Q1), metadata=ALICE)
    assert (first.cached, second.cached) == (False, True)
    asks = [
        dict(s.attributes or {})
        for s in spans.get_finished_spans()
        if s.name == "/gensearch.gateway.v1.GatewayService/Ask" and s.kind == SpanKind.SERVER
    ]
    assert [a.get("gensearch.cache.hit") for a in asks] == [False, True]
    # Without the cache consulted, the span says nothing of it.
    await asked(sem, gw_pb.AskRequest(collection="Books", llm_question=Q1), metadata=ALICE)
    last = [s for s in spans.get_finished_spans() if s.name.endswith("/Ask")][-1]
    assert "gensearch.cache.hit" not in (last.attributes or {})


async def test_a_question_too_long_for_the_cache_is_no_cache_failure(
    sem: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Any caller could ask a question longer than the cache holds (the gateway takes
    32,768 characters, retrieval's cache 8,000): its lookup and store were refused by
    retrieval, and each such Ask logged two WARNINGs and counted a lookup error and a
    failed store, the signs of a broken cache an operator alerts on. Such a question is
    asked uncached, with no cache call."""
    long_question = Q1 + " " + "really " * 1200  # past 8,000 characters
    errors, failed = lookups("error"), stores("failed")
    with caplog.at_level("WARNING", logger="gensearch.gateway"):
        first = await asked(sem, ask(long_question), metadata=ALICE)
        second = await asked(sem, ask(long_question), metadata=ALICE)
    assert first.answer and not first.cached and not second.cached
    assert calls(sem) == 2  # both generated: never cached
    assert lookups("error") == errors and stores("failed") == failed
    assert not [r for r in caplog.records if "semantic cache" in r.getMessage()]
    # A question the cache holds is still cached.
    await asked(sem, ask(Q1), metadata=ALICE)
    assert (await asked(sem, ask(Q1), metadata=ALICE)).cached


async def test_an_answer_too_large_for_the_cache_is_not_sent_to_retrieval(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer's object of 1.2 MB, shown as a hit (the prompt reads only its title): the
    answer with its hits is more than the cache keeps (MAX_CACHED_ANSWER_BYTES, 1 MiB,
    the gateway's SEMANTIC_CACHE_MAX_ANSWER_BYTES as retrieval's). The gateway does not
    store it: no StoreCachedAnswer reaches retrieval, counted ``too_large`` and said once
    at INFO (not the question), and the answer is returned as before. Before, the 1.2 MB
    entry was sent to retrieval only to be refused there (``refused``)."""
    stack = await stack_factory(shared={"api_keys": KEYS})
    big = {"title": "Dune", "body": "desert " * 180_000, "year": 1965, "tags": ["sf"]}
    await create_books(stack, books=[big], metadata=ALICE)
    failed, refused, too_large = stores("failed"), stores("refused"), stores("too_large")
    sent = retrieval_calls("StoreCachedAnswer")
    question = ask(Q1, context_field_list=["title"])
    with caplog.at_level("INFO", logger="gensearch.gateway"):
        answered = await asked(stack, question, metadata=ALICE)
    assert answered.answer and len(answered.hits[0].properties["body"]) > 10**6
    assert retrieval_calls("StoreCachedAnswer") == sent  # nothing sent to be refused
    assert stores("too_large") == too_large + 1
    assert (stores("failed"), stores("refused")) == (failed, refused)
    said = [r for r in caplog.records if "semantic cache store" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"]
    assert Q1 not in said[0].getMessage() and Q1 not in str(said[0].__dict__)
    assert said[0].setting == "GENSEARCH_GATEWAY_SEMANTIC_CACHE_MAX_ANSWER_BYTES"  # type: ignore[attr-defined]
    assert not (await asked(stack, question, metadata=ALICE)).cached  # nothing was kept


async def test_an_entry_larger_than_retrieval_takes_a_request_is_refused_not_failed(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The same writer's large object, past retrieval's MAX_REQUEST_BYTES (4 MiB) this time,
    asked by a client that takes replies that large: the store request is refused by
    retrieval's request bound (RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE) before its answer's
    own bound is read. The entry's size all the same: counted ``refused`` at INFO. Before,
    ``failed`` with a WARNING on every such Ask. (The gateway's own bound, set past
    retrieval's here, would not send it: the two set apart, retrieval's refusal is still
    the entry's size.)"""
    stack = await stack_factory(
        shared={"api_keys": KEYS}, semantic_cache_max_answer_bytes=64 * 1024 * 1024
    )
    big = {"title": "Dune", "body": "desert " * 700_000, "year": 1965, "tags": ["sf"]}
    await create_books(stack, books=[big], metadata=ALICE)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{stack.gateway.port}",
        options=[*OWN_CONNECTIONS, ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    stack.channels.append(channel)
    large_replies = gw_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
    failed, refused = stores("failed"), stores("refused")
    with caplog.at_level("INFO", logger="gensearch.gateway"):
        answered = await large_replies.Ask(ask(Q1, context_field_list=["title"]), metadata=ALICE)
        await stack.ask.idle()
    assert answered.answer and len(answered.hits[0].properties["body"]) > 4 * 1024 * 1024
    assert stores("failed") == failed and stores("refused") == refused + 1
    said = [r for r in caplog.records if "semantic cache store" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"]
