"""Reranking before generation and chunk-aware context, through the gateway (Ask and
GenerativeSearch, unary and streaming), with the loopback fake as LLM and as reranker."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from services.gateway.chunks import join_overlapping, merge
from services.gateway.prompting import estimate_tokens
from tests.gateway.conftest import (
    ALICE,
    DIM,
    Stack,
    StackFactory,
    create_books,
    retrieval_calls,
    vector,
)
from tests.support.rpc import error_info


def prefer(document: str) -> float:
    """The fake reranker's taste: Emma first, Neuromancer second, the rest nowhere."""
    if "matchmaker" in document:
        return 0.9
    if "hacker" in document:
        return 0.5
    return 0.01


def titles(hits: Any) -> list[str]:
    return [h.properties["title"] for h in hits]


async def expect(call: Any, code: grpc.StatusCode, field: str) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, err.details()
        info = error_info(err)
        assert info.metadata["field"] == field, err.details()
        assert info.domain == "gensearch"
        return err
    raise AssertionError("the call succeeded")


# -- rerank ------------------------------------------------------------------------------


def ask(stack: Stack, **fields: Any) -> gw_pb.AskRequest:
    return gw_pb.AskRequest(
        collection="Books",
        llm_question="a story about people",
        near_vector=ret_pb.NearVector(vector=vector(0)),
        context_size=2,
        rerank=ret_pb.Rerank(base_url=stack.fake.base_url, candidates=5),
        **fields,
    )


async def test_ask_keeps_the_top_context_size_after_rerank_with_both_scores(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.rerank_score = lambda query, document: prefer(document)
    stack.fake.reply = "It is Emma [1]."
    plain = await stack.retrieval.Search(
        ret_pb.SearchRequest(
            collection="Books", near_vector=ret_pb.NearVector(vector=vector(0)), limit=5
        ),
        metadata=ALICE,
    )
    assert titles(plain.hits)[:2] != ["Emma", "Neuromancer"]
    response = await stack.stub.Ask(ask(stack), metadata=ALICE)
    assert titles(response.hits) == ["Emma", "Neuromancer"]
    assert [round(h.rerank_score, 2) for h in response.hits] == [0.9, 0.5]
    scores = {h.id: h.score for h in plain.hits}
    assert [h.score for h in response.hits] == [pytest.approx(scores[h.id]) for h in response.hits]
    assert response.citations[0].id == response.hits[0].id
    [sent] = stack.fake.rerank_requests
    assert sent.json["query"] == "a story about people"  # the question, for near_vector
    assert len(sent.json["documents"]) == 5 and sent.json["top_n"] == 2
    prompt = stack.fake.chat_requests[-1].json["messages"][-1]["content"]
    assert prompt.index("Emma") < prompt.index("Neuromancer")
    assert "Dune" not in prompt


async def test_stream_ask_sends_the_reranked_hits_first(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.rerank_score = lambda query, document: prefer(document)
    request = gw_pb.StreamAskRequest()
    request.ParseFromString(ask(stack).SerializeToString())
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    assert titles(events[0].context.hits) == ["Emma", "Neuromancer"]
    assert events[0].context.hits[0].HasField("rerank_score")
    assert titles(events[-1].answer.hits) == ["Emma", "Neuromancer"]


def generative(stack: Stack, cls: Any = gw_pb.GenerativeSearchRequest, **fields: Any) -> Any:
    return cls(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=vector(0)),
        limit=2,
        rerank=ret_pb.Rerank(base_url=stack.fake.base_url, query="people", candidates=5),
        generate=gw_pb.Generate(single_prompt="Summarise {title}", grouped_task="Compare"),
        **fields,
    )


async def test_generative_search_keeps_the_top_limit_after_rerank(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.rerank_score = lambda query, document: prefer(document)
    response = await stack.stub.GenerativeSearch(generative(stack), metadata=ALICE)
    assert titles(h.hit for h in response.hits) == ["Emma", "Neuromancer"]
    assert all(h.hit.HasField("rerank_score") and h.hit.score for h in response.hits)
    assert response.hits[0].generation.result
    events = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            generative(stack, gw_pb.StreamGenerativeSearchRequest), metadata=ALICE
        )
    ]
    assert titles(events[0].hits.hits) == ["Emma", "Neuromancer"]
    assert events[0].hits.hits[1].rerank_score == pytest.approx(0.5)


@pytest.mark.parametrize("spelling", ["http://127.0.0.1.:{port}/v1", "HTTP://127.0.0.1:{port}/v1/"])
async def test_a_rerank_base_url_is_called_as_the_allowlist_read_it(
    stack: Stack, spelling: str
) -> None:
    """An address with a trailing dot passed the allowlist (read without it) and was then
    sent as written, which the HTTP client could not connect to: the search failed
    UNAVAILABLE / RERANK_UNAVAILABLE naming no field. Now the URL called is the one
    checked, and the rerank runs."""
    await create_books(stack)
    stack.fake.rerank_score = lambda query, document: prefer(document)
    request = generative(stack)
    request.rerank.base_url = spelling.format(port=stack.fake.port)
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE, timeout=30)
    assert titles(h.hit for h in response.hits) == ["Emma", "Neuromancer"]
    assert len(stack.fake.rerank_requests) == 1


async def create_ranked(stack: Stack) -> None:
    """ "Ranked": the books, in a collection that reranks by default (the fake's taste)."""
    await create_books(stack, "Books")
    collection = (
        await stack.retrieval.GetCollection(
            ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE
        )
    ).collection
    collection.name = "Ranked"
    collection.rerank.CopyFrom(ret_pb.Rerank(base_url=stack.fake.base_url, candidates=5))
    collection.ClearField("create_time")
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
    )
    await create_books_into(stack, "Ranked")
    stack.fake.rerank_score = lambda query, document: prefer(document)


async def test_a_collections_default_rerank_applies(stack: Stack) -> None:
    await create_ranked(stack)
    request = ask(stack)
    request.ClearField("rerank")
    request.collection = "Ranked"
    response = await stack.stub.Ask(request, metadata=ALICE)
    assert titles(response.hits) == ["Emma", "Neuromancer"]
    assert len(stack.fake.rerank_requests) == 1
    searched = generative(stack)
    searched.collection = "Ranked"
    searched.ClearField("rerank")
    searched.hybrid.CopyFrom(ret_pb.Hybrid(text="a future village", vector=vector(0)))
    found = await stack.stub.GenerativeSearch(searched, metadata=ALICE)
    assert titles(h.hit for h in found.hits) == ["Emma", "Neuromancer"]
    assert len(stack.fake.rerank_requests) == 2
    # A near_vector search has no text to rank against: the default stays out of it.
    searched.near_vector.CopyFrom(ret_pb.NearVector(vector=vector(0)))
    unranked = await stack.stub.GenerativeSearch(searched, metadata=ALICE)
    assert not unranked.hits[0].hit.HasField("rerank_score")


async def test_a_collections_default_candidates_grow_with_the_page(stack: Stack) -> None:
    """The collection's candidates (5) are a default: an Ask for 7 hits of context, or a
    GenerativeSearch for 7 hits, reranks 7 candidates. It was INVALID_ARGUMENT naming
    rerank.candidates, a field neither request had."""
    await create_ranked(stack)
    request = ask(
        stack,
    )
    request.ClearField("rerank")
    request.collection = "Ranked"
    request.context_size = 7
    response = await stack.stub.Ask(request, metadata=ALICE)
    assert titles(response.hits)[:2] == ["Emma", "Neuromancer"]
    assert len(stack.fake.rerank_requests[-1].json["documents"]) >= 5
    searched = generative(stack)
    searched.collection = "Ranked"
    searched.ClearField("rerank")
    searched.hybrid.CopyFrom(ret_pb.Hybrid(text="a future village", vector=vector(0)))
    searched.limit = 7
    found = await stack.stub.GenerativeSearch(searched, metadata=ALICE)
    assert titles(h.hit for h in found.hits)[:2] == ["Emma", "Neuromancer"]


@pytest.mark.parametrize(
    "cls", [gw_pb.GenerativeSearchRequest, gw_pb.StreamGenerativeSearchRequest]
)
async def test_a_collections_default_rerank_costs_one_search(stack: Stack, cls: Any) -> None:
    """The default is applied by retrieval in the one search the gateway makes beside its
    GetCollection (counted where the searches arrive: retrieval's own server), reranked
    exactly as before; a request's own block and a near_vector search, one search too."""
    await create_ranked(stack)
    searched = generative(stack, cls)
    searched.collection = "Ranked"
    searched.ClearField("rerank")
    searched.hybrid.CopyFrom(ret_pb.Hybrid(text="a future village", vector=vector(0)))

    async def hits(request: Any) -> list[Any]:
        before = retrieval_calls("Search")
        if cls is gw_pb.GenerativeSearchRequest:
            found = [
                h.hit for h in (await stack.stub.GenerativeSearch(request, metadata=ALICE)).hits
            ]
        else:
            events = [e async for e in stack.stub.StreamGenerativeSearch(request, metadata=ALICE)]
            found = list(events[0].hits.hits)
        assert retrieval_calls("Search") == before + 1
        return found

    ranked = await hits(searched)
    assert titles(ranked) == ["Emma", "Neuromancer"]
    assert [round(h.rerank_score, 2) for h in ranked] == [0.9, 0.5]
    [sent] = stack.fake.rerank_requests
    assert sent.json["query"] == "a future village"  # the search's own text
    assert len(sent.json["documents"]) == 5  # the default's candidates
    own = generative(stack, cls)
    own.collection = "Ranked"
    assert titles(await hits(own)) == ["Emma", "Neuromancer"]
    assert stack.fake.rerank_requests[-1].json["query"] == "people"  # the request's block
    searched.near_vector.CopyFrom(ret_pb.NearVector(vector=vector(0)))
    assert not (await hits(searched))[0].HasField("rerank_score")
    assert len(stack.fake.rerank_requests) == 2


async def create_books_into(stack: Stack, name: str) -> None:
    from tests.gateway.conftest import BOOKS

    objects = []
    for i, book in enumerate(BOOKS):
        props = struct_pb2.Struct()
        props.update(book)
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection=name, objects=objects), metadata=ALICE
    )


async def test_bad_rerank_and_expansion_blocks_name_their_field(stack: Stack) -> None:
    await create_books(stack)
    bad_provider = ask(stack)
    bad_provider.rerank.CopyFrom(ret_pb.Rerank(provider="nope"))
    await expect(
        stack.stub.Ask(bad_provider, metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rerank.provider",
    )
    few = generative(stack)
    few.rerank.candidates = 1
    await expect(
        stack.stub.GenerativeSearch(few, metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rerank.candidates",
    )
    elsewhere = ask(stack)
    elsewhere.rerank.base_url = "https://rerank.example.com/v1"
    await expect(
        stack.stub.Ask(elsewhere, metadata=ALICE),
        grpc.StatusCode.PERMISSION_DENIED,
        "rerank.base_url",
    )
    too_wide = ask(stack, expand_context=gw_pb.ContextExpansion(neighbors=10_000))
    err = await expect(
        stack.stub.Ask(too_wide, metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expand_context.neighbors",
    )
    # The bound and its setting (the refusal gave the field alone).
    assert error_info(err).metadata["max"] == "10"
    assert error_info(err).metadata["setting"] == "GENSEARCH_GATEWAY_MAX_EXPANSION_NEIGHBORS"
    too_long = ask(stack, expand_context=gw_pb.ContextExpansion(neighbors=1, max_tokens=10**6))
    err = await expect(
        stack.stub.Ask(too_long, metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expand_context.max_tokens",
    )
    assert error_info(err).metadata["setting"] == "GENSEARCH_GATEWAY_MAX_EXPANSION_TOKENS"
    unchunked = ask(stack, expand_context=gw_pb.ContextExpansion(neighbors=1))
    err = await expect(
        stack.stub.Ask(unchunked, metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "expand_context",
    )
    assert error_info(err).reason == "NO_CHUNKING"
    assert stack.fake.chat_requests == []  # nothing was generated for a bad request


# -- chunk-aware context -----------------------------------------------------------------

# Two documents in chunks; "zebra" is in a2, a3 and b1 only.
CHUNKS = [
    ("a", 0, "Alpha zero opens the story."),
    ("a", 1, "Alpha one sets the scene."),
    ("a", 2, "Alpha two has a zebra."),
    ("a", 3, "Alpha three has another zebra."),
    ("a", 4, "Alpha four goes on."),
    ("a", 5, "Alpha five ends it."),
    ("b", 0, "Beta zero begins."),
    ("b", 1, "Beta one sees a zebra."),
    ("b", 2, "Beta two walks."),
    ("b", 3, "Beta three stops."),
]


async def create_docs(
    stack: Stack, metadata: tuple[tuple[str, str], ...] = ALICE
) -> dict[str, str]:
    """Returns ids by "a2"-style names."""
    collection = ret_pb.Collection(
        name="Docs",
        properties=[
            ret_pb.Property(name="doc_id", data_type=ret_pb.DATA_TYPE_TEXT),
            ret_pb.Property(name="chunk_index", data_type=ret_pb.DATA_TYPE_INT),
            ret_pb.Property(name="text", data_type=ret_pb.DATA_TYPE_TEXT),
        ],
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
        chunking=ret_pb.Chunking(document_property="doc_id", order_property="chunk_index"),
        generative=ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
    )
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=metadata
    )
    objects = []
    for i, (doc, index, text) in enumerate(CHUNKS):
        props = struct_pb2.Struct()
        props.update({"doc_id": doc, "chunk_index": index, "text": text})
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    response = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Docs", objects=objects), metadata=metadata
    )
    return {f"{d}{i}": oid for (d, i, _), oid in zip(CHUNKS, response.ids, strict=True)}


def zebra_ask(**expansion: Any) -> gw_pb.AskRequest:
    return gw_pb.AskRequest(
        collection="Docs",
        llm_question="zebra",
        keyword=ret_pb.Keyword(text="zebra"),
        context_size=3,
        context_field_list=["text"],
        expand_context=gw_pb.ContextExpansion(**expansion),
    )


@pytest.mark.parametrize(
    "expansion",
    [
        {"max_tokens": -1},
        {"max_tokens": 0},
        {"neighbors": 1, "max_tokens": -1},
        {"whole_document": True, "max_tokens": -1},
    ],
)
async def test_an_expansion_budget_out_of_range_names_max_tokens(
    stack: Stack, expansion: dict[str, Any]
) -> None:
    """Before, ``{max_tokens: -1}`` alone was refused as a missing ``neighbors``: the field
    a value was wrong in is named before what the block lacks."""
    await create_docs(stack)
    search = gw_pb.GenerativeSearchRequest(
        collection="Docs",
        keyword=ret_pb.Keyword(text="zebra"),
        expand_context=gw_pb.ContextExpansion(**expansion),
        generate=gw_pb.Generate(grouped_task="Summarise"),
    )
    for call in (
        stack.stub.Ask(zebra_ask(**expansion), metadata=ALICE),
        stack.stub.GenerativeSearch(search, metadata=ALICE),
    ):
        err = await expect(call, grpc.StatusCode.INVALID_ARGUMENT, "expand_context.max_tokens")
        assert error_info(err).reason == "OUT_OF_RANGE"
        assert "max_tokens" in (err.details() or "") and "neighbors" not in (err.details() or "")
    assert stack.fake.chat_requests == []


async def test_ask_merges_overlapping_neighbourhoods_in_document_order(stack: Stack) -> None:
    ids = await create_docs(stack)
    stack.fake.reply = "Zebras appear in [1] and [2]."
    response = await stack.stub.Ask(zebra_ask(neighbors=1), metadata=ALICE)
    assert {h.id for h in response.hits} == {ids["a2"], ids["a3"], ids["b1"]}
    by_doc = {p.document.string_value: p for p in response.passages}
    a, b = by_doc["a"], by_doc["b"]
    # a2 and a3 widened by one chunk each: one passage a1..a4, in document order.
    assert (a.first, a.last) == (1, 4)
    assert list(a.chunk_ids) == [ids[f"a{i}"] for i in (1, 2, 3, 4)]
    assert set(a.hit_ids) == {ids["a2"], ids["a3"]}
    assert (b.first, b.last) == (0, 2) and list(b.hit_ids) == [ids["b1"]]
    # Passages are numbered by their best hit's rank; citations point at their hits.
    assert [p.number for p in response.passages] == [1, 2]
    first = response.passages[0]
    assert response.citations[0].number == 1
    assert response.citations[0].id == first.hit_ids[0]
    assert list(response.citations[0].hit_ids) == list(first.hit_ids)
    prompt = stack.fake.chat_requests[-1].json["messages"][-1]["content"]
    block = prompt[prompt.index("Alpha one") : prompt.index("Alpha four goes on.")]
    assert block.index("Alpha two") < block.index("Alpha three")
    assert "Alpha zero" not in prompt and "Alpha five" not in prompt
    assert prompt.count("[1]") == 1 and "[3]" not in prompt


async def test_positions_at_the_safe_integers_edge_make_their_window(stack: Stack) -> None:
    """Positions are int properties: past 2^53 - 1 they are refused when stored (a Struct's
    double cannot carry them exactly), so no hit is placed where GetChunks refuses bounds;
    a hit at the last safe integer still gets its window, cut where positions end."""
    await create_docs(stack)
    edge = 2**53 - 1  # the largest position an int property holds
    placed = [("c", edge - 1, "Gamma before the edge."), ("c", edge, "Gamma giraffe edge.")]
    placed.append(("d", 2**63 - 1024, "Delta giraffe far away."))
    objects = []
    for i, (doc, index, text) in enumerate(placed):
        props = struct_pb2.Struct()
        props.update({"doc_id": doc, "chunk_index": index, "text": text})
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    stored = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Docs", objects=objects), metadata=ALICE
    )
    assert [(e.index, e.field) for e in stored.errors] == [(2, "properties.chunk_index")]
    ids = stored.ids
    request = zebra_ask(neighbors=1)
    request.keyword.text = request.llm_question = "giraffe"
    response = await stack.stub.Ask(request, metadata=ALICE)
    by_hit = {p.hit_ids[0]: p for p in response.passages}
    assert list(by_hit[ids[1]].chunk_ids) == [ids[0], ids[1]]
    assert (by_hit[ids[1]].first, by_hit[ids[1]].last) == (edge - 1, edge)


async def test_the_token_budget_keeps_the_hits_and_drops_the_farthest_chunks(
    stack: Stack,
) -> None:
    ids = await create_docs(stack)
    response = await stack.stub.Ask(zebra_ask(neighbors=3, max_tokens=1), metadata=ALICE)
    chunks = {c for p in response.passages for c in p.chunk_ids}
    assert chunks == {ids["a2"], ids["a3"], ids["b1"]}  # only the hits themselves
    # Room for the hits and their nearest neighbours, not for the chunks two away.
    text = {f"{d}{i}": t for d, i, t in CHUNKS}
    near = ["a2", "a3", "b1", "a1", "a4", "b0", "b2"]
    budget = sum(estimate_tokens(text[name]) for name in near)
    roomy = await stack.stub.Ask(zebra_ask(neighbors=3, max_tokens=budget), metadata=ALICE)
    kept = {c for p in roomy.passages for c in p.chunk_ids}
    assert kept == {ids[name] for name in near}


async def test_whole_document_and_streaming(stack: Stack) -> None:
    ids = await create_docs(stack)
    # GetChunks is forwarded like the rest of RetrievalService, as the caller.
    forwarded = await stack.retrieval.GetChunks(
        ret_pb.GetChunksRequest(
            collection="Docs",
            ranges=[ret_pb.ChunkRange(document=struct_pb2.Value(string_value="b"), first=2)],
        ),
        metadata=ALICE,
    )
    assert [c.id for c in forwarded.ranges[0].chunks] == [ids["b2"], ids["b3"]]
    request = gw_pb.StreamAskRequest()
    request.ParseFromString(zebra_ask(whole_document=True).SerializeToString())
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    answer = events[-1].answer
    by_doc = {p.document.string_value: p for p in answer.passages}
    assert list(by_doc["b"].chunk_ids) == [ids[f"b{i}"] for i in range(4)]
    assert list(by_doc["a"].chunk_ids) == [ids[f"a{i}"] for i in range(6)]


async def test_a_chunk_stored_without_a_position_stays_out_of_its_whole_document(
    stack: Stack,
) -> None:
    """The order property is not required when a chunk is stored, and a whole document's
    GetChunks range has no bounds, so it brings such a chunk too: it has no place in the
    document's order. Before, its infinite position ended the passage (``last``) and the
    Ask or GenerativeSearch failed INTERNAL."""
    ids = await create_docs(stack)
    unplaced = struct_pb2.Struct()
    unplaced.update({"doc_id": "a", "text": "Alpha note without a place."})
    stored = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Docs", objects=[ret_pb.DataObject(properties=unplaced, vector=vector(3))]
        ),
        metadata=ALICE,
    )
    assert not stored.errors
    whole = gw_pb.ContextExpansion(whole_document=True)
    search = gw_pb.GenerativeSearchRequest(
        collection="Docs",
        keyword=ret_pb.Keyword(text="zebra"),
        limit=3,
        expand_context=whole,
        generate=gw_pb.Generate(grouped_task="Summarise"),
    )
    answered = await stack.stub.Ask(zebra_ask(whole_document=True), metadata=ALICE)
    searched = await stack.stub.GenerativeSearch(search, metadata=ALICE)
    for passages in (answered.passages, searched.passages):
        by_doc = {p.document.string_value: p for p in passages}
        assert list(by_doc["a"].chunk_ids) == [ids[f"a{i}"] for i in range(6)]
        assert (by_doc["a"].first, by_doc["a"].last) == (0, 5)
    for request in stack.fake.chat_requests:
        assert "without a place" not in request.json["messages"][-1]["content"]


async def test_generative_search_groups_over_passages(stack: Stack) -> None:
    ids = await create_docs(stack)
    fields: dict[str, Any] = {
        "collection": "Docs",
        "keyword": ret_pb.Keyword(text="zebra"),
        "limit": 3,
        "return_properties": ["text"],
        "expand_context": gw_pb.ContextExpansion(neighbors=1),
        "generate": gw_pb.Generate(single_prompt="Explain: {text}", grouped_task="Summarise"),
    }
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(**fields), metadata=ALICE
    )
    assert len(response.hits) == 3 and len(response.passages) == 2
    assert set(response.hits[0].hit.properties.keys()) == {"text"}  # as the caller asked
    grouped = [r.json["messages"][-1]["content"] for r in stack.fake.chat_requests]
    task = next(p for p in grouped if p.startswith("Summarise"))
    assert "Alpha one sets the scene." in task and "[3]" not in task
    # A hit's own prompt sees its passage.
    b1 = next(h for h in response.hits if h.hit.id == ids["b1"])
    assert "Beta zero begins." in b1.generation.result
    events = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            gw_pb.StreamGenerativeSearchRequest(**fields), metadata=ALICE
        )
    ]
    assert len(events[0].hits.passages) == 2


def test_merge_joins_texts_without_their_overlap() -> None:
    assert join_overlapping("one two three four", "three four five six") == (
        "one two three four five six"
    )
    assert join_overlapping("no shared words", "at all here") == "no shared words\nat all here"
    merged = merge(
        [
            {"doc_id": "a", "chunk_index": 1, "text": "the quick brown fox"},
            {"doc_id": "a", "chunk_index": 2, "text": "quick brown fox jumps"},
        ]
    )
    assert merged == {"doc_id": "a", "chunk_index": 1, "text": "the quick brown fox jumps"}


async def test_a_collections_default_rerank_url_gets_a_callers_key_only_when_named(
    stack: Stack,
) -> None:
    """The default rerank URL is the collection admin's choice: through the gateway (which
    copies the default into its search, or asks retrieval to apply it), a caller's
    x-rerank-api-key goes there only with x-rerank-base-url naming it."""
    await create_ranked(stack)
    request = ask(stack)
    request.ClearField("rerank")
    request.collection = "Ranked"
    with_key = (*ALICE, ("x-rerank-api-key", "sk-alice-rerank-0123456789"))
    searched = generative(stack)
    searched.collection = "Ranked"
    searched.ClearField("rerank")
    searched.hybrid.CopyFrom(ret_pb.Hybrid(text="a future village", vector=vector(0)))
    for call in (
        stack.stub.Ask(request, metadata=with_key),
        stack.stub.GenerativeSearch(searched, metadata=with_key),
    ):
        err = await expect(call, grpc.StatusCode.PERMISSION_DENIED, "x-rerank-base-url")
        assert error_info(err).reason == "KEY_DESTINATION_UNCONFIRMED"
    assert stack.fake.rerank_requests == []
    confirmed = (*with_key, ("x-rerank-base-url", stack.fake.base_url))
    response = await stack.stub.Ask(request, metadata=confirmed)
    assert titles(response.hits) == ["Emma", "Neuromancer"]
    [sent] = stack.fake.rerank_requests
    assert sent.headers["Authorization"] == "Bearer sk-alice-rerank-0123456789"


async def test_a_long_question_is_searched_and_reranked_by_its_beginning(
    stack_factory: StackFactory,
) -> None:
    """GENSEARCH_GATEWAY_ASK_SEARCH_TEXT_CHARS of an Ask's question are what it searches
    and reranks with. Before, the search text was cut to a fixed 16 384 characters but a
    collection's default rerank got the whole question as its query: a question longer
    than retrieval takes was INVALID_ARGUMENT naming rerank.query, never sent."""
    stack = await stack_factory(ask_search_text_chars=40)
    await create_ranked(stack)
    question = "a story about people " + "x" * 16_400
    response = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Ranked",
            llm_question=question,
            near_vector=ret_pb.NearVector(vector=vector(0)),
            context_size=2,
        ),
        metadata=ALICE,
    )
    assert response.answer
    assert stack.fake.rerank_requests[-1].json["query"] == question[:40]
