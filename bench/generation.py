"""Generation service benchmark: the service's cost over calling the LLM endpoint directly.

One run, everything on loopback:

  * the fake OpenAI-compatible server (tests/support/fake_openai.py) in a thread of this
    process with its own event loop, answering after L = 0 ms and L = 200 ms;
  * the generation service as its own process (``python -m services.generation``, as
    deployed), or in this process with ``--in-process``;
  * clients in this process's main loop.

Measured side by side, same request body:
  1. Generate through the service vs a direct aiohttp POST to the fake server, with 1 and
     64 calls in flight: calls/s and the ratio (target: >= 70 % of direct at 64 in flight);
  2. StreamGenerate first-token latency: from the fake server writing its first text chunk
     (``time.perf_counter()`` recorded in the server thread) to the client reading the
     first delta, beside the same gap for a direct aiohttp SSE read (target: <= 5 ms);
  3. the local model (llama_cpp.server + SmolLM2-135M, if installed) through the service:
     time to first token and decode tokens/s.

    .venv/bin/python bench/generation.py [--quick] [--in-process] [--no-llm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2 as pb  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc  # noqa: E402

from services.devlaunch import llm_server as local_llm  # noqa: E402
from services.devlaunch.processes import free_port  # noqa: E402
from services.generation.__main__ import build_server  # noqa: E402
from services.generation.settings import LOCAL_MODEL, GenerationSettings  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402

PROMPT = "Summarise the plot of Moby Dick in one sentence."
ANSWER = "Captain Ahab hunts the white whale that took his leg and it destroys him and his crew"
MESSAGES = [{"role": "user", "content": PROMPT}]


def provider_entry(base_url: str, concurrency: int, model: str) -> dict[str, Any]:
    return {
        "name": "bench",
        "base_url": base_url,
        "default_model": model,
        "max_concurrency": concurrency,
    }


class ServiceUnderTest:
    """The generation service pointed at the fake server, in a child process or here."""

    def __init__(self, base_url: str, *, in_process: bool, model: str = "fake-model") -> None:
        self.base_url = base_url
        self.model = model
        self.in_process = in_process
        self.port = free_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._server: Any = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None

    async def __aenter__(self) -> ServiceUnderTest:
        providers = [provider_entry(self.base_url, 256, self.model)]
        if self.in_process:
            settings = GenerationSettings(
                providers=providers,
                default_provider="bench",
                metrics_port=None,
                log_level="WARNING",
            )
            self._server = await build_server(settings, port=self.port)
            await self._server.start()
        else:
            env = {
                **os.environ,
                "GENSEARCH_GENERATION_PORT": str(self.port),
                "GENSEARCH_GENERATION_METRICS_PORT": "0",
                "GENSEARCH_GENERATION_DEFAULT_PROVIDER": "bench",
                "GENSEARCH_GENERATION_PROVIDERS": json.dumps(providers),
                "GENSEARCH_LOG_LEVEL": "WARNING",
            }
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.generation", cwd=str(ROOT), env=env
            )
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        await asyncio.wait_for(self.channel.channel_ready(), 30)
        self.stub = pb_grpc.GenerationServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self._server is not None:
            await self._server.stop(0)
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            await self._proc.wait()


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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_throughput(
    fake: FakeOpenAI, svc: ServiceUnderTest, quick: bool
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    request = pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, content=PROMPT)])
    body = {"model": "fake-model", "messages": MESSAGES}
    url = f"{fake.base_url}/chat/completions"
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def direct() -> None:
            async with session.post(url, json=body) as resp:
                data = await resp.json()
                assert data["choices"][0]["message"]["content"] == ANSWER

        async def through_service() -> None:
            reply = await svc.stub.Generate(request, timeout=30)
            assert reply.text == ANSWER

        for latency in (0.0, 0.2):
            fake.latency = latency
            for in_flight in (1, 64):
                if latency == 0.0:
                    total = (
                        (300 if quick else 1000) if in_flight == 1 else (1000 if quick else 4000)
                    )
                else:
                    total = (
                        (5 if quick else 15) if in_flight == 1 else in_flight * (3 if quick else 8)
                    )
                await throughput(direct, in_flight, min(total, 2 * in_flight))  # warm-up
                await throughput(through_service, in_flight, min(total, 2 * in_flight))
                d = await throughput(direct, in_flight, total)
                s = await throughput(through_service, in_flight, total)
                rows.append(
                    (
                        f"{latency * 1000:.0f} ms",
                        str(in_flight),
                        f"{d:,.0f}",
                        f"{s:,.0f}",
                        f"{s / d:.0%}",
                    )
                )
                print(
                    f"  L={latency * 1000:3.0f} ms in_flight={in_flight:3d}: direct {d:8.1f}/s  "
                    f"service {s:8.1f}/s  ratio {s / d:.0%}",
                    flush=True,
                )
    fake.latency = 0.0
    return rows


async def bench_first_token(
    fake: FakeOpenAI, svc: ServiceUnderTest, quick: bool
) -> list[tuple[str, ...]]:
    """Gap between the fake server writing the first text chunk and the client reading it."""
    runs = 50 if quick else 200
    rows: list[tuple[str, ...]] = []
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    url = f"{fake.base_url}/chat/completions"
    request = pb.StreamGenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, content=PROMPT)])
    first_word = ANSWER.split()[0]

    async with aiohttp.ClientSession() as session:

        async def direct_gap() -> float:
            async with session.post(url, json=body) as resp:
                async for line in resp.content:
                    if first_word.encode() in line:
                        seen = time.perf_counter()
                        break
                async for _ in resp.content:
                    pass
            sent = fake.requests[-1].first_chunk_at
            assert sent is not None
            return seen - sent

        async def service_gap() -> float:
            seen = 0.0
            async for chunk in svc.stub.StreamGenerate(request, timeout=30):
                if chunk.delta and not seen:
                    seen = time.perf_counter()
            sent = fake.requests[-1].first_chunk_at
            assert sent is not None
            return seen - sent

        for latency in (0.0, 0.2):
            fake.latency = latency
            n = runs if latency == 0 else max(10, runs // 10)
            for _ in range(5):
                await direct_gap()
                await service_gap()
            direct = [await direct_gap() for _ in range(n)]
            service = [await service_gap() for _ in range(n)]
            for name, gaps in (("direct aiohttp SSE", direct), ("StreamGenerate", service)):
                rows.append(
                    (
                        f"{latency * 1000:.0f} ms",
                        name,
                        f"{statistics.median(gaps) * 1000:.2f}",
                        f"{pct(gaps, 0.95) * 1000:.2f}",
                        f"{max(gaps) * 1000:.2f}",
                    )
                )
            print(
                f"  L={latency * 1000:3.0f} ms first-token gap p50: direct "
                f"{statistics.median(direct) * 1000:.2f} ms, service "
                f"{statistics.median(service) * 1000:.2f} ms (p95 {pct(service, 0.95) * 1000:.2f})",
                flush=True,
            )
    fake.latency = 0.0
    return rows


async def bench_local_model(quick: bool, in_process: bool) -> list[tuple[str, ...]]:
    if not local_llm.available():
        print("  local model not installed: skipped")
        return []
    # ~240 prompt tokens, as in the measurement.
    context = " ".join(
        f"Fact {i}: the lighthouse keeper counted {i * 7} ships in the harbour."
        for i in range(1, 18)
    )

    def question(run: int) -> list[pb.Message]:
        # A different first token each run: llama.cpp reuses a cached common prefix, which
        # would hide the prompt evaluation we want to time.
        return [
            pb.Message(role=pb.ROLE_SYSTEM, content=f"Run {run}. Answer from the facts."),
            pb.Message(role=pb.ROLE_USER, content=f"{context}\nHow many ships were counted?"),
        ]

    rows: list[tuple[str, ...]] = []
    ttfts: list[float] = []
    rates: list[float] = []
    prompt_tokens = 0
    async with (
        local_llm.LocalLLMServer(port=0) as llm,
        ServiceUnderTest(llm.base_url, in_process=in_process, model=LOCAL_MODEL) as svc,
    ):
        for run in range(3 if quick else 6):
            request = pb.StreamGenerateRequest(
                messages=question(run), max_tokens=128, temperature=0
            )
            started = time.perf_counter()
            first = 0.0
            text = ""
            async for chunk in svc.stub.StreamGenerate(request, timeout=120):
                if chunk.delta and not first:
                    first = time.perf_counter()
                text += chunk.delta
            done = time.perf_counter()
            # llama.cpp reports exact usage on unary calls only; greedy decoding
            # (temperature 0) gives the same tokens again, now from a cached prompt.
            unary = pb.GenerateRequest(messages=question(run), max_tokens=128, temperature=0)
            reply = await svc.stub.Generate(unary, timeout=120)
            prompt_tokens = reply.usage.prompt_tokens
            if run == 0:
                continue  # warm-up (page cache, first allocations)
            tokens = reply.usage.completion_tokens if text == reply.text else len(text) / 4
            ttfts.append(first - started)
            rates.append((tokens - 1) / (done - first) if done > first else 0.0)
    ttft, rate = statistics.median(ttfts), statistics.median(rates)
    print(f"  local model: prompt {prompt_tokens} tokens, TTFT {ttft * 1000:.0f} ms, ", end="")
    print(f"{rate:.0f} tokens/s")
    rows.append((str(prompt_tokens), f"{ttft * 1000:.0f}", f"{rate:.0f}"))
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


async def bench_fake(
    args: argparse.Namespace,
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    with FakeOpenAI(reply=ANSWER, record=True).in_thread() as fake:
        async with ServiceUnderTest(fake.base_url, in_process=args.in_process) as svc:
            print("throughput (Generate vs direct HTTP):")
            tput = await bench_throughput(fake, svc, args.quick)
            fake.requests.clear()
            print("first token (StreamGenerate vs the fake server's first chunk):")
            ttft = await bench_first_token(fake, svc, args.quick)
    return tput, ttft


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--in-process", action="store_true", help="service in this process")
    parser.add_argument("--no-llm", action="store_true", help="skip the local model")
    parser.add_argument("--llm-only", action="store_true", help="only the local model")
    args = parser.parse_args()
    print(f"generation bench ({'in-process' if args.in_process else 'service process'})")
    tput: list[tuple[str, ...]] = []
    ttft: list[tuple[str, ...]] = []
    if not args.llm_only:
        tput, ttft = await bench_fake(args)
    llm_rows: list[tuple[str, ...]] = []
    if not args.no_llm:
        print("local model (SmolLM2-135M on llama.cpp, through the service):")
        llm_rows = await bench_local_model(args.quick, args.in_process)
    if tput:
        header = ("upstream latency", "in flight", "direct calls/s", "service calls/s", "ratio")
        print()
        print(table(header, tput))
        print()
        print(table(("upstream latency", "path", "p50 ms", "p95 ms", "max ms"), ttft))
    if llm_rows:
        print()
        print(table(("prompt tokens", "time to first token ms", "decode tokens/s"), llm_rows))


if __name__ == "__main__":
    asyncio.run(main())
