"""A data dir whose schema files another version wrote (docs/operations.md, Backups and
restores): a key this version does not know is ignored and kept on disk, the collection
served; a value of an enum it does not know (a newer data type, say) leaves that collection
out with one WARNING line naming it, no traceback, the others served. Before, such a value
was read as UNSPECIFIED (the property typeless, the collection served wrongly)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import MakeRetrieval, obj, vector_collection
from tests.support.rpc import error_info


def _schema_file(data_dir: Path, name: str) -> Path:
    """The schema file of the default tenant's collection ``name`` (edge engine)."""
    for path in (data_dir / "qdrant" / "collections").glob("*.json"):
        if json.loads(path.read_text(encoding="utf-8"))["name"] == name:
            return path
    raise AssertionError(f"no schema file for {name}")


def _edit(path: Path, change: dict[str, object], title_type: str | None = None) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(change)
    if title_type is not None:
        data["properties"][0]["data_type"] = title_type
    path.write_text(json.dumps(data), encoding="utf-8")


async def test_a_schema_from_another_version(
    make_retrieval: MakeRetrieval, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = await make_retrieval()
    for name in ("Newer", "Numbered", "Unknowable", "UnknownNumber", "UnknownRaw"):
        await first.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection(name))
        )
        await first.stub.UpsertObjects(
            pb.UpsertObjectsRequest(
                collection=name, objects=[obj({"title": "puffins"}, vector=[1, 0, 0, 0])]
            )
        )
    await first.stop()
    data_dir = tmp_path / "data"
    newer = _schema_file(data_dir, "Newer")
    _edit(newer, {"retention": {"days": 30}})  # a key a newer version added
    _edit(_schema_file(data_dir, "Unknowable"), {}, title_type="DATA_TYPE_GEO_POINT")
    # An enum as its number in a string: ParseDict reads it as that number, a known value.
    _edit(_schema_file(data_dir, "Numbered"), {}, title_type=str(pb.DATA_TYPE_TEXT))
    # A number no value has, in a string or raw: an open enum would keep it (the collection
    # served with a type this version cannot handle), so it is left out as a name is.
    _edit(_schema_file(data_dir, "UnknownNumber"), {}, title_type="999")
    data = json.loads(_schema_file(data_dir, "UnknownRaw").read_text(encoding="utf-8"))
    data["properties"][0]["data_type"] = 999
    _schema_file(data_dir, "UnknownRaw").write_text(json.dumps(data), encoding="utf-8")

    caplog.set_level(logging.INFO)
    again = await make_retrieval()
    got = await again.stub.GetCollection(pb.GetCollectionRequest(name="Newer"))
    title = got.collection.properties[0]
    assert (title.name, title.data_type) == ("title", pb.DATA_TYPE_TEXT)
    found = await again.stub.Search(
        pb.SearchRequest(
            collection="Newer", near_vector=pb.NearVector(vector=[1, 0, 0, 0]), limit=5
        )
    )
    assert [h.properties["title"] for h in found.hits] == ["puffins"]
    # Kept for the version that wrote it (this one never rewrites a schema file).
    assert json.loads(newer.read_text(encoding="utf-8"))["retention"] == {"days": 30}

    for left_out in ("Unknowable", "UnknownNumber", "UnknownRaw"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await again.stub.GetCollection(pb.GetCollectionRequest(name=left_out))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, left_out
    numbered = await again.stub.GetCollection(pb.GetCollectionRequest(name="Numbered"))
    assert numbered.collection.properties[0].data_type == pb.DATA_TYPE_TEXT
    listed = await again.stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["Newer", "Numbered"]
    # Left out: not found to a delete either, and its name still taken in the engine.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await again.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Unknowable"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await again.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("Unknowable"))
        )
    # The engine still holds it under its name: ALREADY_EXISTS, never a second collection
    # over its files.
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(caught.value).metadata["field"] == "collection.name"
    warned = [
        r
        for r in caplog.records
        if r.name == "gensearch.retrieval.catalog" and r.levelno >= logging.WARNING
    ]
    # One line a collection left out, not one a reload, no traceback.
    assert len(warned) == 3, [r.getMessage() for r in warned]
    assert all(r.exc_info is None for r in warned)
    # The collection's name is the first quoted word: "ignoring collection 'Books' of ...".
    said = {r.getMessage().split("'")[1]: r.getMessage() for r in warned}
    assert "DATA_TYPE_GEO_POINT" in said["Unknowable"]
    assert "'999'" in said["UnknownNumber"]
    assert ": 999" in said["UnknownRaw"]


async def test_every_value_a_caller_can_store_reads_back_after_a_restart(
    make_retrieval: MakeRetrieval,
) -> None:
    """Guard (abuser12): a tenant cannot create a collection whose stored schema this
    version reads back as unknown (and so loses at its next start). Every DataType and
    every Distance a caller may send is served after a restart; a number that is no value
    of its enum (protobuf keeps it, and the schema file would hold it) is refused at create,
    INVALID_ARGUMENT naming the field."""
    first = await make_retrieval()
    types = [v for v in pb.DataType.values() if v != pb.DATA_TYPE_UNSPECIFIED]
    every_type = pb.Collection(
        name="EveryType",
        properties=[pb.Property(name=f"p{v}", data_type=v) for v in types],  # type: ignore[arg-type]
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=4),
    )
    await first.stub.CreateCollection(pb.CreateCollectionRequest(collection=every_type))
    names = ["EveryType"]
    for d in pb.Distance.values():
        collection = vector_collection(f"Distance{d}")
        collection.vectorizer.distance = d  # type: ignore[assignment]
        await first.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
        names.append(f"Distance{d}")
    bad_type = vector_collection("BadType")
    bad_type.properties[0].data_type = 99  # type: ignore[assignment]
    bad_kind = vector_collection("BadKind")
    bad_kind.vectorizer.kind = 99  # type: ignore[assignment]
    bad_distance = vector_collection("BadDistance")
    bad_distance.vectorizer.distance = 99  # type: ignore[assignment]
    for bad, field in (
        (bad_type, "data_type"),
        (bad_kind, "vectorizer.kind"),
        (bad_distance, "vectorizer.distance"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await first.stub.CreateCollection(pb.CreateCollectionRequest(collection=bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.name
        info = error_info(caught.value)
        assert info is not None and info.metadata["field"].endswith(field), info
    await first.stop()
    again = await make_retrieval()
    listed = await again.stub.ListCollections(pb.ListCollectionsRequest())
    assert sorted(c.name for c in listed.collections) == sorted(names)
    got = await again.stub.GetCollection(pb.GetCollectionRequest(name="EveryType"))
    assert [p.data_type for p in got.collection.properties] == types
