"""A stored schema that does not parse is no collection (NOT_FOUND, skipped on load); any
other failure while reading one is a fault, raised as such, not reported as a collection
that was deleted (``catalog.check_same``, ``catalog._parsed``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from qdrant_client import AsyncQdrantClient

from services.retrieval.catalog import Catalog, CollectionGone
from services.retrieval.embedders import Embedders
from services.retrieval.schema import Schema
from services.retrieval.server_store import ServerStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import CollectionLayout

TENANT = "acme"


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[tuple[Catalog, ServerStore]]:
    settings = RetrievalSettings(data_dir=tmp_path)
    store = ServerStore(AsyncQdrantClient(location=":memory:"))
    await store.open()
    try:
        yield Catalog(store, Embedders(settings), settings), store
    finally:
        await store.close()


def _collection() -> pb.Collection:
    return pb.Collection(
        name="Books",
        properties=[pb.Property(name="title", data_type=pb.DATA_TYPE_TEXT)],
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=4),
    )


async def test_an_unreadable_stored_schema_is_not_the_same_collection(
    catalog: tuple[Catalog, ServerStore],
) -> None:
    cat, store = catalog
    schema = await cat.create(TENANT, _collection())
    await cat.check_same(schema)
    # Deleted and made again under its engine name with a schema that does not parse.
    await store.delete_collection(schema.store_name)
    unreadable = {**schema.to_json(), "create_time": "not a time"}
    layout = CollectionLayout(schema.store_name, 4, schema.distance, False)
    await store.create_collection(layout, unreadable)
    with pytest.raises(CollectionGone):
        await cat.check_same(schema)
    await cat.load()  # skipped, the rest served
    assert await cat.page(TENANT, 10, "") == ([], "")


async def test_a_fault_reading_a_schema_is_raised_not_taken_for_a_deleted_collection(
    catalog: tuple[Catalog, ServerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    cat, store = catalog
    schema = await cat.create(TENANT, _collection())

    def broken(data: object) -> Schema:
        raise RuntimeError("a bug in reading schemas")

    monkeypatch.setattr(Schema, "from_json", broken)
    # It was NOT_FOUND "deleted after this call started", and the load left it out.
    with pytest.raises(RuntimeError, match="a bug"):
        await cat.check_same(schema)
    # Loaded by a catalog that has not parsed it yet (one that has keeps what it parsed:
    # a reload parses only the schemas stored since).
    settings = RetrievalSettings()
    with pytest.raises(RuntimeError, match="a bug"):
        await Catalog(store, Embedders(settings), settings).load()


async def test_a_schema_another_version_wrote_is_one_warning_not_one_per_reload(
    catalog: tuple[Catalog, ServerStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A reload runs on any caller's miss (every MISS_RELOAD_SECONDS at most): a schema
    that does not parse (here a newer version's data type) was logged again, with its
    traceback, at each one. Now once, as one line, until the stored schema changes."""
    cat, store = catalog
    schema = await cat.create(TENANT, _collection())
    await store.delete_collection(schema.store_name)
    newer = schema.to_json()
    newer["properties"][0]["data_type"] = "DATA_TYPE_GEO_POINT"
    layout = CollectionLayout(schema.store_name, 4, schema.distance, False)
    await store.create_collection(layout, newer)
    caplog.set_level(logging.INFO, logger="gensearch.retrieval.catalog")
    for _ in range(3):
        await cat.load()
    assert await cat.page(TENANT, 10, "") == ([], "")
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert warned[0].exc_info is None
    assert "'Books' of tenant 'acme'" in warned[0].getMessage()
