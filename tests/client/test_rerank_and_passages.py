"""Reranking and chunk-aware context through the Python client, against the real stack: a
collection's default ``rerank`` (set on create, shown by ``config()``), a hit's
``rerank_score``, and the ``passages`` of an Ask, a generative search and its stream's
``HitsEvent``. The client dropped all of them (only ``raw`` had them), and a ``Rerank`` or
``ContextExpansion`` dataclass could not be sent as a request's ``rerank=`` /
``expand_context=``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gensearch.client import AsyncGensearch, Gensearch, types

from tests.cli.conftest import RunningStack

BOOKS = [
    {"title": "Dune", "body": "A desert planet of spice and sandworms."},
    {"title": "Emma", "body": "A young matchmaker in an English village."},
    {"title": "Neuromancer", "body": "A washed-up hacker hired for one last job."},
    {"title": "Solaris", "body": "A living ocean on a distant planet."},
    {"title": "Arrakis", "body": "Sand, spice and the desert planet again."},
]

CHUNKS = [
    ("a", 0, "Alpha zero opens the story."),
    ("a", 1, "Alpha one sets the scene."),
    ("a", 2, "Alpha two has a zebra."),
    ("a", 3, "Alpha three goes on."),
    ("b", 0, "Beta zero begins."),
    ("b", 1, "Beta one has a zebra too."),
    ("b", 2, "Beta two stops."),
]


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def test_a_collections_rerank_default_and_chunking_round_trip(
    client: AsyncGensearch,
) -> None:
    name = f"Ranked_{uuid.uuid4().hex[:8]}"
    rerank = types.Rerank(provider="mmr", candidates=7, properties=["body"], mmr_lambda=0.6)
    chunking = types.Chunking(document_property="doc", order_property="position")
    books = await client.collections.create(
        name,
        {"doc": "text", "position": "int", "body": "text"},
        rerank=rerank,
        chunking=chunking,
    )
    try:
        assert books.schema is not None and books.schema.rerank == rerank
        config = await books.config()
        assert config.rerank == rerank
        assert config.chunking == chunking
        listed = {c.name: c for c in await client.collections.list()}
        assert listed[name].rerank == rerank
    finally:
        await client.collections.delete(name)


async def test_reranked_hits_carry_their_rerank_score(client: AsyncGensearch) -> None:
    name = f"Books_{uuid.uuid4().hex[:8]}"
    books = await client.collections.create(name, {"title": "text", "body": "text"})
    try:
        await books.data.import_(BOOKS)
        plain = await books.query.near_text("desert planet", limit=3)
        assert all(h.rerank_score is None for h in plain)
        ranked = await books.query.near_text(
            "desert planet", limit=3, rerank=types.Rerank(candidates=5)
        )
        assert len(ranked) == 3 and all(h.rerank_score is not None for h in ranked)
        scores = [h.rerank_score for h in ranked]
        assert scores == sorted(scores, reverse=True)  # hits in the reranker's order

        answer = await books.ask(
            "Which book is set on a desert planet?",
            context_size=2,
            rerank=types.Rerank(provider="mmr", candidates=5),
        )
        assert len(answer.hits) == 2 and all(h.rerank_score is not None for h in answer.hits)

        found = await books.generate.near_text(
            "desert planet", limit=2, single_prompt="Teaser: {title}", rerank={"candidates": 5}
        )
        assert all(h.hit.rerank_score is not None for h in found.hits)
    finally:
        await client.collections.delete(name)


async def test_a_collections_default_rerank_scores_its_asks(
    running_stack: RunningStack, client: AsyncGensearch
) -> None:
    name = f"Ranked_{uuid.uuid4().hex[:8]}"
    books = await client.collections.create(
        name, {"title": "text", "body": "text"}, rerank=types.Rerank(candidates=5)
    )
    try:
        await books.data.import_(BOOKS)
        answer = await books.ask("Which book is set on a desert planet?", context_size=2)
        assert answer.hits and all(h.rerank_score is not None for h in answer.hits)
        # The blocking client: the same dataclasses, the same fields.
        with Gensearch(running_stack.address, timeout=60) as blocking:
            again = blocking.collections.get(name).ask("Which book has a desert?", context_size=2)
            assert again.hits and all(h.rerank_score is not None for h in again.hits)
            assert blocking.collections.get(name).config().rerank == types.Rerank(candidates=5)
    finally:
        await client.collections.delete(name)


async def _chunked(client: AsyncGensearch) -> tuple[str, dict[str, str]]:
    name = f"Docs_{uuid.uuid4().hex[:8]}"
    docs = await client.collections.create(
        name,
        {"doc": "text", "position": "int", "text": "text"},
        chunking=types.Chunking(document_property="doc", order_property="position"),
    )
    written = await docs.data.insert_many(
        [{"doc": d, "position": p, "text": text} for d, p, text in CHUNKS]
    )
    assert written.ok
    return name, {f"{d}{p}": i for (d, p, _), i in zip(CHUNKS, written.ids, strict=True)}


async def test_an_ask_with_expand_context_returns_its_passages(client: AsyncGensearch) -> None:
    name, ids = await _chunked(client)
    try:
        docs = client.collections.get(name)
        answer = await docs.ask(
            "zebra",
            keyword="zebra",
            context_size=2,
            context_field_list=["text"],
            expand_context=types.ContextExpansion(neighbors=1),
        )
        assert len(answer.passages) == 2
        assert all(isinstance(p, types.ContextPassage) for p in answer.passages)
        by_doc = {p.document: p for p in answer.passages}
        assert set(by_doc) == {"a", "b"}
        assert (by_doc["a"].first, by_doc["a"].last) == (1, 3)
        assert by_doc["a"].chunk_ids == [ids["a1"], ids["a2"], ids["a3"]]
        assert by_doc["a"].hit_ids == [ids["a2"]]
        assert (by_doc["b"].first, by_doc["b"].last) == (0, 2)
        assert sorted(p.number for p in answer.passages) == [1, 2]

        events = [
            e
            async for e in docs.ask_stream(
                "zebra",
                keyword="zebra",
                context_size=2,
                expand_context={"whole_document": True},
            )
        ]
        final = events[-1]
        assert isinstance(final, types.AnswerEvent)
        assert {p.document for p in final.answer.passages} == {"a", "b"}
    finally:
        await client.collections.delete(name)


async def test_a_generative_search_and_its_stream_return_their_passages(
    client: AsyncGensearch,
) -> None:
    name, ids = await _chunked(client)
    try:
        docs = client.collections.get(name)
        fields: dict[str, Any] = {
            "limit": 2,
            "return_properties": ["text"],
            "grouped_task": "Summarise",
            "expand_context": types.ContextExpansion(neighbors=1),
        }
        found = await docs.generate.keyword("zebra", **fields)
        assert {h.id for h in found.hits} == {ids["a2"], ids["b1"]}
        assert found.grouped is not None
        assert {p.document for p in found.passages} == {"a", "b"}
        assert all(isinstance(p, types.ContextPassage) for p in found.passages)
        events = [e async for e in docs.generate_stream.keyword("zebra", **fields)]
        first = events[0]
        assert isinstance(first, types.HitsEvent)
        assert len(first.hits) == 2 and first.passages == found.passages
    finally:
        await client.collections.delete(name)


async def test_an_int_document_comes_back_as_an_int_everywhere(client: AsyncGensearch) -> None:
    # A passage's document is a google.protobuf.Value: numbers travel as doubles, and an
    # INT document property came back as 7.0 (a hit's properties were converted, it not).
    name = f"Numbered_{uuid.uuid4().hex[:8]}"
    docs = await client.collections.create(
        name,
        {"doc": "int", "position": "int", "text": "text"},
        chunking=types.Chunking(document_property="doc", order_property="position"),
    )
    try:
        written = await docs.data.insert_many(
            [{"doc": 7, "position": p, "text": f"Part {p} of seven, a zebra."} for p in range(3)]
        )
        assert written.ok
        expand = types.ContextExpansion(neighbors=1)
        fields: dict[str, Any] = {"keyword": "zebra", "context_size": 1, "expand_context": expand}
        seen = [p.document for p in (await docs.ask("zebra", **fields)).passages]
        async for event in docs.ask_stream("zebra", **fields):
            if isinstance(event, types.AnswerEvent):
                seen += [p.document for p in event.answer.passages]
        search: dict[str, Any] = {"limit": 1, "grouped_task": "Sum up", "expand_context": expand}
        seen += [p.document for p in (await docs.generate.keyword("zebra", **search)).passages]
        async for item in docs.generate_stream.keyword("zebra", **search):
            if isinstance(item, types.HitsEvent):
                seen += [p.document for p in item.passages]
        assert len(seen) == 4
        assert all(type(document) is int and document == 7 for document in seen), seen
    finally:
        await client.collections.delete(name)
