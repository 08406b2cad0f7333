"""Retrieval benchmark: import throughput and Search latency through gRPC beside the engine.

The retrieval service runs as deployed (bench/stack.py): its own process, qdrant-edge in
its data dir; this process is the client, one call in flight. The engine's own time is
measured in this process on a byte copy of the service's shard, taken once the import has
been indexed and flushed (a qdrant-edge shard opens in one process at a time): the same
segments and HNSW graph, checked by comparing hits. Each query goes to the engine copy and
through gRPC in turn, so load from elsewhere hits both alike. Measured:

  * import throughput (objects/s) with client vectors: 384-dim vectors in 1000-object
    UpsertObjects batches (no embedding), then the index build (ImportObjects ends with
    the engine's optimize);
  * Search (near_vector, top 10) p50/p99 through gRPC at each size, beside the engine's
    own p50/p99 for the same queries, the engine time the service reports itself
    (``query_ms``) and a bare gRPC round trip to the same process (grpc.health.v1 Check);
  * import with local embedding (short texts, MiniLM in the service), embedding time per
    query (MiniLM timed in this process) and near_text Search p50 through gRPC.

    .venv/bin/python bench/retrieval.py [--sizes 10000,100000] [--queries 1000]
    .venv/bin/python bench/retrieval.py --summary     # the headline figures only, as JSON
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
for quiet in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
    os.environ.setdefault(quiet, "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench.report import Figures, machine, pct  # noqa: E402
from bench.stack import ServiceProcess, Stack, peer_channel  # noqa: E402
from services.common.auth import DEFAULT_TENANT  # noqa: E402
from services.retrieval.edge_store import EdgeStore  # noqa: E402
from services.retrieval.tenancy import storage_name  # noqa: E402

# The shard the service keeps "Vectors" in (the bench calls as the default tenant).
ENGINE_NAME = storage_name(DEFAULT_TENANT, "Vectors")

DIM = 384
BATCH = 1000
HEADLINE_SIZE = 10_000
WORDS = (  # noqa: SIM905
    "search vector engine query index ranking document model text semantic keyword hybrid "
    "fusion embedding retrieval database collection filter score latency throughput"
).split()
PROPERTIES = [
    pb.Property(name="title", data_type=pb.DATA_TYPE_TEXT),
    pb.Property(name="n", data_type=pb.DATA_TYPE_INT),
]


def unit_vectors(n: int, rng: random.Random) -> np.ndarray:
    matrix = np.random.default_rng(rng.randrange(2**32)).standard_normal((n, DIM))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def vector_objects(n: int, rng: random.Random) -> list[pb.DataObject]:
    out = []
    for i, vector in enumerate(unit_vectors(n, rng)):
        props = struct_pb2.Struct()
        props.update({"title": " ".join(rng.sample(WORDS, 6)), "n": i})
        out.append(pb.DataObject(properties=props, vector=vector.tolist()))
    return out


def text_objects(n: int, rng: random.Random) -> list[pb.DataObject]:
    out = []
    for _ in range(n):
        props = struct_pb2.Struct()
        props.update({"title": " ".join(rng.sample(WORDS, 10))})
        out.append(pb.DataObject(properties=props))
    return out


async def import_objects(
    stub: pb_grpc.RetrievalServiceStub, name: str, objects: list[pb.DataObject]
) -> pb.ImportObjectsResponse:
    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        for start in range(0, len(objects), BATCH):
            yield pb.ImportObjectsRequest(collection=name, objects=objects[start : start + BATCH])

    return await stub.ImportObjects(stream())


@dataclass
class SizeRow:
    size: int
    grpc_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.rng = random.Random(1)
        self.figures = Figures()
        self.service: ServiceProcess
        self.health: health_pb2_grpc.HealthStub

    async def start(self) -> None:
        self.service = await self.stack.retrieval(max_batch_size=BATCH)

    def stub(self, channel: grpc.aio.Channel) -> pb_grpc.RetrievalServiceStub:
        return pb_grpc.RetrievalServiceStub(channel)

    # -- local embedding -------------------------------------------------------------------
    async def embedding(self) -> None:
        from services.retrieval.embedders import LocalEmbedder

        args = self.args
        texts = text_objects(args.embed_objects, self.rng)
        async with peer_channel(self.service.address) as channel:
            stub = self.stub(channel)
            texts_collection = pb.Collection(name="Texts", properties=PROPERTIES)
            await stub.CreateCollection(pb.CreateCollectionRequest(collection=texts_collection))
            started = time.perf_counter()
            resp = await import_objects(stub, "Texts", texts)
            took = time.perf_counter() - started
            assert resp.imported_count == len(texts), resp
            print(
                f"import, local embedding in the service: {len(texts) / took:8.0f} objects/s "
                f"({len(texts)} objects in {took:.1f}s)"
            )
            near_text = []
            for i in range(args.embed_queries):
                text = pb.NearText(text=f"{WORDS[i % len(WORDS)]} fusion")
                request = pb.SearchRequest(collection="Texts", near_text=text)
                started = time.perf_counter()
                await stub.Search(request)
                near_text.append((time.perf_counter() - started) * 1000)
        embedder = LocalEmbedder(batch_size=64, threads=args.embed_threads)
        await asyncio.to_thread(embedder.load)
        embed_ms = []
        for i in range(args.embed_queries):
            started = time.perf_counter()
            await embedder.embed([f"how does {WORDS[i % len(WORDS)]} ranking work"])
            embed_ms.append((time.perf_counter() - started) * 1000)
        embedder.close()
        print(
            f"embedding one query (MiniLM, {args.embed_threads} torch thread(s), in this "
            f"process): p50 {statistics.median(embed_ms):.2f} ms, p99 {pct(embed_ms, 0.99):.2f} ms"
        )
        print(
            f"near_text Search through gRPC ({len(texts)} objects, embedding included): "
            f"p50 {statistics.median(near_text):.2f} ms, p99 {pct(near_text, 0.99):.2f} ms"
        )

    # -- client vectors: import, then Search beside the engine -----------------------------
    async def vectors(self) -> list[SizeRow]:
        collection = pb.Collection(
            name="Vectors",
            properties=PROPERTIES,
            vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=DIM),
            keyword_index=False,
        )
        async with peer_channel(self.service.address) as channel:
            create = pb.CreateCollectionRequest(collection=collection)
            await self.stub(channel).CreateCollection(create)
        rows = []
        loaded = 0
        async with peer_channel(self.service.address) as channel:
            stub = self.stub(channel)
            self.health = health_pb2_grpc.HealthStub(channel)
            for size in self.args.sizes:
                await self.load(stub, vector_objects(size - loaded, self.rng), first=not loaded)
                loaded = size
                # float32 values, as a protobuf `repeated float` carries them: both paths
                # query the engine with the very same numbers.
                vectors = unit_vectors(self.args.queries, self.rng).astype(np.float32)
                queries = [v.tolist() for v in vectors]
                rows.append(await self.search(stub, queries, SizeRow(size)))
        return rows

    async def load(
        self, stub: pb_grpc.RetrievalServiceStub, objects: list[pb.DataObject], *, first: bool
    ) -> None:
        started = time.perf_counter()
        for start in range(0, len(objects), BATCH):
            batch = objects[start : start + BATCH]
            await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Vectors", objects=batch))
        took = time.perf_counter() - started
        # ImportObjects ends with the engine's optimize(): the HNSW index is built here.
        started = time.perf_counter()
        await import_objects(stub, "Vectors", vector_objects(1, self.rng))
        indexing = time.perf_counter() - started
        rate = len(objects) / took
        print(
            f"import, client vectors: {rate:8.0f} objects/s ({len(objects)} objects in "
            f"{took:.1f}s; then optimize/index {indexing:.1f}s)",
            flush=True,
        )
        if first:
            self.figures.add(
                f"import with client vectors ({len(objects):,} x {DIM} dims)", rate, "objects/s"
            )

    async def search(
        self, stub: pb_grpc.RetrievalServiceStub, queries: list[list[float]], row: SizeRow
    ) -> SizeRow:
        """Each query through gRPC and straight on a copy of the service's shard, in turn."""
        store = await self.engine_copy()
        try:
            requests = [
                pb.SearchRequest(
                    collection="Vectors", near_vector=pb.NearVector(vector=q), limit=10
                )
                for q in queries
            ]
            for q, request in zip(queries[:50], requests[:50], strict=True):  # warm-up
                found = [p.id for p in store.query_now(ENGINE_NAME, q, 10)]
                hits = [h.id for h in (await stub.Search(request)).hits]
                # Proof that the copy is the service's index: the same hits (the service
                # orders equal scores by id, the engine may not).
                assert sorted(found) == sorted(hits), (found, hits)
            for q, request in zip(queries, requests, strict=True):
                started = time.perf_counter()
                store.query_now(ENGINE_NAME, q, 10)
                row.engine_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                res = await stub.Search(request)
                row.grpc_ms.append((time.perf_counter() - started) * 1000)
                row.server_ms.append(res.query_ms)
                # A bare round trip to the same process: gRPC's own share of the above.
                started = time.perf_counter()
                await self.health.Check(health_pb2.HealthCheckRequest())
                row.health_ms.append((time.perf_counter() - started) * 1000)
        finally:
            await store.close()
        return row

    async def engine_copy(self) -> EdgeStore:
        """The engine on a copy of the service's data, opened in this process.

        A qdrant-edge shard opens in one process at a time (its WAL is locked). After
        ImportObjects the service has optimized and flushed the shard and nothing writes to
        it, so a byte copy holds the same segments and the same HNSW graph: the engine
        answers the same queries with the same hits (checked above), timed alone, in turn
        with the calls through gRPC so that load from elsewhere hits both alike."""
        copy = self.stack.work / "engine-copy"
        await asyncio.to_thread(shutil.rmtree, copy, True)
        await asyncio.to_thread(shutil.copytree, self.stack.work / "retrieval" / "qdrant", copy)
        store = EdgeStore(copy)
        await store.open()
        return store

    def report(self, rows: list[SizeRow]) -> None:
        print(f"\nnear_vector top-10, {DIM} dims, one call in flight (ms); {machine()}")
        print(
            f"{'objects':>8} | {'engine p50':>10} {'p99':>6} | {'gRPC p50':>8} {'p99':>6} | "
            f"{'gRPC - engine p50':>17} | {'query_ms p50':>12} | {'Health/Check p50':>16}"
        )
        for row in rows:
            e50, g50 = statistics.median(row.engine_ms), statistics.median(row.grpc_ms)
            print(
                f"{row.size:>8} | {e50:>10.3f} {pct(row.engine_ms, 0.99):>6.3f} | {g50:>8.3f} "
                f"{pct(row.grpc_ms, 0.99):>6.3f} | {g50 - e50:>+17.3f} | "
                f"{statistics.median(row.server_ms):>12.3f} | "
                f"{statistics.median(row.health_ms):>16.3f}"
            )
            self.figures.add(
                f"retrieval Search over the engine p50 ({row.size:,} x {DIM} dims)",
                g50 - e50,
                "ms",
                "≤ 2 ms",
            )
        print("target: gRPC p50 - engine p50 <= 2 ms (plus embedding for near_text)")


async def run(args: argparse.Namespace) -> None:
    async with Stack() as stack:
        bench = Bench(stack, args)
        await bench.start()
        if not args.summary:
            await bench.embedding()
        bench.report(await bench.vectors())
    if args.summary:
        bench.figures.emit()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", help="objects, comma-separated (default 10000,100000)")
    parser.add_argument("--queries", type=int, help="per size (default 1000)")
    parser.add_argument("--embed-objects", type=int, default=2000)
    parser.add_argument("--embed-queries", type=int, default=200)
    parser.add_argument("--embed-threads", type=int, default=1, help="torch threads (0 = all)")
    parser.add_argument(
        "--summary",
        action="store_true",
        help=f"headline figures only (default {HEADLINE_SIZE:,} objects; no embedding), JSON last",
    )
    args = parser.parse_args()
    sizes = args.sizes or (str(HEADLINE_SIZE) if args.summary else "10000,100000")
    args.sizes = [int(size) for size in sizes.split(",")]
    args.queries = args.queries or (500 if args.summary else 1000)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
