"""Retrieval benchmark: import throughput and Search latency through gRPC beside the engine.

One run, on loopback: the retrieval service (qdrant-edge in a temp dir) serves from a
background thread with its own event loop; the client runs on the main loop, one call in
flight. Measured side by side:

  * import throughput (objects/s) through ImportObjects: caller-supplied 384-dim vectors
    (no embedding), and short texts embedded by the local MiniLM model;
  * Search (near_vector, top 10, 384-dim random client vectors) p50/p99 through gRPC at
    each size, beside the engine's own query time for the same queries, measured
    in-process on the same shard (``EdgeStore.query_now``) in the same run;
  * embedding time per query (local MiniLM, one short question) and near_text p50.

    .venv/bin/python bench/retrieval.py [--sizes 10000,100000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from services.retrieval.__main__ import build_server  # noqa: E402
from services.retrieval.edge_store import EdgeStore  # noqa: E402
from services.retrieval.embedders import LocalEmbedder  # noqa: E402
from services.retrieval.settings import RetrievalSettings  # noqa: E402

DIM = 384
BATCH = 1000
WORDS = (  # noqa: SIM905
    "search vector engine query index ranking document model text semantic keyword hybrid "
    "fusion embedding retrieval database collection filter score latency throughput"
).split()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def unit(rng: random.Random) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


class ServerThread:
    """The service on its own event loop, so client and server do not share one."""

    def __init__(self, settings: RetrievalSettings, store: EdgeStore, embedder: LocalEmbedder):
        self.settings, self.store, self.embedder = settings, store, embedder
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await build_server(
            self.settings, port=0, store=self.store, local_embedder=self.embedder
        )
        self.port = await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


async def import_objects(
    stub: pb_grpc.RetrievalServiceStub, name: str, objects: list[pb.DataObject]
) -> pb.ImportObjectsResponse:
    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        for start in range(0, len(objects), BATCH):
            yield pb.ImportObjectsRequest(collection=name, objects=objects[start : start + BATCH])

    return await stub.ImportObjects(stream())


def make_vector_objects(n: int, rng: random.Random) -> list[pb.DataObject]:
    matrix = np.random.default_rng(rng.randrange(2**32)).standard_normal((n, DIM))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    out = []
    for i in range(n):
        props = struct_pb2.Struct()
        props.update({"title": " ".join(rng.sample(WORDS, 6)), "n": i})
        out.append(pb.DataObject(properties=props, vector=matrix[i].tolist()))
    return out


def make_text_objects(n: int, rng: random.Random) -> list[pb.DataObject]:
    out = []
    for _ in range(n):
        props = struct_pb2.Struct()
        props.update({"title": " ".join(rng.sample(WORDS, 10))})
        out.append(pb.DataObject(properties=props))
    return out


async def bench(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    embedder = LocalEmbedder(batch_size=64, threads=args.embed_threads)
    t = time.perf_counter()
    embedder.load()
    print(f"local model loaded in {time.perf_counter() - t:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        settings = RetrievalSettings(data_dir=Path(tmp), max_batch_size=BATCH, log_level="WARNING")
        store = EdgeStore(Path(tmp) / "qdrant")
        with ServerThread(settings, store, embedder) as server:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            stub = pb_grpc.RetrievalServiceStub(channel)
            await run(stub, store, embedder, args, rng)
            await channel.close()
    embedder.close()


async def run(
    stub: pb_grpc.RetrievalServiceStub,
    store: EdgeStore,
    embedder: LocalEmbedder,
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    props = [
        pb.Property(name="title", data_type=pb.DATA_TYPE_TEXT),
        pb.Property(name="n", data_type=pb.DATA_TYPE_INT),
    ]
    # -- import with local embedding -------------------------------------------------------
    texts = make_text_objects(args.embed_objects, rng)
    await stub.CreateCollection(
        pb.CreateCollectionRequest(collection=pb.Collection(name="Texts", properties=props))
    )
    t = time.perf_counter()
    resp = await import_objects(stub, "Texts", texts)
    took = time.perf_counter() - t
    assert resp.imported_count == len(texts), resp
    print(
        f"import, local embedding:  {len(texts) / took:8.0f} objects/s "
        f"({len(texts)} objects in {took:.1f}s)"
    )
    # -- embedding per query + near_text ---------------------------------------------------
    embed_times = []
    for i in range(args.embed_queries):
        t = time.perf_counter()
        await embedder.embed([f"how does {WORDS[i % len(WORDS)]} ranking work"])
        embed_times.append((time.perf_counter() - t) * 1000)
    near_text = []
    for i in range(args.embed_queries):
        request = pb.SearchRequest(
            collection="Texts", near_text=pb.NearText(text=f"{WORDS[i % len(WORDS)]} fusion")
        )
        t = time.perf_counter()
        await stub.Search(request)
        near_text.append((time.perf_counter() - t) * 1000)
    print(
        f"embedding per query (MiniLM, in-process): p50 {statistics.median(embed_times):.2f} ms, "
        f"p99 {pct(embed_times, 0.99):.2f} ms"
    )
    print(
        f"near_text Search through gRPC ({len(texts)} objects): "
        f"p50 {statistics.median(near_text):.2f} ms, p99 {pct(near_text, 0.99):.2f} ms"
    )
    # -- vectors: import and search at each size -------------------------------------------
    collection = pb.Collection(
        name="Vectors",
        properties=props,
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=DIM),
        keyword_index=False,
    )
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    loaded = 0
    rows = []
    for size in args.sizes:
        objects = make_vector_objects(size - loaded, rng)
        t = time.perf_counter()
        for start in range(0, len(objects), BATCH):
            batch = objects[start : start + BATCH]
            await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Vectors", objects=batch))
        took = time.perf_counter() - t
        # ImportObjects ends with the engine's optimize(): the HNSW index is built here.
        t = time.perf_counter()
        await import_objects(stub, "Vectors", make_vector_objects(1, rng))
        indexing = time.perf_counter() - t
        loaded = size
        print(
            f"import, client vectors:   {len(objects) / took:8.0f} objects/s "
            f"({len(objects)} objects in {took:.1f}s; then optimize/index {indexing:.1f}s)"
        )
        queries = [unit(rng) for _ in range(args.queries)]
        for q in queries[:50]:  # warm up both paths
            store.query_now("Vectors", q, 10)
            await stub.Search(
                pb.SearchRequest(collection="Vectors", near_vector=pb.NearVector(vector=q))
            )
        engine, grpc_ms, server_ms = [], [], []
        for q in queries:
            t = time.perf_counter()
            store.query_now("Vectors", q, 10)
            engine.append((time.perf_counter() - t) * 1000)
            request = pb.SearchRequest(
                collection="Vectors", near_vector=pb.NearVector(vector=q), limit=10
            )
            t = time.perf_counter()
            res = await stub.Search(request)
            grpc_ms.append((time.perf_counter() - t) * 1000)
            server_ms.append(res.query_ms)
        rows.append((size, engine, server_ms, grpc_ms))
    print()
    print("near_vector top-10, 384 dims, one call in flight (ms)")
    print(f"{'objects':>8} | {'engine p50':>10} {'p99':>6} | {'gRPC p50':>8} {'p99':>6} | "
          f"{'overhead p50':>12} | {'query_ms p50':>12}")  # fmt: skip
    for size, engine, server_ms, grpc_ms in rows:
        e50, g50 = statistics.median(engine), statistics.median(grpc_ms)
        print(
            f"{size:>8} | {e50:>10.3f} {pct(engine, 0.99):>6.3f} | {g50:>8.3f} "
            f"{pct(grpc_ms, 0.99):>6.3f} | {g50 - e50:>12.3f} | "
            f"{statistics.median(server_ms):>12.3f}"
        )
    print("target: gRPC p50 - engine p50 <= 2 ms (plus embedding for near_text)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--embed-objects", type=int, default=2000)
    parser.add_argument("--embed-queries", type=int, default=200)
    parser.add_argument("--embed-threads", type=int, default=1, help="torch threads (0 = all)")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
