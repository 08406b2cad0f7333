"""Data and schemas survive a restart: a graceful one, and kill -9 after an acknowledged write."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

from tests.retrieval.conftest import MakeRetrieval, vector_collection
from tests.retrieval.data import DIMS, article_objects, articles
from tests.retrieval.test_engine_flush import flushed_up_to
from tests.support.processes import start_serving

ROOT = Path(__file__).resolve().parents[2]
RETRIEVAL = "gensearch.retrieval.v1.RetrievalService"


async def test_restart_keeps_schema_and_objects(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    first = await make_retrieval(data_dir=tmp_path / "d")
    collection = vector_collection("Kept", DIMS, description="stays")
    created = (
        await first.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    ).collection
    await first.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Kept", objects=article_objects())
    )
    await first.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Gone", DIMS))
    )
    await first.stub.DeleteCollection(pb.DeleteCollectionRequest(name="Gone"))
    await first.stop()

    second = await make_retrieval(data_dir=tmp_path / "d")
    got = await second.stub.GetCollection(pb.GetCollectionRequest(name="Kept"))
    assert got.collection == created
    assert got.object_count == 12
    listed = await second.stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["Kept"]
    target = articles()[4]
    res = await second.stub.Search(
        pb.SearchRequest(
            collection="Kept", near_vector=pb.NearVector(vector=target["vector"]), limit=1
        )
    )
    assert res.hits[0].id == target["id"]
    res = await second.stub.Search(
        pb.SearchRequest(collection="Kept", keyword=pb.Keyword(text="sourdough"))
    )
    assert res.hits[0].properties["title"].startswith("Bread")


async def test_kill_9_after_acknowledged_write(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    data_dir = tmp_path / "killed"
    proc, address = await _serve_alone(data_dir)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            await stub.CreateCollection(
                pb.CreateCollectionRequest(collection=vector_collection("K", DIMS))
            )
            resp = await stub.UpsertObjects(
                pb.UpsertObjectsRequest(collection="K", objects=article_objects())
            )
            assert len(resp.ids) == 12  # acknowledged
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    restarted = await make_retrieval(data_dir=data_dir)
    assert (await restarted.stub.CountObjects(pb.CountObjectsRequest(collection="K"))).count == 12
    got = await restarted.stub.GetObject(
        pb.GetObjectRequest(collection="K", id=articles()[7]["id"])
    )
    assert got.object.properties["title"] == articles()[7]["props"]["title"]


async def _serve_alone(data_dir: Path, **settings: str) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m services.retrieval`` on the embedded engine in ``data_dir``, with
    ``settings`` (their ``GENSEARCH_RETRIEVAL_`` variables)."""
    env = {
        **os.environ,
        "GENSEARCH_DATA_DIR": str(data_dir),
        "GENSEARCH_RETRIEVAL_PORT": "0",
        "GENSEARCH_RETRIEVAL_METRICS_PORT": "0",
        "GENSEARCH_RETRIEVAL_QDRANT_URL": "",
        "GENSEARCH_API_KEYS": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        **{f"GENSEARCH_RETRIEVAL_{name.upper()}": value for name, value in settings.items()},
    }
    return await start_serving("services.retrieval", env, service=RETRIEVAL, cwd=ROOT)


async def _lost_one_and_renamed_one(
    stub: pb_grpc.RetrievalServiceStub, deleted: str, renamed: str
) -> None:
    """Collection "Kept", restarted, holds 11 of the 12 articles: ``deleted`` is gone
    (NOT_FOUND) and ``renamed`` has the title "Kumquats, renamed"."""
    count = await stub.CountObjects(pb.CountObjectsRequest(collection="Kept"))
    assert count.count == 11
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetObject(pb.GetObjectRequest(collection="Kept", id=deleted))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    got = await stub.GetObject(pb.GetObjectRequest(collection="Kept", id=renamed))
    assert got.object.properties["title"] == "Kumquats, renamed"


@pytest.mark.slow  # starts the service process twice
async def test_kill_9_after_small_imports_and_deletes(tmp_path: Path) -> None:
    """Import streams far below IMPORT_OPTIMIZE_MIN_OBJECTS end with no optimize and no
    flush: what they acknowledged is in the engine's write-ahead log all the same, as are
    deletes of objects and of a collection, and survives kill -9 (two in a row: the log
    replayed, written to and killed again)."""
    objects, rows = article_objects(), articles()

    async def stream(name: str, batches: list[list[pb.DataObject]]) -> AsyncIterator[Any]:
        for n, batch in enumerate(batches):
            yield pb.ImportObjectsRequest(collection=name if n == 0 else "", objects=batch)

    proc, address = await _serve_alone(tmp_path)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            for name in ("Kept", "Dropped"):
                await stub.CreateCollection(
                    pb.CreateCollectionRequest(collection=vector_collection(name, DIMS))
                )
            done = await stub.ImportObjects(stream("Kept", [objects[:5], objects[5:]]))
            assert done.imported_count == 12
            await stub.ImportObjects(stream("Dropped", [objects[:2]]))
            await stub.DeleteCollection(pb.DeleteCollectionRequest(name="Dropped"))
            deleted = await stub.DeleteObjects(
                pb.DeleteObjectsRequest(collection="Kept", ids=[rows[0]["id"]])
            )
            assert deleted.deleted_count == 1
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

        proc, address = await _serve_alone(tmp_path)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            changed = pb.DataObject()
            changed.CopyFrom(objects[2])
            changed.properties["title"] = "Kumquats, renamed"
            await stub.ImportObjects(stream("Kept", [[changed]]))
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

        proc, address = await _serve_alone(tmp_path)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            listed = await stub.ListCollections(pb.ListCollectionsRequest())
            assert [c.name for c in listed.collections] == ["Kept"]
            await _lost_one_and_renamed_one(stub, rows[0]["id"], rows[2]["id"])
            found = await stub.Search(
                pb.SearchRequest(collection="Kept", keyword=pb.Keyword(text="kumquats"))
            )
            assert [hit.id for hit in found.hits] == [rows[2]["id"]]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow  # starts the service process twice
async def test_kill_9_after_flushes_and_writes_since(tmp_path: Path) -> None:
    """UpsertObjects alone flush the collection every FLUSH_AFTER_OBJECTS objects (its
    write-ahead log truncated up to there): a kill -9 after more acknowledged writes
    still loses nothing, neither what was flushed nor what the log holds since."""
    objects, rows = article_objects(), articles()
    proc, address = await _serve_alone(
        tmp_path, flush_after_objects="5", flush_interval_seconds="0"
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            await stub.CreateCollection(
                pb.CreateCollectionRequest(collection=vector_collection("Kept", DIMS))
            )
            for obj in objects:  # 12 one at a time: flushed after 5 and 10
                await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Kept", objects=[obj]))
            flushed = flushed_up_to(tmp_path, "Kept")
            assert flushed is not None
            changed = pb.DataObject()
            changed.CopyFrom(objects[3])
            changed.properties["title"] = "Kumquats, renamed"
            await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Kept", objects=[changed]))
            await stub.DeleteObjects(
                pb.DeleteObjectsRequest(collection="Kept", ids=[rows[0]["id"]])
            )
            assert flushed_up_to(tmp_path, "Kept") == flushed  # those two only in the log
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

        proc, address = await _serve_alone(tmp_path)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            await _lost_one_and_renamed_one(stub, rows[0]["id"], rows[3]["id"])
            last = await stub.GetObject(pb.GetObjectRequest(collection="Kept", id=rows[11]["id"]))
            assert last.object.properties["title"] == rows[11]["props"]["title"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
