"""Payload indexes on every key the service filters on (``payload_index.py``), on both
adapters: made with a collection, made after open for a collection made before them, and
answering every filter exactly as the payload scan did.

qdrant-edge is the real engine: its indexes are read back from the shard and the same
filters run with and without them. The Qdrant server adapter runs on qdrant-client's local
mode, which takes ``create_payload_index`` and ignores it (it always filters by reading
every point, and reports no ``payload_schema``): what the adapter asks the server for is
recorded by a client that forwards every call to that local engine unchanged.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import duration_pb2
from qdrant_client import AsyncQdrantClient, models

from services.common.auth import DEFAULT_TENANT
from services.memory.search_index import InteractionIndex
from services.memory.store import Owner
from services.retrieval import edge_store
from services.retrieval.answer_cache import cache_store_name
from services.retrieval.catalog import is_collection_schema
from services.retrieval.edge_store import EdgeStore
from services.retrieval.filters import build_filter
from services.retrieval.payload_index import IndexKind, payload_indexes
from services.retrieval.schema import Schema
from services.retrieval.server_store import SCHEMA_KEY, ServerStore
from services.retrieval.store import CollectionLayout, StoredPoint
from services.retrieval.tenancy import storage_name
from tests.retrieval.conftest import (
    ALL,
    ANY,
    ARTICLE_PROPS,
    EQ,
    GT,
    GTE,
    LT,
    LTE,
    NE,
    TEXT,
    MakeRetrieval,
    Retrieval,
    all_of,
    any_of,
    cond,
    none_of,
    obj,
    vector_collection,
)

DIMS = 4
OBJECTS = 400
# What ARTICLE_PROPS' collection gets (title, body text; tags text array; year int;
# rating number; published bool; date date).
ARTICLE_INDEXES = {
    "p.title": IndexKind.KEYWORD,
    "p.body": IndexKind.KEYWORD,
    "p.tags": IndexKind.KEYWORD,
    "p.year": IndexKind.INTEGER,
    "p.rating": IndexKind.FLOAT,
    "b.published": IndexKind.INTEGER,
    "p.date": IndexKind.DATETIME,
}
WORDS = ["alpha", "Beta", "gamma", "délta", "Straße", "x-ray", "fish", "ﬁsh", "cafe\u0301"]
TAGS = ["red", "green", "blue", "Red", "café", ""]
DATES = ["2024-03-12T12:00:00Z", "2024-03-12T12:00:00.123456Z", "2024-02-11T11:00:00.5Z"]


def objects() -> list[pb.DataObject]:
    """Every property type, some missing, arrays of 0-3 values, dates with fractions and
    offsets. Numbers are short decimals: qdrant-edge keeps a payload float with a 17-digit
    shortest form 1 ulp off (with or without indexes), which is not what this tests."""
    rng = random.Random(11)
    out = []
    for i in range(OBJECTS):
        props: dict[str, Any] = {
            "title": " ".join(rng.sample(WORDS, 2)),
            "body": f"body {rng.choice(WORDS)} number {i % 7}",
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
            "year": rng.choice([-5, 1999, 2000, 2001, 2015, 2016, 2017, 2**40]),
            "rating": rng.randint(-40, 40) * 0.25,
            "published": rng.random() < 0.5,
            "date": (
                f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T1{rng.randint(0, 9)}:00:00"
                f"{rng.choice(['', '.5', '.123456'])}{rng.choice(['Z', '+02:00'])}"
            ),
        }
        for name in ("tags", "year", "rating", "published", "date"):
            if rng.random() < 0.1:
                del props[name]
        if i < len(DATES):  # instants the equality filters below name
            props["date"] = DATES[i]
        vector = [rng.uniform(-1, 1) for _ in range(DIMS)]
        out.append(obj(props, id=str(uuid.UUID(int=0x2000 + i)), vector=vector))
    return out


FILTERS: list[pb.Filter] = [
    cond("title", EQ, "alpha gamma"),
    cond("title", NE, "alpha gamma"),
    cond("title", ANY, ["alpha gamma", "Beta fish", "nothing"]),
    cond("title", TEXT, "ALPHA"),
    cond("title", TEXT, "fish"),
    cond("title", TEXT, "café"),
    cond("body", TEXT, "number 3"),
    cond("tags", EQ, "red"),
    cond("tags", NE, "red"),
    cond("tags", EQ, ""),
    cond("tags", ANY, ["Red", "café"]),
    cond("tags", ALL, ["red", "green"]),
    cond("tags", TEXT, "red"),
    cond("year", EQ, 2016),
    cond("year", NE, 2016),
    cond("year", ANY, [-5, 2017, 2**40]),
    cond("year", LT, 2000),
    cond("year", LTE, 2000),
    cond("year", GT, 2016.5),
    cond("year", GTE, 2016.5),
    cond("year", GT, 1e12),
    all_of(cond("year", LT, 1e300), cond("year", GT, -1e300)),
    cond("rating", EQ, 2.5),
    cond("rating", NE, 2.5),
    cond("rating", ANY, [2.5, -1.25, 99.0]),
    cond("rating", LT, 0),
    cond("rating", GTE, 7.75),
    cond("published", EQ, True),
    cond("published", NE, True),
    cond("published", ANY, [False]),
    cond("date", EQ, "2024-03-12T12:00:00Z"),
    cond("date", EQ, "2024-03-12T14:00:00.123456+02:00"),
    cond("date", NE, "2024-03-12T12:00:00Z"),
    cond("date", LT, "2024-04-01T00:00:00Z"),
    cond("date", GTE, "2024-05-15T15:00:00.5Z"),
    cond("date", GT, "2024-05-15T15:00:00.4999999Z"),
    cond("date", ANY, ["2024-03-12T12:00:00Z", "2024-02-11T13:00:00.5+02:00"]),
    all_of(cond("tags", EQ, "blue"), cond("year", GTE, 2001), cond("published", EQ, False)),
    any_of(
        cond("rating", GT, 9),
        cond("title", EQ, "gamma alpha"),
        cond("date", LT, "2024-02-01T00:00:00Z"),
    ),
    none_of(cond("tags", ANY, ["red", "blue"]), cond("year", LT, 2015)),
    all_of(
        any_of(cond("title", TEXT, "beta"), cond("body", TEXT, "x-ray")),
        none_of(cond("rating", LTE, 0)),
    ),
]


async def answers(stub: Any, collection: str) -> list[tuple[int, list[str]]]:
    """Each filter's CountObjects and the ids of its filtered Search (all of them, in
    order: the same segments and HNSW graph give the same ranking)."""
    probe = [0.3, -0.2, 0.5, 0.1]
    out = []
    for flt in FILTERS:
        count = await stub.CountObjects(pb.CountObjectsRequest(collection=collection, filter=flt))
        found = await stub.Search(
            pb.SearchRequest(
                collection=collection,
                near_vector=pb.NearVector(vector=probe),
                filter=flt,
                limit=100,
            )
        )
        out.append((count.count, [h.id for h in found.hits]))
    return out


async def load(harness: Retrieval, name: str) -> None:
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection(name, DIMS))
    )

    async def stream() -> Any:
        items = objects()
        for start in range(0, len(items), 100):
            yield pb.ImportObjectsRequest(collection=name, objects=items[start : start + 100])

    # ImportObjects ends with the engine's optimize (OBJECTS reach the harnesses'
    # IMPORT_OPTIMIZE_MIN_OBJECTS): immutable segments, indexes in use.
    resp = await harness.stub.ImportObjects(stream())
    assert resp.imported_count == OBJECTS, resp


def test_every_filtered_key_gets_its_index() -> None:
    schema = Schema(vector_collection("Articles", DIMS)).to_json()
    assert payload_indexes(schema) == ARTICLE_INDEXES
    assert {key.split(".")[1] for key in ARTICLE_INDEXES} == {p.name for p in ARTICLE_PROPS}
    assert payload_indexes({"gensearch_answer_cache": True, "tenant": "t"}) == {
        "k": IndexKind.KEYWORD
    }
    memory = {"kind": "gensearch-memory-interactions", "name": "m", "dimensions": 1}
    assert payload_indexes(memory) == {
        "t": IndexKind.TENANT,
        "u": IndexKind.KEYWORD,
        "c": IndexKind.KEYWORD,
        "i": IndexKind.KEYWORD,
    }
    # Not ours: nothing.
    assert payload_indexes({"kind": "another"}) == {}
    assert payload_indexes({"properties": "garbage"}) == {}


async def test_edge_indexes_made_on_open_and_with_new_collections_answer_as_the_scan(
    make_retrieval: MakeRetrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection made before payload indexes (the old code: a shard without them) has
    none and filters by scanning; reopened by this code it gets every index, and each
    filter — every type, arrays, ranges, dates, groups — gives the same count and the same
    ranked hits; a collection created now has its indexes before any write, and answers
    alike."""
    data = tmp_path / "data"
    old_name = storage_name(DEFAULT_TENANT, "Old")
    monkeypatch.setattr(edge_store, "create_indexes", lambda *args, **kwargs: {})
    old = await make_retrieval("edge", data_dir=data, import_optimize_min_objects=OBJECTS)
    await load(old, "Old")
    assert isinstance(old.store, EdgeStore)
    assert await old.store.indexes(old_name) == {}
    scanned = await answers(old.stub, "Old")
    await old.stop()
    monkeypatch.undo()

    reopened = await make_retrieval("edge", data_dir=data, import_optimize_min_objects=OBJECTS)
    assert isinstance(reopened.store, EdgeStore)
    await reopened.store.migrated()  # built after open (the next test)
    assert await reopened.store.indexes(old_name) == ARTICLE_INDEXES
    assert await answers(reopened.stub, "Old") == scanned

    await reopened.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("New", DIMS))
    )
    new_name = storage_name(DEFAULT_TENANT, "New")
    assert await reopened.store.indexes(new_name) == ARTICLE_INDEXES
    await reopened.stub.DeleteCollection(pb.DeleteCollectionRequest(name="New"))
    await load(reopened, "New")
    assert await answers(reopened.stub, "New") == scanned
    # Not a vacuous comparison: most filters match some objects but not all.
    assert all(0 < count < OBJECTS for count, _ in scanned), scanned


async def test_the_answer_caches_context_key_is_indexed(
    make_retrieval: MakeRetrieval,
) -> None:
    r = await make_retrieval("edge")
    await r.stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("D")))
    await r.stub.StoreCachedAnswer(
        pb.StoreCachedAnswerRequest(
            collection="D",
            question="Which book is set on a desert planet?",
            answer=b"Dune",
            ttl=duration_pb2.Duration(seconds=60),
            context_key="k",
        )
    )
    (schema,) = [Schema.from_json(s) for s in await r.store.schemas() if is_collection_schema(s)]
    assert isinstance(r.store, EdgeStore)
    assert await r.store.indexes(cache_store_name(schema)) == {"k": IndexKind.KEYWORD}


class RecordingClient(AsyncQdrantClient):
    """qdrant-client's local mode, every call forwarded unchanged; the payload indexes the
    adapter asks for are recorded (local mode takes and ignores them)."""

    def __init__(self) -> None:
        super().__init__(location=":memory:")
        self.asked: list[tuple[str, str, Any, bool]] = []

    async def create_payload_index(  # type: ignore[override]
        self, collection_name: str, field_name: str, *, field_schema: Any, wait: bool = True
    ) -> Any:
        self.asked.append((collection_name, field_name, field_schema, wait))
        return await super().create_payload_index(
            collection_name, field_name, field_schema=field_schema, wait=wait
        )


SERVER_SCHEMAS = {
    "p.title": models.PayloadSchemaType.KEYWORD,
    "p.body": models.PayloadSchemaType.KEYWORD,
    "p.tags": models.PayloadSchemaType.KEYWORD,
    "p.year": models.PayloadSchemaType.INTEGER,
    "p.rating": models.PayloadSchemaType.FLOAT,
    "b.published": models.PayloadSchemaType.INTEGER,
    "p.date": models.PayloadSchemaType.DATETIME,
}


async def test_server_adapter_asks_for_the_indexes_at_create_and_at_first_use() -> None:
    """With a new collection, each index waited for before the first write; for one made
    before indexes (no index asked for when it was made), the first call that uses it asks
    for them without waiting, once per process."""
    client = RecordingClient()
    store = ServerStore(client)
    await store.open()
    try:
        schema = Schema(vector_collection("Articles", DIMS))
        layout = CollectionLayout(schema.store_name, DIMS, "cosine", sparse=True)
        await store.create_collection(layout, schema.to_json())
        assert {(c, k, s, w) for c, k, s, w in client.asked} == {
            (schema.store_name, key, kind, True) for key, kind in SERVER_SCHEMAS.items()
        }
        client.asked.clear()
        await store.count(schema.store_name, None)
        assert client.asked == []  # made with its indexes: nothing more to ask

        # The old code: the collection and its schema, no index.
        await client.create_collection(
            "Old",
            vectors_config={
                "dense": models.VectorParams(size=DIMS, distance=models.Distance.COSINE)
            },
            metadata={SCHEMA_KEY: schema.to_json()},
        )
        await store.count("Old", None)
        assert {(c, k, s, w) for c, k, s, w in client.asked} == {
            ("Old", key, kind, False) for key, kind in SERVER_SCHEMAS.items()
        }
        client.asked.clear()
        await store.count("Old", None)
        await store.query_dense("Old", [1.0, 0, 0, 0], None, 10, 0, False)
        assert client.asked == []
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ["edge", "server"])
async def test_the_memory_index_has_its_owner_indexes(tmp_path: Path, engine: str) -> None:
    """Every memory search, count and delete filters on t/u (and c or i): the interaction
    index gets them, ``t`` as Qdrant's tenant index."""
    client = RecordingClient()
    store = EdgeStore(tmp_path / "index") if engine == "edge" else ServerStore(client)
    index = InteractionIndex(store, None, "interactions")
    try:
        assert await index.count(Owner("acme", "alice")) == 0
        wanted = {
            "t": IndexKind.TENANT,
            "u": IndexKind.KEYWORD,
            "c": IndexKind.KEYWORD,
            "i": IndexKind.KEYWORD,
        }
        if isinstance(store, EdgeStore):
            assert await store.indexes("interactions") == wanted
        else:
            asked = {k: s for _, k, s, _ in client.asked}
            assert set(asked) == set(wanted)
            assert asked["t"] == models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            )
            assert asked["u"] == asked["c"] == asked["i"] == models.PayloadSchemaType.KEYWORD
    finally:
        await index.close()


async def test_an_old_memory_index_gets_its_indexes_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_store, "create_indexes", lambda *args, **kwargs: {})
    old = InteractionIndex(EdgeStore(tmp_path / "index"), None, "interactions")
    assert await old.count(Owner("acme", "alice")) == 0
    await old.close()
    monkeypatch.undo()
    store = EdgeStore(tmp_path / "index")
    await store.open()
    try:
        await store.migrated()
        assert set(await store.indexes("interactions")) == {"t", "u", "c", "i"}
    finally:
        await store.close()


async def test_edge_builds_an_old_collections_indexes_after_open_returns(
    make_retrieval: MakeRetrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start after an upgrade answers before the missing indexes are built (and
    the health check with it): they are built afterwards, one at a time on the engine's
    thread, so calls and writes take turns with them and never race them. Filters answer
    as before meanwhile (by reading payloads), a point written meanwhile is indexed, and a
    collection deleted meanwhile is skipped."""
    data = tmp_path / "data"
    name = storage_name(DEFAULT_TENANT, "Old")
    gone = storage_name(DEFAULT_TENANT, "Gone")
    monkeypatch.setattr(edge_store, "create_indexes", lambda *args, **kwargs: {})
    old = await make_retrieval("edge", data_dir=data, import_optimize_min_objects=OBJECTS)
    await load(old, "Old")
    await old.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Gone", DIMS))
    )
    scanned = [count for count, _ in await answers(old.stub, "Old")]
    await old.stop()
    monkeypatch.undo()

    store = EdgeStore(data / "qdrant")
    await store.open()
    try:
        # The first call after open runs before any index is built.
        assert await store.indexes(name) == {}
        types = Schema.from_json((await store.schema(name)) or {}).types
        wheres = [build_filter(flt, types) for flt in FILTERS]
        written = build_filter(cond("title", EQ, "written meanwhile"), types)
        (first,) = await store.retrieve(name, [objects()[0].id], with_vector=True)
        payload = {**first.payload, "p": {**first.payload["p"], "title": "written meanwhile"}}
        meanwhile = await asyncio.gather(
            *(store.count(name, where) for where in wheres),
            store.upsert(name, [StoredPoint(str(uuid.uuid4()), payload, first.dense)]),
            store.delete_collection(gone),
        )
        assert meanwhile[: len(wheres)] == scanned
        await store.migrated()
        assert await store.indexes(name) == ARTICLE_INDEXES
        assert await store.count(name, written) == 1
        assert await store.schema(gone) is None
    finally:
        await store.close()


async def test_a_collection_with_the_old_date_index_filters_dates_as_before_and_gets_the_new(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    """Date filters read ``p.<name>`` (a datetime index) where they read a float copy
    ``ts.<name>`` (a float index). A collection from before has the float index and not the
    datetime one: its stored dates (always RFC 3339 in UTC) answer the new filters at once,
    by the payload, and the datetime index is built after open; answers do not change."""
    data = tmp_path / "data"
    name = storage_name(DEFAULT_TENANT, "Old")
    old = await make_retrieval("edge", data_dir=data, import_optimize_min_objects=OBJECTS)
    await load(old, "Old")
    current = await answers(old.stub, "Old")
    await old.stop()
    store = EdgeStore(data / "qdrant")
    await store.open()
    try:  # the previous release's indexes: ts.date float, no p.date
        shard = store._shards[name]
        shard.update(qe.UpdateOperation.delete_field_index("p.date"))
        shard.update(qe.UpdateOperation.create_field_index("ts.date", qe.PayloadSchemaType.Float))
        shard.flush()
        assert (await store.indexes(name)).get("p.date") is None
    finally:
        await store.close()

    reopened = await make_retrieval("edge", data_dir=data, import_optimize_min_objects=OBJECTS)
    assert isinstance(reopened.store, EdgeStore)
    assert await answers(reopened.stub, "Old") == current  # by the payload, or indexed
    await reopened.store.migrated()
    indexes = await reopened.store.indexes(name)
    assert indexes["p.date"] == IndexKind.DATETIME
    assert await answers(reopened.stub, "Old") == current
