"""The same operations through both storage adapters — embedded qdrant-edge and
AsyncQdrantClient (its in-process engine standing in for a Qdrant server) — must give the
same ids, order, counts and (within float precision) scores."""

from __future__ import annotations

import random
from typing import Any

import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import MakeRetrieval, any_of, cond, obj, vector_collection
from tests.retrieval.data import DIMS, TITLES, article_objects, articles

WORDS = "science history food ocean computing garden space music finance outdoors".split()  # noqa: SIM905


def corpus(n: int = 150) -> list[pb.DataObject]:
    """The article set plus generated documents with overlapping words."""
    rng = random.Random(11)
    objects = article_objects()
    for i in range(n):
        words = rng.sample(WORDS, 3) + rng.sample(" ".join(TITLES).lower().split(), 4)
        vector = [rng.gauss(0, 1) for _ in range(DIMS)]
        objects.append(
            obj(
                {
                    "title": " ".join(words),
                    "tags": words[:2],
                    "year": 2010 + i % 15,
                    "rating": rng.uniform(0, 5),
                    "published": i % 2 == 0,
                    "date": f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}T08:00:00Z",
                },
                id=f"00000000-0000-4000-8000-{i:012d}",
                vector=vector,
            )
        )
    return objects


def searches() -> list[pb.SearchRequest]:
    rng = random.Random(5)
    probes = [[rng.gauss(0, 1) for _ in range(DIMS)] for _ in range(4)] + [articles()[1]["vector"]]
    filters = [
        None,
        cond("year", pb.OPERATOR_GREATER_THAN_EQUAL, 2018),
        any_of(
            cond("tags", pb.OPERATOR_EQUAL, "science"), cond("published", pb.OPERATOR_EQUAL, False)
        ),
        cond("date", pb.OPERATOR_LESS_THAN, "2023-06-01T00:00:00Z"),
    ]
    out = []
    for flt in filters:
        for probe in probes:
            out.append(
                pb.SearchRequest(near_vector=pb.NearVector(vector=probe), filter=flt, limit=15)
            )
        for text in ("science computing", "ocean space music", "roman empire history"):
            out.append(pb.SearchRequest(keyword=pb.Keyword(text=text), filter=flt, limit=15))
            out.append(
                pb.SearchRequest(
                    hybrid=pb.Hybrid(text=text, vector=probes[0], alpha=0.3),
                    filter=flt,
                    limit=10,
                    offset=5,
                )
            )
    return out


async def run_all(stub: Any) -> list[Any]:
    seen: list[Any] = []
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("C", DIMS)))
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="C", objects=corpus()))
    seen.append(("upsert", list(resp.ids), len(resp.errors)))
    for request in searches():
        request.collection = "C"
        res = await stub.Search(request)
        seen.append(("search", [h.id for h in res.hits], [round(h.score, 4) for h in res.hits]))
    for flt in (None, cond("tags", pb.OPERATOR_CONTAINS_ANY, ["food", "music"])):
        seen.append(
            (
                "count",
                (await stub.CountObjects(pb.CountObjectsRequest(collection="C", filter=flt))).count,
            )
        )
    deleted = await stub.DeleteObjects(
        pb.DeleteObjectsRequest(collection="C", filter=cond("year", pb.OPERATOR_LESS_THAN, 2013))
    )
    seen.append(("deleted", deleted.deleted_count))
    deleted = await stub.DeleteObjects(
        pb.DeleteObjectsRequest(collection="C", ids=[a["id"] for a in articles()[:3]])
    )
    seen.append(("deleted", deleted.deleted_count))
    # Dense only: qdrant-edge keeps counting deleted points in its IDF statistics (the
    # in-process client does not), so BM25 scores legitimately drift apart after deletes.
    res = await stub.Search(
        pb.SearchRequest(collection="C", near_vector=pb.NearVector(vector=[0.5] * DIMS), limit=20)
    )
    seen.append(("after delete", [h.id for h in res.hits], [round(h.score, 4) for h in res.hits]))
    count = await stub.CountObjects(pb.CountObjectsRequest(collection="C"))
    seen.append(("count after delete", count.count))
    got = await stub.GetObject(pb.GetObjectRequest(collection="C", id=articles()[5]["id"]))
    seen.append(("get", dict(got.object.properties)))
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    seen.append(("list", [c.name for c in listed.collections]))
    return seen


def assert_same_ranking(mine: Any, theirs: Any) -> None:
    """Same ids in the same order; only where the limit cuts through a group of equal
    scores may the engines keep different members of that group."""
    _, my_ids, my_scores = mine
    _, their_ids, their_scores = theirs
    assert my_scores == pytest.approx(their_scores, rel=1e-3, abs=1e-3), (mine, theirs)
    tail = my_scores[-1] if my_scores else None
    same = [(a, b) for a, b, s in zip(my_ids, their_ids, my_scores, strict=True) if s != tail]
    assert all(a == b for a, b in same), (mine, theirs)


async def test_adapters_agree(make_retrieval: MakeRetrieval) -> None:
    edge = await make_retrieval("edge")
    server = await make_retrieval("server")
    edge_seen = await run_all(edge.stub)
    server_seen = await run_all(server.stub)
    assert len(edge_seen) == len(server_seen)
    for mine, theirs in zip(edge_seen, server_seen, strict=True):
        if mine[0] in ("search", "after delete"):
            assert_same_ranking(mine, theirs)
        else:
            assert mine == theirs
    assert any(step[0] == "search" and len(step[1]) >= 10 for step in edge_seen)
    assert edge_seen[-2][0] == "get"
    assert ("count after delete", 0) not in edge_seen
