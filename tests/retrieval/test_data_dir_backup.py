"""An operator's backup of retrieval's data dir (docs/operations.md, "Backups and
restores"): a copy taken while the service was stopped serves the same objects, and a data
dir that cannot be opened stops the service at start with one line naming the path and
the setting, not a traceback."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

from tests.retrieval.conftest import vector_collection
from tests.retrieval.data import DIMS, article_objects, articles
from tests.support.processes import start_serving

ROOT = Path(__file__).resolve().parents[2]
RETRIEVAL = "gensearch.retrieval.v1.RetrievalService"


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")},
        "GENSEARCH_DATA_DIR": str(data_dir),
        "GENSEARCH_RETRIEVAL_PORT": "0",
        "GENSEARCH_RETRIEVAL_METRICS_PORT": "0",
        "GENSEARCH_RETRIEVAL_GRACE_PERIOD": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    }


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0


@pytest.mark.slow  # starts the service process twice
async def test_a_copy_taken_while_stopped_serves_the_same_objects(tmp_path: Path) -> None:
    proc, address = await start_serving(
        "services.retrieval", _env(tmp_path / "live"), service=RETRIEVAL, cwd=ROOT
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            await stub.CreateCollection(
                pb.CreateCollectionRequest(collection=vector_collection("Kept", DIMS))
            )
            await stub.UpsertObjects(
                pb.UpsertObjectsRequest(collection="Kept", objects=article_objects())
            )
    finally:
        await _stop(proc)
    shutil.copytree(tmp_path / "live", tmp_path / "restored")
    shutil.rmtree(tmp_path / "live")

    proc, address = await start_serving(
        "services.retrieval", _env(tmp_path / "restored"), service=RETRIEVAL, cwd=ROOT
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            count = await stub.CountObjects(pb.CountObjectsRequest(collection="Kept"))
            assert count.count == len(articles())
            got = await stub.GetObject(
                pb.GetObjectRequest(collection="Kept", id=articles()[3]["id"])
            )
            assert got.object.properties["title"] == articles()[3]["props"]["title"]
    finally:
        await _stop(proc)


def _schema_not_json(collections: Path) -> None:
    (collections / "Books").mkdir(parents=True)
    (collections / "Books.json").write_text("{cut short", encoding="utf-8")


def _engine_files_missing(collections: Path) -> None:
    # A partial copy: the schema came along, the engine's files did not.
    (collections / "Books").mkdir(parents=True)
    (collections / "Books.json").write_text("{}", encoding="utf-8")


def _engine_files_corrupt(collections: Path) -> None:
    (collections / "Books").mkdir(parents=True)
    (collections / "Books" / "segments").write_bytes(b"\x00not a directory")
    (collections / "Books.json").write_text("{}", encoding="utf-8")


@pytest.mark.parametrize("spoil", [_schema_not_json, _engine_files_missing, _engine_files_corrupt])
async def test_a_data_dir_that_cannot_be_opened_stops_with_one_line(
    tmp_path: Path, spoil: object
) -> None:
    collections = tmp_path / "qdrant" / "collections"
    spoil(collections)  # type: ignore[operator]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.retrieval", cwd=ROOT, env=_env(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert str(collections / "Books") in last
    assert f"GENSEARCH_DATA_DIR={tmp_path}" in last
    assert "Backups and restores" in last
