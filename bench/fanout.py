"""Fan-out benchmark: generative search with one LLM call per hit, through the gateway.

One run, everything on loopback, laid out as deployed: the fake OpenAI-compatible server
(sleeping L seconds before each answer) and the generation service each in their own
process; memory (own Redis), retrieval (qdrant-edge in a temp dir) and the gateway in this
one, beside the client.

Measured side by side:
  * end-to-end GenerativeSearch time for N hits with single_prompt, as a ratio to L,
    beside (a) the same N generations as a sequential loop (generation service, one call
    after another) and (b) LangChain's ``ChatOpenAI(...).abatch`` against the same fake
    server;
  * gateway overhead: a search with no generation through the gateway vs calling
    retrieval directly (p50, p90), and a forwarded RetrievalService/Search;
  * first-token latency through StreamGenerativeSearch: the fake server stamps its first
    text chunk with ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by the processes of a
    Linux machine) just before writing it; the client subtracts that from the time it
    reads the token event.

    .venv/bin/python bench/fanout.py [--latency 0.2] [--sizes 1,10,25,50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from services.common.auth import DEFAULT_TENANT, Identity, Role, forwarded_identity  # noqa: E402
from services.common.server import GrpcServer  # noqa: E402
from services.devlaunch.processes import free_port  # noqa: E402
from services.devlaunch.redis_server import RedisProcess  # noqa: E402
from services.gateway.__main__ import build_server as build_gateway  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402
from services.memory.__main__ import build_server as build_memory  # noqa: E402
from services.memory.settings import MemorySettings  # noqa: E402
from services.retrieval.__main__ import build_server as build_retrieval  # noqa: E402
from services.retrieval.settings import RetrievalSettings  # noqa: E402

TOKEN = "bench-internal-token"
DIM = 8
OBJECTS = 60

FAKE_SERVER = """
import asyncio, sys, time
sys.path[:0] = [{root!r}]
from tests.support.fake_openai import FakeOpenAI

def stamped(body):
    # The first word is when this answer was made; the first text chunk follows at once.
    return f"{{time.perf_counter():.6f}} and the rest of a short answer"

async def main():
    fake = FakeOpenAI(latency=float(sys.argv[1]), reply=stamped, record=False)
    await fake.start()
    print(fake.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def wait_serving(address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


class Bench:
    def __init__(self, latency: float, data: Path, concurrency: int) -> None:
        self.latency = latency
        self.data = data
        self.concurrency = concurrency
        self.servers: list[GrpcServer] = []
        self.processes: list[asyncio.subprocess.Process] = []
        self.channels: list[grpc.aio.Channel] = []
        self.redis = RedisProcess(data / "redis", appendfsync="everysec")

    async def start(self) -> None:
        fake = await spawn(
            sys.executable, "-c", FAKE_SERVER.format(root=str(ROOT)), str(self.latency)
        )
        self.processes.append(fake)
        assert fake.stdout is not None
        self.fake_url = f"http://127.0.0.1:{int(await fake.stdout.readline())}/v1"
        gen_port = free_port()
        provider = {
            "name": "fake",
            "base_url": self.fake_url,
            "default_model": "fake-model",
            "max_concurrency": 256,
        }
        generation = await spawn(
            sys.executable,
            "-m",
            "services.generation",
            env={
                "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
                "GENSEARCH_GENERATION_PORT": str(gen_port),
                "GENSEARCH_GENERATION_METRICS_PORT": "0",
                "GENSEARCH_GENERATION_PROVIDERS": json.dumps([provider]),
                "GENSEARCH_GENERATION_DEFAULT_PROVIDER": "fake",
                "GENSEARCH_INTERNAL_TOKEN": TOKEN,
                "GENSEARCH_LOG_LEVEL": "WARNING",
            },
        )
        self.processes.append(generation)
        await wait_serving(f"127.0.0.1:{gen_port}")

        await self.redis.start()
        common: dict[str, Any] = {"internal_token": TOKEN, "log_level": "WARNING"}
        memory = await build_memory(
            MemorySettings(redis_url=self.redis.url, metrics_port=None, **common), port=0
        )
        retrieval = await build_retrieval(
            RetrievalSettings(data_dir=self.data / "retrieval", **common), port=0
        )
        self.servers = [memory, retrieval]
        ports = [await s.start() for s in self.servers]
        gateway = await build_gateway(
            GatewaySettings(
                memory_addr=f"127.0.0.1:{ports[0]}",
                retrieval_addr=f"127.0.0.1:{ports[1]}",
                generation_addr=f"127.0.0.1:{gen_port}",
                metrics_port=None,
                default_max_concurrency=self.concurrency,
                **common,
            ),
            port=0,
        )
        self.servers.append(gateway)
        gw_port = await gateway.start()
        gw_channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw_port}")
        ret_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}")
        gen_channel = grpc.aio.insecure_channel(f"127.0.0.1:{gen_port}")
        self.channels = [gw_channel, ret_channel, gen_channel]
        self.gateway = gw_grpc.GatewayServiceStub(gw_channel)
        self.gw_retrieval = ret_grpc.RetrievalServiceStub(gw_channel)
        self.retrieval = ret_grpc.RetrievalServiceStub(ret_channel)
        self.generation = gen_grpc.GenerationServiceStub(gen_channel)
        await self._load()

    async def _load(self) -> None:
        await self.retrieval.CreateCollection(
            ret_pb.CreateCollectionRequest(
                collection=ret_pb.Collection(
                    name="Bench",
                    properties=[
                        ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT),
                        ret_pb.Property(name="body", data_type=ret_pb.DATA_TYPE_TEXT),
                    ],
                    vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
                    generative=ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
                )
            )
        )
        objects = []
        for i in range(OBJECTS):
            props = struct_pb2.Struct()
            props.update({"title": f"Book {i}", "body": f"the story number {i} about search"})
            vec = [0.1] * DIM
            vec[i % DIM] = 1.0 + i / 100
            objects.append(ret_pb.DataObject(properties=props, vector=vec))
        await self.retrieval.UpsertObjects(
            ret_pb.UpsertObjectsRequest(collection="Bench", objects=objects)
        )

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for server in reversed(self.servers):
            await server.stop(0)
        await self.redis.stop()
        for proc in reversed(self.processes):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    # -- the measurements ------------------------------------------------------------------
    async def gateway_fanout(self, n: int) -> float:
        request = gw_pb.GenerativeSearchRequest(
            collection="Bench",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=n,
            generate=gw_pb.Generate(single_prompt="Summarise {title}: {body}"),
        )

        async def call() -> None:
            response = await self.gateway.GenerativeSearch(request, timeout=60)
            failed = [h for h in response.hits if h.generation.HasField("error")]
            assert len(response.hits) == n and not failed, failed[:1]

        return await timed(call)

    async def sequential(self, n: int) -> float:
        identity = forwarded_identity(Identity("bench", DEFAULT_TENANT, Role.READER), TOKEN)

        async def call() -> None:
            for i in range(n):
                await self.generation.Generate(
                    gen_pb.GenerateRequest(
                        messages=[
                            gen_pb.Message(role=gen_pb.ROLE_USER, content=f"Summarise Book {i}")
                        ]
                    ),
                    metadata=identity,
                    timeout=60,
                )

        return await timed(call)

    async def langchain(self, n: int) -> float:
        from langchain_openai import ChatOpenAI

        chat = ChatOpenAI(
            base_url=self.fake_url, api_key="bench", model="fake-model", max_retries=0
        )
        prompts = [f"Summarise Book {i}" for i in range(n)]
        return await timed(lambda: chat.abatch(prompts))  # type: ignore[arg-type]

    async def overhead(self, rounds: int) -> dict[str, list[float]]:
        query = ret_pb.NearVector(vector=[0.5] * DIM)
        search = ret_pb.SearchRequest(collection="Bench", near_vector=query, limit=10)
        generative = gw_pb.GenerativeSearchRequest(collection="Bench", near_vector=query, limit=10)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "direct": lambda: self.retrieval.Search(search),
            "gateway": lambda: self.gateway.GenerativeSearch(generative),
            "forwarded": lambda: self.gw_retrieval.Search(search),
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(30):  # warm-up
            for fn in calls.values():
                await fn()
        for _ in range(rounds):  # interleaved, so drift hits all three alike
            for name, fn in calls.items():
                samples[name].append(await timed(fn))
        return samples

    async def first_token(self, rounds: int) -> list[float]:
        request = gw_pb.StreamGenerativeSearchRequest(
            collection="Bench",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=1,
            generate=gw_pb.Generate(single_prompt="Tell {title} a story", stream_tokens=True),
        )
        gaps: list[float] = []
        for _ in range(rounds):
            first: str | None = None
            received = 0.0
            async for event in self.gateway.StreamGenerativeSearch(request, timeout=30):
                if event.WhichOneof("event") == "token" and first is None:
                    received = time.perf_counter()
                    first = event.token.delta
            assert first is not None
            gaps.append(received - float(first))
        return gaps


async def run(args: argparse.Namespace) -> None:
    latency = args.latency
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(latency, Path(tmp), args.concurrency)
        await bench.start()
        try:
            await bench.gateway_fanout(1)  # warm the channels
            print(
                f"fan-out, fake LLM latency L = {latency * 1000:.0f} ms, gateway "
                f"max_concurrency = {args.concurrency}, median of {args.repeat}; "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
            )
            header = f"{'N':>4} | {'gateway':>16} | {'sequential':>16} | {'LangChain abatch':>16}"
            print(header)
            print("-" * len(header))

            def cell(seconds: float) -> str:
                return f"{seconds * 1000:7.0f} ms {seconds / latency:5.2f}xL"

            for n in sizes:
                gw = statistics.median([await bench.gateway_fanout(n) for _ in range(args.repeat)])
                seq = await bench.sequential(n)
                lc = statistics.median([await bench.langchain(n) for _ in range(args.repeat)])
                print(f"{n:>4} | {cell(gw)} | {cell(seq)} | {cell(lc)}")

            samples = await bench.overhead(args.rounds)
            p50 = {k: pct(v, 0.5) * 1000 for k, v in samples.items()}
            p90 = {k: pct(v, 0.9) * 1000 for k, v in samples.items()}
            print(f"\nsearch without generation, {args.rounds} calls each (ms)")
            for name in ("direct", "gateway", "forwarded"):
                print(f"  {name:<10} p50 {p50[name]:6.3f}  p90 {p90[name]:6.3f}")
            print(
                f"  gateway overhead p50 {p50['gateway'] - p50['direct']:+.3f} ms "
                f"(GenerativeSearch), {p50['forwarded'] - p50['direct']:+.3f} ms (forwarded Search)"
            )

            gaps = await bench.first_token(args.token_rounds)
            print(
                f"\nfirst token through StreamGenerativeSearch, {args.token_rounds} streams: "
                f"p50 {pct(gaps, 0.5) * 1000:.2f} ms, p90 {pct(gaps, 0.9) * 1000:.2f} ms after "
                "the LLM server made it (LLM server -> generation -> gateway -> client)"
            )
        finally:
            await bench.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="fake LLM latency, seconds")
    parser.add_argument("--sizes", default="1,10,25,50")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="gateway default")
    parser.add_argument("--rounds", type=int, default=500, help="overhead samples")
    parser.add_argument("--token-rounds", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
