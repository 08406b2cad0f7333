"""Filtered Search and CountObjects with and without payload indexes (``payload_index.py``).

The retrieval service runs as deployed (bench/stack.py): its own process, qdrant-edge in
its data dir, a collection of N objects with every property type, created (so indexed) by
the service and loaded with ImportObjects (which ends with the engine's optimize). Its
filtered calls are timed through gRPC. The engine with and without the indexes is timed in
this process, as bench/retrieval.py times the engine, on byte copies of the service's
shard taken once it is optimized and flushed: one copy as it is, one whose indexes are
dropped (what a collection made before indexes looks like); each filter runs on both in
turn, so load from elsewhere hits both alike. A call without indexes is how long the
service's one engine thread is held, every tenant's calls waiting behind it. Last, the
copy without indexes is opened by ``EdgeStore`` as the service opens its data dir at
start: how soon it answers, and when the missing indexes, built after that, are done.

Filters (N = 100,000): a text property EQUAL to one of 1000 values (~0.1 %), the same
objects by TEXT_MATCH (which no index serves: both engine columns read payloads), an int
range (~0.1 %), a date range (one day of a year, ~0.3 %), a bool EQUAL (~50 %), and four
ANDed. Search is near_vector, top 10, with the filter. The two text rows are also timed on
a third copy whose text property has a full-text index in place of its keyword index (what
the service does not do: docs/retrieval.md, "Payload indexes").

    .venv/bin/python bench/filters.py [--objects 100000] [--queries 50] [--dim 64]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
for quiet in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
    os.environ.setdefault(quiet, "1")

import numpy as np  # noqa: E402
import qdrant_edge as qe  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from bench.report import machine  # noqa: E402
from bench.stack import Stack, peer_channel  # noqa: E402
from services.common.auth import DEFAULT_TENANT  # noqa: E402
from services.retrieval import edge_store  # noqa: E402
from services.retrieval.edge_store import EdgeStore  # noqa: E402
from services.retrieval.filters import build_filter  # noqa: E402
from services.retrieval.tenancy import storage_name  # noqa: E402

NAME = "Filtered"
ENGINE_NAME = storage_name(DEFAULT_TENANT, NAME)
BATCH = 1000
CATEGORIES = 1000
START = datetime(2024, 1, 1, tzinfo=UTC)
PROPERTIES = [
    pb.Property(name="category", data_type=pb.DATA_TYPE_TEXT),
    pb.Property(name="tags", data_type=pb.DATA_TYPE_TEXT_ARRAY),
    pb.Property(name="n", data_type=pb.DATA_TYPE_INT),
    pb.Property(name="price", data_type=pb.DATA_TYPE_NUMBER),
    pb.Property(name="flag", data_type=pb.DATA_TYPE_BOOL),
    pb.Property(name="date", data_type=pb.DATA_TYPE_DATE),
]
TYPES: dict[str, int] = {p.name: int(p.data_type) for p in PROPERTIES}


def value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int | float):
        out.number_value = v
    else:
        out.string_value = v
    return out


def cond(prop: str, op: Any, v: Any) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(property=prop, operator=op, value=value(v)))


def all_of(*filters: pb.Filter) -> pb.Filter:
    return pb.Filter(all_of=pb.FilterGroup(filters=list(filters)))


def filters(objects: int) -> dict[str, pb.Filter]:
    n_lo, n_hi = objects // 2, objects // 2 + objects // 1000
    day = (START + timedelta(days=100)).isoformat().replace("+00:00", "Z")
    next_day = (START + timedelta(days=101)).isoformat().replace("+00:00", "Z")
    text = cond("category", pb.OPERATOR_EQUAL, "c-0042")
    ints = all_of(
        cond("n", pb.OPERATOR_GREATER_THAN_EQUAL, n_lo), cond("n", pb.OPERATOR_LESS_THAN, n_hi)
    )
    dates = all_of(
        cond("date", pb.OPERATOR_GREATER_THAN_EQUAL, day),
        cond("date", pb.OPERATOR_LESS_THAN, next_day),
    )
    flag = cond("flag", pb.OPERATOR_EQUAL, True)
    return {
        "text EQUAL (0.1 %)": text,
        # "c-0042" is the words "c" and "0042": the same objects, found by word.
        "text TEXT_MATCH (0.1 %)": cond("category", pb.OPERATOR_TEXT_MATCH, "0042"),
        "int range (0.1 %)": ints,
        "date range (1 day: 0.3 %)": dates,
        "bool EQUAL (50 %)": flag,
        "text AND int AND date AND bool": all_of(text, ints, dates, flag),
    }


def objects(count: int, dim: int, rng: random.Random) -> list[pb.DataObject]:
    vectors = np.random.default_rng(rng.randrange(2**32)).standard_normal((count, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for i, vector in enumerate(vectors):
        props = struct_pb2.Struct()
        props.update(
            {
                "category": f"c-{rng.randrange(CATEGORIES):04d}",
                "tags": rng.sample(["red", "green", "blue", "small", "large"], 2),
                "n": i,
                "price": rng.randrange(100_000) / 100,
                "flag": rng.random() < 0.5,
                "date": (START + timedelta(seconds=rng.randrange(365 * 86400)))
                .isoformat()
                .replace("+00:00", "Z"),
            }
        )
        out.append(pb.DataObject(properties=props, vector=vector.tolist()))
    return out


async def load(stub: pb_grpc.RetrievalServiceStub, items: list[pb.DataObject]) -> None:
    started = time.perf_counter()
    for start in range(0, len(items) - 1, BATCH):
        batch = items[start : min(start + BATCH, len(items) - 1)]
        await stub.UpsertObjects(pb.UpsertObjectsRequest(collection=NAME, objects=batch))
    took = time.perf_counter() - started
    started = time.perf_counter()

    async def last() -> Any:
        yield pb.ImportObjectsRequest(collection=NAME, objects=items[-1:])

    await stub.ImportObjects(last())  # ends with optimize(): the HNSW graph is built here
    optimize = time.perf_counter() - started
    print(f"loaded {len(items)} objects in {took:.1f}s; optimize {optimize:.1f}s", flush=True)


async def timed_ms(fn: Callable[[], Awaitable[Any]], times: list[float]) -> None:
    started = time.perf_counter()
    await fn()
    times.append((time.perf_counter() - started) * 1000)


async def engine_calls(
    store: EdgeStore,
    where: Any,
    vector: list[float],
    label: str,
    store_label: str,
    engine_ms: dict[tuple[str, str, str], list[float]],
) -> None:
    """One filtered count and one filtered top-10 query on ``store``, timed."""
    await timed_ms(
        lambda: store.count(ENGINE_NAME, where), engine_ms[(label, "count", store_label)]
    )
    await timed_ms(
        lambda: store.query_dense(ENGINE_NAME, vector, where, 10, 0, False),
        engine_ms[(label, "search", store_label)],
    )


async def copy_shard(stack: Stack, name: str) -> Path:
    copy = stack.work / name
    await asyncio.to_thread(shutil.rmtree, copy, True)
    await asyncio.to_thread(shutil.copytree, stack.work / "retrieval" / "qdrant", copy)
    return copy


def drop_indexes(root: Path) -> list[str]:
    """The copy as a collection made before payload indexes: its indexes dropped."""
    shard = qe.EdgeShard.load(str(root / "collections" / ENGINE_NAME))
    keys = list(shard.info().payload_schema)
    for key in keys:
        shard.update(qe.UpdateOperation.delete_field_index(key))
    assert not shard.info().payload_schema
    shard.flush()
    shard.close()
    return keys


# The rows also timed on a copy whose text property has a full-text index in place of its
# keyword index: what a full-text index would give TEXT_MATCH, and take from EQUAL.
FULL_TEXT_ROWS = ("text EQUAL (0.1 %)", "text TEXT_MATCH (0.1 %)")


def full_text_indexes(root: Path) -> None:
    """The copy with full-text indexes (words, lower-cased, as the engine's check of the
    payload reads them) on the keys TEXT_MATCH reads: ``p.category``'s keyword index goes,
    Qdrant keeps one index per key."""
    shard = qe.EdgeShard.load(str(root / "collections" / ENGINE_NAME))
    params = qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True)
    for key in ("p.category", "n.category"):
        shard.update(qe.UpdateOperation.create_field_index(key, params))
    assert shard.info().payload_schema["p.category"].data_type == qe.PayloadSchemaType.Text
    shard.flush()
    shard.close()


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    wanted = filters(args.objects)
    async with Stack() as stack:
        service = await stack.retrieval(max_batch_size=BATCH)
        collection = pb.Collection(
            name=NAME,
            properties=PROPERTIES,
            vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=args.dim),
            keyword_index=False,
        )
        queries = np.random.default_rng(7).standard_normal((args.queries, args.dim))
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        vectors = [q.astype(np.float32).tolist() for q in queries]
        grpc_ms: dict[tuple[str, str], list[float]] = {}
        counts: dict[str, int] = {}
        async with peer_channel(service.address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            await stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
            await load(stub, objects(args.objects, args.dim, rng))
            for label, flt in wanted.items():
                count = await stub.CountObjects(pb.CountObjectsRequest(collection=NAME, filter=flt))
                counts[label] = count.count
                for op in ("count", "search"):
                    grpc_ms[(label, op)] = []
                count_request = pb.CountObjectsRequest(collection=NAME, filter=flt)
                for vector in vectors:
                    search = pb.SearchRequest(
                        collection=NAME,
                        near_vector=pb.NearVector(vector=vector),
                        filter=flt,
                        limit=10,
                    )
                    started = time.perf_counter()
                    await stub.CountObjects(count_request)
                    grpc_ms[(label, "count")].append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await stub.Search(search)
                    grpc_ms[(label, "search")].append((time.perf_counter() - started) * 1000)
        with_copy = await copy_shard(stack, "with-indexes")
        without_copy = await copy_shard(stack, "without-indexes")
        migrate_copy = await copy_shard(stack, "migrated")
        full_text_copy = await copy_shard(stack, "full-text")
        dropped = await asyncio.to_thread(drop_indexes, without_copy)
        await asyncio.to_thread(drop_indexes, migrate_copy)
        await asyncio.to_thread(full_text_indexes, full_text_copy)
        indexed, plain, full_text = (
            EdgeStore(with_copy),
            EdgeStore(without_copy),
            EdgeStore(full_text_copy),
        )
        await indexed.open()
        # Opened as the code before payload indexes did: no index created after open.
        with mock.patch.object(edge_store, "create_indexes", lambda *args, **kwargs: {}):
            for store in (plain, full_text):
                await store.open()
                await store.migrated()
        assert not await plain.indexes(ENGINE_NAME)
        engine_ms: dict[tuple[str, str, str], list[float]] = {}
        try:
            for label, flt in wanted.items():
                where = build_filter(flt, TYPES)
                for store_label in ("with", "without", "full-text"):
                    for op in ("count", "search"):
                        engine_ms[(label, op, store_label)] = []
                stores = [("with", indexed), ("without", plain)]
                if label in FULL_TEXT_ROWS:
                    stores.append(("full-text", full_text))
                for vector in vectors:
                    for store_label, store in stores:
                        await engine_calls(store, where, vector, label, store_label, engine_ms)
                hits = [await s.count(ENGINE_NAME, where) for _, s in stores]
                assert hits == [counts[label]] * len(stores), (label, hits, counts[label])
        finally:
            for store in (indexed, plain, full_text):
                await store.close()
        started = time.perf_counter()
        migrated = EdgeStore(migrate_copy)
        await migrated.open()
        open_s = time.perf_counter() - started
        await migrated.migrated()
        migration_s = time.perf_counter() - started
        rebuilt = await migrated.indexes(ENGINE_NAME)
        await migrated.close()
        assert set(rebuilt) == set(dropped), (rebuilt, dropped)

    print(
        f"\n{args.objects:,} objects x {args.dim} dims, one call in flight, {args.queries} "
        f"calls each, p50 ms; {machine()}"
    )
    print(
        f"{'filter':<32} {'matches':>8} | {'op':<6} | {'gRPC (indexed)':>14} | "
        f"{'engine indexed':>14} | {'engine no index':>15} | {'ratio':>6}"
    )
    for label in wanted:
        for op in ("count", "search"):
            g = statistics.median(grpc_ms[(label, op)])
            w = statistics.median(engine_ms[(label, op, "with")])
            wo = statistics.median(engine_ms[(label, op, "without")])
            print(
                f"{label:<32} {counts[label]:>8} | {op:<6} | {g:>14.3f} | {w:>14.3f} | "
                f"{wo:>15.3f} | {wo / w:>5.1f}x"
            )
    print(
        "\nthe text property with a full-text index instead of its keyword index "
        "(one index per key; not what the service makes), engine p50 ms:"
    )
    for label in FULL_TEXT_ROWS:
        for op in ("count", "search"):
            ft = statistics.median(engine_ms[(label, op, "full-text")])
            w = statistics.median(engine_ms[(label, op, "with")])
            print(f"{label:<32} | {op:<6} | full-text {ft:>9.3f} | keyword (ours) {w:>9.3f}")
    print(
        f"\nopening the copy without indexes over {args.objects:,} objects: EdgeStore.open "
        f"returned in {open_s:.1f}s; the {len(dropped)} missing indexes were built after it, "
        f"done at {migration_s:.1f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50, help="calls per filter and op")
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
