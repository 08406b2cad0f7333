"""A repeated 10-hit GenerativeSearch served from the exact generation cache, end to end.

Every service runs as its own process (bench/stack.py), the gateway with a Redis of its own
(a ``redis-server`` process, as ``gensearch up`` starts one) and a fake LLM that takes L.
The first search generates and stores every hit; each repeat is then timed end to end
from the client: search in retrieval, one MGET in Redis, no LLM call. Beside it, the same
search with the cache bypassed (10 LLM calls at once: about L) and the search alone (no
generation), so the figure reads against its floor.

    .venv/bin/python bench/cache.py [--rounds 300] [--latency 0.2] [--summary]

Target (architecture §6): a cached 10-hit generative search ≤ 5 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402

from bench.report import Figures, machine, pct  # noqa: E402
from bench.stack import Stack, load_vectors, provider  # noqa: E402
from services.devlaunch.redis_server import RedisProcess  # noqa: E402

DIM = 8
HITS = 10


def request(mode: int) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Bench",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=HITS,
        generate=gw_pb.Generate(
            single_prompt="Summarise {title}: {body}", cache=gw_pb.GenerationCache(mode=mode)
        ),
    )


async def load(retrieval: ret_grpc.RetrievalServiceStub) -> None:
    await load_vectors(
        retrieval,
        "Bench",
        [{"title": f"Book {i}", "body": f"the story number {i} about search"} for i in range(50)],
        ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
        dim=DIM,
    )


async def timed_search(
    gateway: gw_grpc.GatewayServiceStub, req: gw_pb.GenerativeSearchRequest, cached: bool
) -> float:
    started = time.perf_counter()
    response = await gateway.GenerativeSearch(req, timeout=60)
    elapsed = time.perf_counter() - started
    assert len(response.hits) == HITS
    assert all(h.generation.cached == cached for h in response.hits), "unexpected cache state"
    return elapsed


async def run(args: argparse.Namespace) -> None:
    figures = Figures()
    async with Stack() as stack:
        redis = RedisProcess(stack.work / "redis")
        await redis.start()
        try:
            llm = await stack.fake_llm(args.latency)
            memory, retrieval, generation = await asyncio.gather(
                stack.memory(), stack.retrieval(), stack.generation({"fake": provider(llm)})
            )
            gateway = await stack.gateway(memory, retrieval, generation, redis_url=redis.url)
            stub = gw_grpc.GatewayServiceStub(stack.channel(gateway))
            await load(ret_grpc.RetrievalServiceStub(stack.channel(retrieval)))

            use, bypass = request(gw_pb.CACHE_MODE_USE), request(gw_pb.CACHE_MODE_BYPASS)
            plain = gw_pb.GenerativeSearchRequest()
            plain.CopyFrom(use)
            plain.ClearField("generate")
            await timed_search(stub, use, cached=False)  # generates and stores every hit
            uncached = [await timed_search(stub, bypass, cached=False) for _ in range(3)]
            for _ in range(20):  # warm the channels and pools
                await timed_search(stub, use, cached=True)
            hits: list[float] = []
            searches: list[float] = []
            for _ in range(args.rounds):  # interleaved, so load drifts hit both alike
                hits.append(await timed_search(stub, use, cached=True))
                started = time.perf_counter()
                await stub.GenerativeSearch(plain, timeout=60)
                searches.append(time.perf_counter() - started)
        finally:
            await redis.stop()

    p50 = pct(hits, 0.5) * 1000
    print(f"# {machine()}")
    print(f"cached 10-hit GenerativeSearch, {args.rounds} calls, end to end (ms):")
    print(f"  cache hit        p50 {p50:7.3f}  p90 {pct(hits, 0.9) * 1000:7.3f}")
    print(
        f"  search only      p50 {pct(searches, 0.5) * 1000:7.3f}  "
        f"p90 {pct(searches, 0.9) * 1000:7.3f}   (no generation: the floor)"
    )
    print(
        f"  cache bypassed   median of 3 {sorted(uncached)[1] * 1000:7.1f}   "
        f"(10 LLM calls at once, L = {args.latency * 1000:.0f} ms)"
    )
    figures.add("cached 10-hit GenerativeSearch p50", p50, "ms", "≤ 5 ms")
    if args.summary:
        figures.emit()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="fake LLM latency L, s")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--summary", action="store_true", help="headline figure, JSON last")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
