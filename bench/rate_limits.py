"""Rate-limited provider benchmark: N hits against a provider that allows R requests a
minute and answers 429 with Retry-After past it.

Laid out as deployed (bench/stack.py), every part its own process: the fake endpoint
(``bench/fake_llm.py --rate-limit``: R x W / 60 requests per fixed window of W seconds,
latency L x uniform(0.9, 1.1)), one Redis, memory, retrieval, two generation replicas that
declare the provider's limit and count it in that Redis, and two gateways, each spreading
its calls over both generation replicas. N hits go out as two GenerativeSearch calls of
N / 2, one per gateway, at once.

Measured:
  * the time until every hit answered, against N / R (what the limit allows), and how many
    hits failed (target: none, in <= 1.15 x N / R);
  * what the provider saw: the most requests any window received (never above its limit)
    and how many it refused with 429;
  * beside it, the same N calls made straight to the endpoint 10 at a time with no retries
    (a Weaviate-style pool): how many fail.

``--undeclared``: the generation replicas are not told the limit; they learn it from the
429s (Retry-After for every call, adaptive concurrency).

R = 600 a minute counted over 10 s windows (100 per window) keeps a run of 200 hits near
20 s; the provider's settings say the same (requests_per_minute=600, rate_window=10).

    .venv/bin/python bench/rate_limits.py [--hits 200] [--rpm 600] [--window 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import aiohttp  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402

from bench.report import machine  # noqa: E402
from bench.stack import Stack, load_vectors, provider  # noqa: E402
from services.devlaunch.redis_server import RedisProcess  # noqa: E402

DIM = 8


async def load(retrieval: ret_grpc.RetrievalServiceStub, count: int) -> None:
    await load_vectors(
        retrieval,
        "Bench",
        [{"title": f"Book {i}"} for i in range(count)],
        ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
        dim=DIM,
        step=1000,
    )


async def search(stub: gw_grpc.GatewayServiceStub, hits: int) -> list[gw_pb.GenerationResult]:
    response = await stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Bench",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=hits,
            generate=gw_pb.Generate(single_prompt="Summarise {title}"),
        ),
        timeout=300,
    )
    return [h.generation for h in response.hits]


async def stats(http: aiohttp.ClientSession, base: str, reset: bool = False) -> dict[str, Any]:
    root = base.removesuffix("/v1")
    if reset:
        async with http.post(f"{root}/fake/reset") as resp:
            return dict(await resp.json())
    async with http.get(f"{root}/fake/stats") as resp:
        return dict(await resp.json())


async def align(window: float) -> None:
    """Start a run right after a window of the provider begins (both count on the same
    CLOCK_MONOTONIC), so every run meets the same windows."""
    await asyncio.sleep(window - time.monotonic() % window + 0.01)


async def pool(http: aiohttp.ClientSession, base: str, n: int, size: int = 10) -> int:
    """N calls straight to the endpoint, ``size`` at a time, no retries: the failures."""
    gate = asyncio.Semaphore(size)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        body = {"model": "fake-model", "messages": [{"role": "user", "content": f"Book {i}"}]}
        async with gate, http.post(f"{base}/chat/completions", json=body) as resp:
            await resp.read()
            if resp.status != 200:
                failed += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return failed


async def run(args: argparse.Namespace) -> None:
    per_window = round(args.rpm * args.window / 60)
    async with Stack() as stack:
        redis = RedisProcess(stack.work / "redis")
        await redis.start()
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            llm = await stack.fake_llm(args.latency, rate_limit=per_window, rate_window=args.window)
            declared = (
                provider(llm)
                if args.undeclared
                else provider(llm, requests_per_minute=args.rpm, rate_window=args.window)
            )
            memory, retrieval, *generation = await asyncio.gather(
                stack.memory(),
                stack.retrieval(),
                stack.generation({"fake": declared}, redis_url=redis.url),
                stack.generation({"fake": declared}, redis_url=redis.url),
            )
            gateways = [
                await stack.gateway(memory, retrieval, generation, max_hits=args.hits)
                for _ in range(2)
            ]
            stubs = [gw_grpc.GatewayServiceStub(stack.channel(g)) for g in gateways]
            await load(ret_grpc.RetrievalServiceStub(stack.channel(retrieval)), args.hits)
            allowed = args.hits / (args.rpm / 60)
            print(
                f"provider: {args.rpm:g} requests/min counted over {args.window:g} s windows "
                f"({per_window} a window), 429 + Retry-After past it; L = "
                f"{args.latency * 1000:.0f} ms ± 10 %; N = {args.hits} hits as two searches "
                f"of {args.hits // 2}, one per gateway (2 gateways, 2 generation replicas, one "
                f"Redis); the limit {'is not declared' if args.undeclared else 'is declared'} "
                f"to the generation service; N / R = {allowed:.1f} s; {machine()}"
            )
            ratios: list[float] = []
            for run_no in range(args.repeat):
                # Start with a full allowance: the bucket refilled, a fresh window.
                await asyncio.sleep(args.window)
                await align(args.window)
                await stats(http, llm, reset=True)
                started = time.perf_counter()
                halves = await asyncio.gather(*(search(s, args.hits // 2) for s in stubs))
                elapsed = time.perf_counter() - started
                results = [r for half in halves for r in half]
                failed = sum(r.HasField("error") for r in results)
                seen = await stats(http, llm)
                attempts = [r.attempts for r in results]
                waits = [r.wait_time.ToNanoseconds() / 1e9 for r in results]
                ratios.append(elapsed / allowed)
                print(
                    f"run {run_no + 1}: {elapsed:.1f} s = {elapsed / allowed:.3f} x N/R; "
                    f"{len(results)} hits, {failed} failed; provider saw at most "
                    f"{seen['max_per_window']} in a window (limit {per_window}), refused "
                    f"{seen['rate_limited']}; attempts max {max(attempts)}; wait per hit "
                    f"median {statistics.median(waits):.1f} s, max {max(waits):.1f} s",
                    flush=True,
                )
            print(
                f"median {statistics.median(ratios):.3f} x N/R "
                f"(range {min(ratios):.3f}-{max(ratios):.3f}), target <= 1.15"
            )
            await asyncio.sleep(args.window)
            await align(args.window)
            await stats(http, llm, reset=True)
            failed = await pool(http, llm, args.hits)
            seen = await stats(http, llm)
            print(
                f"pool of 10, no retries, same provider: {failed} of {args.hits} calls failed "
                f"(429 {seen['rate_limited']})"
            )
        finally:
            await http.close()
            await redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=200)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--window", type=float, default=10.0, help="seconds")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--undeclared", action="store_true", help="do not tell the service the limit"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
