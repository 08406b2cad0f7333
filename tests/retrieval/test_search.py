"""Search in every mode, paging, returned properties, vectors, and request errors."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import Retrieval, cond, expect_error, vector_collection
from tests.retrieval.data import DIMS, article_objects, articles
from tests.support.rpc import error_info


@pytest.fixture
async def stub(retrieval: Retrieval) -> Any:
    s = retrieval.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    await s.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=article_objects()))
    return s


def ranked_by_cosine(query: list[float]) -> list[str]:
    scored = [
        (sum(a * b for a, b in zip(query, art["vector"], strict=True)), art["id"])
        for art in articles()
    ]
    return [pid for _, pid in sorted(scored, reverse=True)]


async def test_near_vector_order_paging_and_projection(stub: Any) -> None:
    query = articles()[3]["vector"]
    expected = ranked_by_cosine(query)
    res = await stub.Search(
        pb.SearchRequest(collection="A", near_vector=pb.NearVector(vector=query))
    )
    assert [h.id for h in res.hits] == expected[:10]  # default limit 10
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert res.hits[0].score >= res.hits[1].score
    assert res.query_ms > 0 and res.embed_ms == 0
    page = await stub.Search(
        pb.SearchRequest(
            collection="A",
            near_vector=pb.NearVector(vector=query),
            limit=3,
            offset=4,
            return_properties=["title", "year"],
            include_vector=True,
        )
    )
    assert [h.id for h in page.hits] == expected[4:7]
    assert set(page.hits[0].properties.keys()) == {"title", "year"}
    assert len(page.hits[0].vector) == DIMS


async def test_keyword(stub: Any) -> None:
    res = await stub.Search(
        pb.SearchRequest(collection="A", keyword=pb.Keyword(text="sourdough bread baking"))
    )
    assert res.hits[0].properties["title"] == "Bread baking with sourdough starters"
    assert all(h.score > 0 for h in res.hits)
    # Stemming: "networks" finds "network"-free text only by its stem.
    res = await stub.Search(pb.SearchRequest(collection="A", keyword=pb.Keyword(text="network")))
    assert [h.properties["title"] for h in res.hits] == ["Training neural networks on a laptop"]
    # Only stop words: no hits, no error.
    res = await stub.Search(pb.SearchRequest(collection="A", keyword=pb.Keyword(text="the and of")))
    assert not res.hits
    # With a filter.
    res = await stub.Search(
        pb.SearchRequest(
            collection="A",
            keyword=pb.Keyword(text="science physics computing"),
            filter=cond("year", pb.OPERATOR_GREATER_THAN, 2016),
        )
    )
    assert res.hits and all(h.properties["year"] > 2016 for h in res.hits)


async def test_hybrid_alpha(stub: Any) -> None:
    target = articles()[6]  # "The physics of black holes"
    other = articles()[9]["vector"]
    dense_only = await stub.Search(
        pb.SearchRequest(
            collection="A", hybrid=pb.Hybrid(text="black holes", vector=other, alpha=1.0)
        )
    )
    assert [h.id for h in dense_only.hits] == ranked_by_cosine(other)[:10]
    keyword_only = await stub.Search(
        pb.SearchRequest(
            collection="A", hybrid=pb.Hybrid(text="black holes", vector=other, alpha=0.0)
        )
    )
    assert [h.id for h in keyword_only.hits] == [target["id"]]
    mixed = await stub.Search(
        pb.SearchRequest(
            collection="A", hybrid=pb.Hybrid(text="black holes", vector=target["vector"])
        )
    )
    # First in both lists: first in the fusion, with the highest possible score.
    assert mixed.hits[0].id == target["id"]
    assert mixed.hits[0].score == pytest.approx(0.5 / 61 + 0.5 / 61)
    assert len(mixed.hits) == 10


async def test_search_errors(stub: Any) -> None:
    vec = pb.NearVector(vector=[0.1] * DIMS)
    invalid = [
        (pb.SearchRequest(collection="A"), "query"),
        (
            pb.SearchRequest(collection="A", near_vector=pb.NearVector(vector=[0.1] * 3)),
            "near_vector.vector",
        ),
        (
            pb.SearchRequest(
                collection="A", near_vector=pb.NearVector(vector=[float("nan")] * DIMS)
            ),
            "near_vector.vector",
        ),
        (pb.SearchRequest(collection="A", near_vector=vec, limit=101), "limit"),
        (pb.SearchRequest(collection="A", near_vector=vec, limit=-1), "limit"),
        (pb.SearchRequest(collection="A", near_vector=vec, offset=-1), "offset"),
        (pb.SearchRequest(collection="A", near_vector=vec, offset=1_000_000), "offset"),
        (
            pb.SearchRequest(collection="A", near_vector=vec, return_properties=["nope"]),
            "return_properties[0]",
        ),
        (pb.SearchRequest(collection="A", keyword=pb.Keyword(text=" ")), "keyword.text"),
        (pb.SearchRequest(collection="A", near_text=pb.NearText(text="physics")), "near_text"),
        (pb.SearchRequest(collection="A", hybrid=pb.Hybrid(text="x")), "hybrid.vector"),
        (
            pb.SearchRequest(
                collection="A", hybrid=pb.Hybrid(text="x", alpha=1.5, vector=[0.1] * DIMS)
            ),
            "hybrid.alpha",
        ),
        (
            pb.SearchRequest(collection="A", hybrid=pb.Hybrid(text="x", vector=[0.1] * 2)),
            "hybrid.vector",
        ),
        (pb.SearchRequest(collection="bad name", near_vector=vec), "collection"),
    ]
    for request, field in invalid:
        await expect_error(stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
    await expect_error(
        stub.Search(pb.SearchRequest(collection="Missing", near_vector=vec)),
        grpc.StatusCode.NOT_FOUND,
        "collection",
    )


async def test_limit_and_offset_at_and_past_their_settings(make_retrieval: Any) -> None:
    """The largest limit and offset pass; one more is OUT_OF_RANGE with the bound and the
    setting (before: reason INVALID_ARGUMENT, neither bound nor setting)."""
    harness = await make_retrieval(max_limit=5, max_offset=7)
    s = harness.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    vec = pb.NearVector(vector=[0.1] * DIMS)
    await s.Search(pb.SearchRequest(collection="A", near_vector=vec, limit=5, offset=7))
    for request, field, bound, setting in (
        (pb.SearchRequest(collection="A", near_vector=vec, limit=6), "limit", "5", "MAX_LIMIT"),
        (pb.SearchRequest(collection="A", near_vector=vec, offset=8), "offset", "7", "MAX_OFFSET"),
    ):
        err = await expect_error(s.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
        info = error_info(err)
        assert info.reason == "OUT_OF_RANGE"
        assert dict(info.metadata) == {
            "field": field,
            "max": bound,
            "setting": f"GENSEARCH_RETRIEVAL_{setting}",
        }


async def test_query_text_at_and_past_its_bound(stub: Any) -> None:
    """16 384 characters of query text pass; one more names the bound (max_chars), for
    keyword and hybrid text alike (the refusal gave the field alone)."""
    from services.common.settings import MAX_QUERY_TEXT

    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("Q", DIMS)))
    vector = [0.1] * DIMS
    at, past = "a " * (MAX_QUERY_TEXT // 2), "a " * (MAX_QUERY_TEXT // 2) + "b"
    await stub.Search(pb.SearchRequest(collection="Q", keyword=pb.Keyword(text=at)))
    await stub.Search(pb.SearchRequest(collection="Q", hybrid=pb.Hybrid(text=at, vector=vector)))
    for request, field in (
        (pb.SearchRequest(collection="Q", keyword=pb.Keyword(text=past)), "keyword.text"),
        (
            pb.SearchRequest(collection="Q", hybrid=pb.Hybrid(text=past, vector=vector)),
            "hybrid.text",
        ),
    ):
        err = await expect_error(stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
        assert error_info(err).metadata["max_chars"] == str(MAX_QUERY_TEXT)


async def test_the_default_limit_stays_within_a_lower_max_limit(make_retrieval: Any) -> None:
    """MAX_LIMIT below the default of 10 refused every search that set no limit
    (INVALID_ARGUMENT naming ``limit``); the default is now cut to the maximum."""
    harness = await make_retrieval(max_limit=3)
    s = harness.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    await s.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=article_objects()))
    query = articles()[3]["vector"]
    res = await s.Search(pb.SearchRequest(collection="A", near_vector=pb.NearVector(vector=query)))
    assert [h.id for h in res.hits] == ranked_by_cosine(query)[:3]
    err = await expect_error(
        s.Search(
            pb.SearchRequest(collection="A", near_vector=pb.NearVector(vector=query), limit=4)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit",
    )
    assert "0 means 3" in (err.details() or "")


async def test_offset_is_at_most_max_offset_whatever_the_limit(make_retrieval: Any) -> None:
    """MAX_OFFSET is the largest offset (docs/retrieval.md), as the error says: offset 10 +
    limit 1 was let through at MAX_OFFSET 5, MAX_LIMIT 10 (checked against their sum)."""
    harness = await make_retrieval(max_offset=5, max_limit=10)
    s = harness.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    await s.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=article_objects()))
    query = articles()[3]["vector"]
    near = pb.NearVector(vector=query)
    res = await s.Search(pb.SearchRequest(collection="A", near_vector=near, offset=5, limit=10))
    assert [h.id for h in res.hits] == ranked_by_cosine(query)[5:15]
    for offset, limit in ((6, 1), (10, 1), (14, 1)):
        err = await expect_error(
            s.Search(
                pb.SearchRequest(collection="A", near_vector=near, offset=offset, limit=limit)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "offset",
        )
        assert "at most 5" in (err.details() or "")


async def test_no_keyword_index(retrieval: Retrieval) -> None:
    s = retrieval.stub
    await s.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("NoKw", DIMS, keyword_index=False))
    )
    await s.UpsertObjects(pb.UpsertObjectsRequest(collection="NoKw", objects=article_objects()))
    await expect_error(
        s.Search(pb.SearchRequest(collection="NoKw", keyword=pb.Keyword(text="physics"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keyword",
    )
    res = await s.Search(
        pb.SearchRequest(
            collection="NoKw",
            hybrid=pb.Hybrid(text="physics", alpha=1.0, vector=articles()[0]["vector"]),
        )
    )
    assert res.hits[0].id == articles()[0]["id"]


async def test_euclid_scores_higher_is_better(retrieval: Retrieval) -> None:
    s = retrieval.stub
    collection = pb.Collection(
        name="E",
        vectorizer=pb.Vectorizer(
            kind=pb.VECTORIZER_KIND_NONE, dimensions=2, distance=pb.DISTANCE_EUCLID
        ),
    )
    await s.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    objs = [pb.DataObject(vector=[float(i), 0.0]) for i in range(5)]
    await s.UpsertObjects(pb.UpsertObjectsRequest(collection="E", objects=objs))
    res = await s.Search(
        pb.SearchRequest(collection="E", near_vector=pb.NearVector(vector=[0.0, 0.0]))
    )
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(0.0)


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_cosine_vectors_keep_their_direction(make_retrieval: Any, adapter: str) -> None:
    # The engine normalises cosine vectors in float32: [3e38]*4 overflowed and was stored as
    # all zeros, [1e-45, 0, 0, 0] underflowed and scored ~1e-45 against its own direction;
    # a zero vector was stored with no direction at all.
    s = (await make_retrieval(adapter)).stub
    collection = pb.Collection(
        name="C", vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=4)
    )
    await s.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    huge, tiny = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    objs = [
        pb.DataObject(id=huge, vector=[3e38] * 4),
        pb.DataObject(id=tiny, vector=[1e-45, 0.0, 0.0, 0.0]),
        pb.DataObject(vector=[0.0] * 4),
    ]
    written = await s.UpsertObjects(pb.UpsertObjectsRequest(collection="C", objects=objs))
    assert list(written.ids) == [huge, tiny]
    assert [(e.index, e.field) for e in written.errors] == [(2, "vector")]
    assert "length 0" in written.errors[0].message
    got = await s.GetObject(pb.GetObjectRequest(collection="C", id=huge, include_vector=True))
    assert list(got.object.vector) == pytest.approx([0.5] * 4)
    for query, expected in (([1.0] * 4, huge), ([5.0, 0.0, 0.0, 0.0], tiny)):
        res = await s.Search(
            pb.SearchRequest(collection="C", near_vector=pb.NearVector(vector=query))
        )
        assert res.hits[0].id == expected and res.hits[0].score == pytest.approx(1.0, abs=1e-4)
    for request, field in (
        (
            pb.SearchRequest(collection="C", near_vector=pb.NearVector(vector=[0.0] * 4)),
            "near_vector.vector",
        ),
        (
            pb.SearchRequest(
                collection="C", hybrid=pb.Hybrid(text="x", alpha=1.0, vector=[0.0] * 4)
            ),
            "hybrid.vector",
        ),
    ):
        err = await expect_error(s.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
        assert error_info(err).reason == "ZERO_VECTOR"


@pytest.mark.parametrize("adapter", ["edge", "server"])
@pytest.mark.parametrize("distance", [pb.DISTANCE_DOT, pb.DISTANCE_EUCLID])
async def test_dot_and_euclid_vectors_stay_within_float32(
    make_retrieval: Any, adapter: str, distance: int
) -> None:
    # The engine scores in float32: [3e38] * 4 was stored, then a dot product or a Euclid
    # distance with it overflowed, and the object silently fell out of every search (only
    # 1 of 5 objects came back for a Euclid query). A length past 2^62 is refused, stored
    # or searched with; every pair of vectors within it scores finitely.
    s = (await make_retrieval(adapter)).stub
    collection = pb.Collection(
        name="D",
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=4, distance=distance),
    )
    await s.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    edge = 2.0**61  # [2^61] * 4 has length 2^62: the largest accepted
    objs = [
        pb.DataObject(vector=[edge] * 4),
        pb.DataObject(vector=[-edge] * 4),
        pb.DataObject(vector=[1.0, 0.0, 0.0, 0.0]),
        pb.DataObject(vector=[0.0] * 4),
        pb.DataObject(vector=[3e38] * 4),
        pb.DataObject(vector=[-3e38, 0.0, 0.0, 0.0]),
    ]
    written = await s.UpsertObjects(pb.UpsertObjectsRequest(collection="D", objects=objs))
    assert [(e.index, e.field) for e in written.errors] == [(4, "vector"), (5, "vector")]
    assert "2^62" in written.errors[0].message
    for query in ([edge] * 4, [-edge] * 4, [1.0, 0.0, 0.0, 0.0]):
        res = await s.Search(
            pb.SearchRequest(collection="D", near_vector=pb.NearVector(vector=query))
        )
        assert len(res.hits) == 4, (query, [h.score for h in res.hits])
        assert all(math.isfinite(h.score) for h in res.hits)
    for request, field in (
        (
            pb.SearchRequest(collection="D", near_vector=pb.NearVector(vector=[3e38] * 4)),
            "near_vector.vector",
        ),
        (
            pb.SearchRequest(
                collection="D", hybrid=pb.Hybrid(text="x", alpha=1.0, vector=[3e38] * 4)
            ),
            "hybrid.vector",
        ),
    ):
        err = await expect_error(s.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
        assert error_info(err).reason == "VECTOR_TOO_LONG"


@pytest.mark.parametrize(
    ("fields", "field", "first"),
    [
        ({"return_properties": ["title", "year", "title"]}, "return_properties[2]", "[0]"),
        # A 3 MB list of one name took ~2.5 s of CPU; refused at its first repeat.
        ({"return_properties": ["year"] * 300_000}, "return_properties[1]", "[0]"),
        (
            {"rerank": pb.Rerank(properties=["body", "title", "body"])},
            "rerank.properties[2]",
            "[0]",
        ),
    ],
)
async def test_a_property_named_twice_is_refused_naming_the_repeat(
    stub: Any, fields: dict[str, Any], field: str, first: str
) -> None:
    """Each repeat was paid for per hit (and joined again into each candidate's text to
    rank); a name is given once."""
    err = await expect_error(
        stub.Search(
            pb.SearchRequest(
                collection="A", near_vector=pb.NearVector(vector=[0.1] * DIMS), **fields
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )
    assert error_info(err).metadata["first"] == field.split("[")[0] + first


async def test_text_description_property_and_dimension_bounds_are_settings(
    make_retrieval: Any,
) -> None:
    """A search's text, a rerank query, a description, the properties of a collection and
    its vectors' dimensions are bounded by settings, and a refusal names the bound and the
    setting (before: fixed 16 384, 16 384, 4096, 256 and 65 536, named by no refusal)."""
    harness = await make_retrieval(
        max_query_text_chars=10,
        max_rerank_query_chars=6,
        max_description_chars=5,
        max_properties=2,
        max_dimensions=DIMS,
    )
    s = harness.stub
    two = vector_collection("Q", DIMS, description="a" * 5)
    del two.properties[2:]
    await s.CreateCollection(pb.CreateCollectionRequest(collection=two))
    vector = [0.1] * DIMS
    await s.Search(pb.SearchRequest(collection="Q", keyword=pb.Keyword(text="a" * 10)))
    await s.Search(
        pb.SearchRequest(
            collection="Q",
            near_vector=pb.NearVector(vector=vector),
            rerank=pb.Rerank(query="b" * 6),
        )
    )
    too_many = vector_collection("R", DIMS)  # seven properties
    long_described = vector_collection("S", DIMS)
    del long_described.properties[2:]
    long_described.properties[1].description = "d" * 6
    cases = (
        (
            s.Search(pb.SearchRequest(collection="Q", keyword=pb.Keyword(text="a" * 11))),
            "keyword.text",
            "10",
            "MAX_QUERY_TEXT_CHARS",
        ),
        (
            s.Search(
                pb.SearchRequest(
                    collection="Q",
                    near_vector=pb.NearVector(vector=vector),
                    rerank=pb.Rerank(query="b" * 7),
                )
            ),
            "rerank.query",
            "6",
            "MAX_RERANK_QUERY_CHARS",
        ),
        (
            s.CreateCollection(
                pb.CreateCollectionRequest(
                    collection=vector_collection("T", DIMS, description="a" * 6)
                )
            ),
            "collection.description",
            "5",
            "MAX_DESCRIPTION_CHARS",
        ),
        (
            s.CreateCollection(pb.CreateCollectionRequest(collection=long_described)),
            "collection.properties[1].description",
            "5",
            "MAX_DESCRIPTION_CHARS",
        ),
        (
            s.CreateCollection(pb.CreateCollectionRequest(collection=too_many)),
            "collection.properties",
            "2",
            "MAX_PROPERTIES",
        ),
    )
    wide = vector_collection("U", DIMS + 1)
    del wide.properties[2:]
    cases += (
        (
            s.CreateCollection(pb.CreateCollectionRequest(collection=wide)),
            "collection.vectorizer.dimensions",
            str(DIMS),
            "MAX_DIMENSIONS",
        ),
    )
    for call, field, bound, setting in cases:
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field)
        info = error_info(err)
        assert info.metadata["max"] == bound, (field, info)
        assert info.metadata["setting"] == f"GENSEARCH_RETRIEVAL_{setting}", (field, info)
        assert f"GENSEARCH_RETRIEVAL_{setting}" in err.details()
