"""qdrant-edge flushes a collection written to once it took FLUSH_AFTER_OBJECTS objects
since its last flush, and once a write waited FLUSH_INTERVAL_SECONDS unflushed: its
write-ahead log is truncated up to there (``wal/first-index`` records the last write it
no longer needs to replay). Before, only a clean shutdown or a large import's optimize
flushed, and UpsertObjects alone grew the log, and the replay after kill -9, without
bound."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from prometheus_client import REGISTRY

from services.common.auth import DEFAULT_TENANT
from services.retrieval.tenancy import storage_name
from tests.retrieval.conftest import MakeRetrieval, Retrieval, vector_collection
from tests.retrieval.data import DIMS, article_objects

NAME = "Flushed"


def flushed_up_to(data_dir: Path, name: str = NAME) -> int | None:
    """The last write of collection ``name`` its WAL need not replay (qdrant-edge writes
    it at a flush); None: never flushed."""
    shard = data_dir / "qdrant" / "collections" / storage_name(DEFAULT_TENANT, name)
    marker = shard / "wal" / "first-index"
    if not marker.exists():
        return None
    return int(json.loads(marker.read_text())["ack_index"])


def flushes(trigger: str) -> float:
    value = REGISTRY.get_sample_value(
        "gensearch_retrieval_engine_flushes_total", {"trigger": trigger}
    )
    return value or 0.0


async def _flushing(
    make_retrieval: MakeRetrieval, tmp_path: Path, *, objects: int, seconds: float
) -> tuple[Retrieval, Path]:
    """A retrieval service holding an empty collection NAME, flushing it every ``objects``
    objects written (FLUSH_AFTER_OBJECTS) and ``seconds`` after a write left unflushed
    (FLUSH_INTERVAL_SECONDS; 0: neither); and its data directory."""
    data_dir = tmp_path / "data"
    harness = await make_retrieval(
        data_dir=data_dir, flush_after_objects=objects, flush_interval_seconds=seconds
    )
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection(NAME, DIMS))
    )
    return harness, data_dir


async def test_a_collection_is_flushed_every_flush_after_objects_upserted(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    harness, data_dir = await _flushing(make_retrieval, tmp_path, objects=5, seconds=0)
    objects = article_objects()
    before, counted = flushed_up_to(data_dir), flushes("writes")

    async def upsert(batch: list[pb.DataObject]) -> None:
        for obj in batch:  # one object a call, as a trickle of single writes comes
            await harness.stub.UpsertObjects(
                pb.UpsertObjectsRequest(collection=NAME, objects=[obj])
            )

    await upsert(objects[:4])
    assert flushed_up_to(data_dir) == before  # 4 of 5: not yet
    await upsert(objects[4:5])
    first = flushed_up_to(data_dir)
    assert first is not None and (before is None or first > before)
    await upsert(objects[5:9])
    assert flushed_up_to(data_dir) == first
    await upsert(objects[9:10])
    assert flushed_up_to(data_dir) == first + 5  # the log kept nothing before them
    assert flushes("writes") == counted + 2

    # Deletes count too.
    ids = [o.id for o in objects[:5]]
    await harness.stub.DeleteObjects(pb.DeleteObjectsRequest(collection=NAME, ids=ids))
    assert flushed_up_to(data_dir) == first + 6  # one engine write deleted 5 objects
    count = await harness.stub.CountObjects(pb.CountObjectsRequest(collection=NAME))
    assert count.count == 5


async def test_a_write_left_alone_is_flushed_after_the_interval(
    make_retrieval: MakeRetrieval, tmp_path: Path
) -> None:
    harness, data_dir = await _flushing(make_retrieval, tmp_path, objects=0, seconds=0.2)
    counted = flushes("interval")
    await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection=NAME, objects=article_objects()[:1])
    )
    for _ in range(600):  # a bound on the wait, not a timing assertion
        if flushes("interval") > counted:
            break
        await asyncio.sleep(0.05)
    assert flushes("interval") > counted
    assert flushed_up_to(data_dir) is not None
