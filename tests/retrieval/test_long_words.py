"""A word longer than ``bm25.MAX_WORD_CHARS`` is scored by its first characters, in
documents and queries alike. The engine's stemmer takes time quadratic in a word's
length: one 4 MB word in an object held a worker thread for about ten minutes."""

from __future__ import annotations

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.retrieval import bm25
from tests.retrieval.conftest import Retrieval, obj, vector_collection

LONG = "y" * (bm25.MAX_WORD_CHARS + 5000)
CUT = LONG[: bm25.MAX_WORD_CHARS]


def test_a_long_word_is_scored_by_its_first_characters() -> None:
    # Before, the whole word was one token (another one than its cut), stemmed in full.
    assert bm25.document_vector(f"{LONG} tail") == bm25.document_vector(f"{CUT} tail")
    assert bm25.query_vector(f"{LONG} tail") == bm25.query_vector(f"{CUT} tail")
    # Words up to the bound stay whole: a word one letter shorter is another token.
    assert bm25.document_vector(CUT) != bm25.document_vector(CUT[:-1])
    accented = "é" * (bm25.MAX_WORD_CHARS + 10)
    assert bm25.document_vector(accented) == bm25.document_vector(accented[:-10])


def test_underscore_joined_words_are_each_kept() -> None:
    """The tokenizer splits at "_": a run of words joined by it, or of "_" before a word,
    is no long word. Before, it was cut as one at MAX_WORD_CHARS characters, and every
    word past them was lost."""
    joined = "_".join(["quarterly", "revenue", "report"] * 12) + "_sourdough"
    assert len(joined) > bm25.MAX_WORD_CHARS
    stored = bm25.document_vector(joined)
    wanted = bm25.query_vector("sourdough")
    assert stored is not None and wanted is not None
    assert set(wanted.indices) <= set(stored.indices)
    assert bm25.document_vector("_" * (bm25.MAX_WORD_CHARS + 22) + "Introduction") is not None


async def test_a_long_word_still_finds_its_object(retrieval: Retrieval) -> None:
    s = retrieval.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("Words")))
    stored = await s.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Words",
            objects=[
                obj({"title": f"{LONG} sourdough"}, vector=[1.0, 0.0, 0.0, 0.0]),
                obj({"title": "plain bread"}, vector=[0.0, 1.0, 0.0, 0.0]),
            ],
        )
    )
    assert not stored.errors
    for text in (LONG, "sourdough"):
        found = await s.Search(pb.SearchRequest(collection="Words", keyword=pb.Keyword(text=text)))
        assert [h.id for h in found.hits] == [stored.ids[0]]
