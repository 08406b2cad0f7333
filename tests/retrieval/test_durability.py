"""Data and schemas survive a restart: a graceful one, and kill -9 after an acknowledged write."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

from services.devlaunch.processes import free_port
from tests.retrieval.conftest import MakeRetrieval, vector_collection
from tests.retrieval.data import DIMS, article_objects, articles
from tests.support.processes import wait_serving

ROOT = Path(__file__).resolve().parents[2]


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
    port = free_port()
    env = {
        **os.environ,
        "GENSEARCH_DATA_DIR": str(data_dir),
        "GENSEARCH_RETRIEVAL_PORT": str(port),
        "GENSEARCH_RETRIEVAL_METRICS_PORT": "0",
        "GENSEARCH_RETRIEVAL_QDRANT_URL": "",
        "GENSEARCH_API_KEYS": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.retrieval", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        await wait_serving(address, proc, service="gensearch.retrieval.v1.RetrievalService")
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
