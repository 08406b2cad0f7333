"""Generation service benchmark: the service's cost over calling the LLM endpoint directly.

One run, everything on loopback and laid out as deployed (bench/stack.py): two fake
OpenAI-compatible endpoints in processes of their own (one answering at once, one after
L = 200 ms ± 10 %), the generation service as its own process with a provider for each
(and for the local model when it is installed), and the clients in this process.

Measured side by side, same request body:
  1. Generate through the service vs a direct aiohttp POST to the endpoint, with 1 and
     64 calls in flight: calls/s and the ratio (target: >= 70 % of direct at 64 in flight);
     beside them the same call through the official openai SDK from this process (how the
     service calls the endpoint), to tell the SDK's cost from the service's;
  2. StreamGenerate first-token latency: from the endpoint making its answer (stamped with
     the shared monotonic clock, see bench/fake_llm.py) to the client reading the first
     delta, beside the same gap for a direct aiohttp SSE read (target: <= 5 ms);
  3. the local model (llama-server + SmolLM2-135M, if installed) through the service:
     time to first token and decode tokens/s.

    .venv/bin/python bench/generation.py [--quick] [--no-llm] [--llm-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import aiohttp  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2 as pb  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc  # noqa: E402
from openai import AsyncOpenAI, DefaultAioHttpClient  # noqa: E402

from bench.fake_llm import TAIL, first_token_gap  # noqa: E402
from bench.report import machine, markdown, pct  # noqa: E402
from bench.stack import IDENTITY, Stack, provider  # noqa: E402
from services.devlaunch import llm_server as local_llm  # noqa: E402
from services.generation.settings import LOCAL_MODEL  # noqa: E402

PROMPT = "Summarise the plot of Moby Dick in one sentence."
MESSAGES = [{"role": "user", "content": PROMPT}]
LATENCIES = {"fast": 0.0, "slow": 0.2}  # provider name -> fake endpoint latency, s
Row = tuple[str, ...]
THROUGHPUT_HEADER = (
    "upstream latency",
    "in flight",
    "aiohttp calls/s",
    "openai SDK calls/s",
    "service calls/s",
    "service / aiohttp",
)


async def throughput(call: Callable[[], Awaitable[None]], in_flight: int, total: int) -> float:
    """Calls per second with ``in_flight`` callers sharing ``total`` calls."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / (time.perf_counter() - started)


class Bench:
    def __init__(self, urls: dict[str, str], stub: pb_grpc.GenerationServiceStub, quick: bool):
        self.urls = urls
        self.stub = stub
        self.quick = quick

    async def throughput(self) -> list[Row]:
        rows: list[Row] = []
        body = {"model": "fake-model", "messages": MESSAGES}
        connector = aiohttp.TCPConnector(limit=256)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            contextlib.AsyncExitStack() as clients,
        ):
            sdks = {
                name: await clients.enter_async_context(
                    AsyncOpenAI(api_key="bench", base_url=url, http_client=DefaultAioHttpClient())
                )
                for name, url in self.urls.items()
            }
            for name, latency in LATENCIES.items():
                url = f"{self.urls[name]}/chat/completions"
                request = pb.GenerateRequest(
                    provider=name, messages=[pb.Message(role=pb.ROLE_USER, content=PROMPT)]
                )

                async def direct(url: str = url) -> None:
                    async with session.post(url, json=body) as resp:
                        data = await resp.json()
                        assert data["choices"][0]["message"]["content"].endswith(TAIL)

                async def direct_sdk(sdk: AsyncOpenAI = sdks[name]) -> None:
                    # The official SDK, as the service calls the endpoint (aiohttp transport).
                    reply = await sdk.chat.completions.create(
                        model="fake-model", messages=[{"role": "user", "content": PROMPT}]
                    )
                    assert (reply.choices[0].message.content or "").endswith(TAIL)

                async def through_service(request: pb.GenerateRequest = request) -> None:
                    reply = await self.stub.Generate(request, metadata=IDENTITY, timeout=30)
                    assert reply.text.endswith(TAIL)

                for in_flight in (1, 64):
                    total = self._calls(latency, in_flight)
                    for call in (direct, direct_sdk, through_service):  # warm-up
                        await throughput(call, in_flight, min(total, 2 * in_flight))
                    d = await throughput(direct, in_flight, total)
                    k = await throughput(direct_sdk, in_flight, total)
                    s = await throughput(through_service, in_flight, total)
                    rate = [f"{d:,.0f}", f"{k:,.0f}", f"{s:,.0f}", f"{s / d:.0%}"]
                    rows.append((f"{latency * 1000:.0f} ms", str(in_flight), *rate))
                    print(
                        f"  L={latency * 1000:3.0f} ms in_flight={in_flight:3d}: direct "
                        f"{d:8.1f}/s  openai SDK {k:8.1f}/s  service {s:8.1f}/s  "
                        f"ratio {s / d:.0%}",
                        flush=True,
                    )
        return rows

    def _calls(self, latency: float, in_flight: int) -> int:
        """Calls per throughput row: a few seconds' worth."""
        quick = self.quick
        if latency == 0:
            return (300 if quick else 1000) if in_flight == 1 else (1000 if quick else 4000)
        return (5 if quick else 15) if in_flight == 1 else in_flight * (3 if quick else 8)

    async def first_token(self) -> list[Row]:
        """From the endpoint making its answer to the client reading the first token."""
        runs = 50 if self.quick else 200
        rows: list[Row] = []
        body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
        async with aiohttp.ClientSession() as session:
            for name, latency in LATENCIES.items():
                url = f"{self.urls[name]}/chat/completions"
                request = pb.StreamGenerateRequest(
                    provider=name, messages=[pb.Message(role=pb.ROLE_USER, content=PROMPT)]
                )

                async def direct_gap(url: str = url) -> float:
                    gap: float | None = None
                    async with session.post(url, json=body) as resp:
                        async for line in resp.content:
                            if gap is None and line.startswith(b"data: {"):
                                delta = json.loads(line[6:])["choices"][0]["delta"]
                                if delta.get("content"):
                                    gap = first_token_gap(delta["content"], time.perf_counter())
                    assert gap is not None
                    return gap

                async def service_gap(request: pb.StreamGenerateRequest = request) -> float:
                    gap: float | None = None
                    stream = self.stub.StreamGenerate(request, metadata=IDENTITY, timeout=30)
                    async for chunk in stream:
                        if chunk.delta and gap is None:
                            gap = first_token_gap(chunk.delta, time.perf_counter())
                    assert gap is not None
                    return gap

                n = runs if latency == 0 else max(10, runs // 10)
                for _ in range(5):
                    await direct_gap()
                    await service_gap()
                direct = [await direct_gap() for _ in range(n)]
                service = [await service_gap() for _ in range(n)]
                for path, gaps in (("direct aiohttp SSE", direct), ("StreamGenerate", service)):
                    ms = [f"{x * 1000:.2f}" for x in (pct(gaps, 0.5), pct(gaps, 0.95), max(gaps))]
                    rows.append((f"{latency * 1000:.0f} ms", path, *ms))
                print(
                    f"  L={latency * 1000:3.0f} ms first-token gap p50: direct "
                    f"{pct(direct, 0.5) * 1000:.2f} ms, service {pct(service, 0.5) * 1000:.2f} ms "
                    f"(p95 {pct(service, 0.95) * 1000:.2f})",
                    flush=True,
                )
        return rows

    async def local_model(self) -> list[Row]:
        # ~240 prompt tokens, as in the measurement.
        context = " ".join(
            f"Fact {i}: the lighthouse keeper counted {i * 7} ships in the harbour."
            for i in range(1, 18)
        )

        def question(run: int) -> list[pb.Message]:
            # A different first token each run: llama.cpp reuses a cached common prefix,
            # which would hide the prompt evaluation we want to time.
            return [
                pb.Message(role=pb.ROLE_SYSTEM, content=f"Run {run}. Answer from the facts."),
                pb.Message(role=pb.ROLE_USER, content=f"{context}\nHow many ships were counted?"),
            ]

        ttfts: list[float] = []
        rates: list[float] = []
        prompt_tokens = 0
        for run in range(3 if self.quick else 6):
            request = pb.StreamGenerateRequest(
                provider="local", messages=question(run), max_tokens=128, temperature=0
            )
            started = time.perf_counter()
            first = 0.0
            text = ""
            async for chunk in self.stub.StreamGenerate(request, metadata=IDENTITY, timeout=120):
                if chunk.delta and not first:
                    first = time.perf_counter()
                text += chunk.delta
            done = time.perf_counter()
            # llama.cpp reports exact usage on unary calls only; greedy decoding
            # (temperature 0) gives the same tokens again, now from a cached prompt.
            unary = pb.GenerateRequest(
                provider="local", messages=question(run), max_tokens=128, temperature=0
            )
            reply = await self.stub.Generate(unary, metadata=IDENTITY, timeout=120)
            prompt_tokens = reply.usage.prompt_tokens
            if run == 0:
                continue  # warm-up (page cache, first allocations)
            tokens = reply.usage.completion_tokens if text == reply.text else len(text) / 4
            ttfts.append(first - started)
            rates.append((tokens - 1) / (done - first) if done > first else 0.0)
        ttft, rate = statistics.median(ttfts), statistics.median(rates)
        print(f"  local model: prompt {prompt_tokens} tokens, TTFT {ttft * 1000:.0f} ms, ", end="")
        print(f"{rate:.0f} tokens/s")
        return [(str(prompt_tokens), f"{ttft * 1000:.0f}", f"{rate:.0f}")]


async def run(args: argparse.Namespace) -> None:
    print(f"generation bench; {machine()}")
    use_llm = not args.no_llm and local_llm.available()
    if not args.no_llm and not use_llm:
        print("local model not installed: skipped")
    tput: list[Row] = []
    ttft: list[Row] = []
    llm_rows: list[Row] = []
    async with Stack() as stack, contextlib.AsyncExitStack() as extras:
        urls: dict[str, str] = {}
        if not args.llm_only:
            for name, latency in LATENCIES.items():
                urls[name] = await stack.fake_llm(latency, jitter=args.jitter if latency else 0)
        providers = {name: provider(url) for name, url in urls.items()}
        if use_llm:
            llm = await extras.enter_async_context(local_llm.LocalLLMServer(port=0))
            # As many calls at once as llama-server decodes together (its slots).
            providers["local"] = provider(llm.base_url, LOCAL_MODEL, concurrency=llm.slots)
        if not providers:
            return
        service = await stack.generation(providers)
        bench = Bench(urls, pb_grpc.GenerationServiceStub(stack.channel(service)), args.quick)
        if urls:
            print("throughput (Generate vs direct HTTP):")
            tput = await bench.throughput()
            print("first token (StreamGenerate vs direct SSE, from the endpoint's stamp):")
            ttft = await bench.first_token()
        if use_llm:
            print("local model (SmolLM2-135M on llama.cpp, through the service):")
            llm_rows = await bench.local_model()
    for header, rows in (
        (THROUGHPUT_HEADER, tput),
        (("upstream latency", "path", "p50 ms", "p95 ms", "max ms"), ttft),
        (("prompt tokens", "time to first token ms", "decode tokens/s"), llm_rows),
    ):
        if rows:
            print()
            print(markdown(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--no-llm", action="store_true", help="skip the local model")
    parser.add_argument("--llm-only", action="store_true", help="only the local model")
    parser.add_argument("--jitter", type=float, default=0.1, help="spread of L (0.1: ±10 %%)")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
