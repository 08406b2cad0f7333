"""Fan-out benchmark: generative search with one LLM call per hit, through the gateway.

One run, everything on loopback and laid out as deployed (bench/stack.py): the fake
OpenAI-compatible endpoint (answering after L x uniform(0.9, 1.1) seconds) and the four
services, gateway, memory (its own Redis), retrieval (qdrant-edge) and generation, each
its own process; this process holds only the clients.

Measured side by side:
  * end-to-end GenerativeSearch time for N hits with single_prompt, as a ratio to L, at
    default settings (no fan-out cap, no provider cap: the gateway's max_hits and
    retrieval's max_limit are raised to 200 so that N = 200 fits; if the gateway's default
    cap is set, also with max_concurrency = N), beside
    the same N calls made straight to the endpoint: plain ``asyncio.gather`` of N HTTP
    requests (the floor), a pool of 10 at a time (Weaviate's way), LangChain's
    ``ChatOpenAI(...).abatch``; and through the generation service without the gateway:
    N Generate calls at once, and a sequential loop;
  * the same gateway (a second gateway process, at defaults) in front of K generation
    replicas (``--generation-replicas``, 2 by default; 0 leaves the column out), each its
    own process, reached as docs/gateway.md documents for replicas: one target resolving to
    every replica's address (here the ``ipv4:`` list of their loopback addresses), round
    robin over them; does another replica move the generation service's CPU per hit?
  * where the time goes at N = 100: CPU seconds per hit of the gateway and generation
    processes (utime + stime from /proc/<pid>/stat over a few searches), and with K
    replicas, of that gateway and of each replica, with the LLM requests each replica
    made in those searches (from its /metrics);
  * gateway overhead: a search with no generation through the gateway vs calling
    retrieval directly (p50, p90), and a forwarded RetrievalService/Search;
  * first-token latency through StreamGenerativeSearch, from the fake endpoint making its
    answer (bench/fake_llm.py stamps it with the shared monotonic clock) to the client
    reading the token event.

    .venv/bin/python bench/fanout.py [--latency 0.2] [--sizes 1,10,25,50,100,200] [--repeat 3]
                                     [--generation-replicas 2]
    .venv/bin/python bench/fanout.py --summary     # the headline figures only, as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import aiohttp  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from bench.fake_llm import first_token_gap  # noqa: E402
from bench.report import Figures, machine, pct, timed  # noqa: E402
from bench.stack import IDENTITY, ServiceProcess, Stack, load_vectors, provider  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402
from tests.support.processes import listening_ports, owned_ports_known  # noqa: E402

DIM = 8
OBJECTS = 220
MAX_HITS = 200
DEFAULT_LIMIT: int = GatewaySettings.model_fields["default_max_concurrency"].default
FULL_SIZES = (1, 10, 25, 50, 100, 200)
CPU_HITS = 100
CPU_ROUNDS = 5
HEADLINE_SIZES = (10, 25, 100)
GENERATION_REPLICAS = 2
MAX_REPLICAS = 16  # each its own process on a shared machine; 127.0.0.2 ... 127.0.0.16


class Bench:
    def __init__(self, stack: Stack, latency: float, jitter: float, replicas: int = 0) -> None:
        self.stack = stack
        self.latency = latency
        self.jitter = jitter
        self.replicas = replicas  # generation replicas behind the second gateway; 0: none
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def start(self) -> None:
        stack = self.stack
        self.llm_url = await stack.fake_llm(self.latency, jitter=self.jitter)
        memory, retrieval, generation = await asyncio.gather(
            stack.memory(),
            stack.retrieval(max_limit=MAX_HITS),
            stack.generation({"fake": provider(self.llm_url)}),
        )
        gateway = await stack.gateway(memory, retrieval, generation, max_hits=MAX_HITS)
        self.processes = {"gateway": gateway, "generation": generation}
        gw_channel = stack.channel(gateway)
        self.gateway = gw_grpc.GatewayServiceStub(gw_channel)
        if self.replicas:
            await self._start_replicas(memory, retrieval, generation)
        self.gw_retrieval = ret_grpc.RetrievalServiceStub(gw_channel)
        self.retrieval = ret_grpc.RetrievalServiceStub(stack.channel(retrieval))
        self.generation = gen_grpc.GenerationServiceStub(stack.channel(generation))
        await self._load()

    async def _start_replicas(
        self, memory: ServiceProcess, retrieval: ServiceProcess, generation: ServiceProcess
    ) -> None:
        """A second gateway, at the same settings as the first, in front of ``replicas``
        generation processes: the first gateway's one (idle while this gateway is timed,
        the rounds run one call at a time) and ``replicas - 1`` more, alike, each on the
        first one's port of its own loopback address (127.0.0.2, ...), as replicas behind
        one DNS name are; the gateway's target lists them all
        (``ipv4:127.0.0.1:P,127.0.0.2:P``) and it round-robins over them, as over the
        addresses of a ``dns:///`` name (docs/gateway.md)."""
        more = await asyncio.gather(
            *(
                self.stack.generation(
                    {"fake": provider(self.llm_url)}, beside=generation, host=f"127.0.0.{i}"
                )
                for i in range(2, self.replicas + 1)
            )
        )
        replicas = [generation, *more]
        gateway = await self.stack.gateway(memory, retrieval, replicas, max_hits=MAX_HITS)
        self.replica_processes = {"gateway": gateway} | {
            f"generation replica {i}": replica for i, replica in enumerate(replicas, 1)
        }
        self.replicated = gw_grpc.GatewayServiceStub(self.stack.channel(gateway))

    async def close(self) -> None:
        await self.http.close()

    async def _load(self) -> None:
        await load_vectors(
            self.retrieval,
            "Bench",
            [
                {"title": f"Book {i}", "body": f"the story number {i} about search"}
                for i in range(OBJECTS)
            ],
            ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
            dim=DIM,
        )

    # -- fan-out ---------------------------------------------------------------------------
    async def gateway_fanout(
        self, n: int, max_concurrency: int = 0, gateway: gw_grpc.GatewayServiceStub | None = None
    ) -> float:
        """One GenerativeSearch of ``n`` hits through ``gateway`` (the first one by default)."""
        stub = gateway or self.gateway
        request = gw_pb.GenerativeSearchRequest(
            collection="Bench",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=n,
            generate=gw_pb.Generate(
                single_prompt="Summarise {title}: {body}", max_concurrency=max_concurrency
            ),
        )

        async def call() -> None:
            response = await stub.GenerativeSearch(request, timeout=60)
            failed = [h for h in response.hits if h.generation.HasField("error")]
            assert len(response.hits) == n and not failed, failed[:1]

        return await timed(call)

    async def _post(self, i: int) -> None:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": f"Book {i}"}]}
        async with self.http.post(f"{self.llm_url}/chat/completions", json=body) as resp:
            resp.raise_for_status()
            await resp.json()

    async def gather(self, n: int) -> float:
        """The floor: N HTTP requests at once, straight to the endpoint."""
        return await timed(lambda: asyncio.gather(*(self._post(i) for i in range(n))))

    async def pool(self, n: int, size: int = 10) -> float:
        """N HTTP requests, ``size`` at a time (a fixed worker pool, as Weaviate does)."""
        gate = asyncio.Semaphore(size)

        async def one(i: int) -> None:
            async with gate:
                await self._post(i)

        return await timed(lambda: asyncio.gather(*(one(i) for i in range(n))))

    async def _generate(self, i: int) -> None:
        message = gen_pb.Message(role=gen_pb.ROLE_USER, content=f"Summarise Book {i}")
        await self.generation.Generate(
            gen_pb.GenerateRequest(messages=[message]), metadata=IDENTITY, timeout=60
        )

    async def generation_gather(self, n: int) -> float:
        """N Generate calls at once straight to the generation service (no gateway)."""
        return await timed(lambda: asyncio.gather(*(self._generate(i) for i in range(n))))

    async def sequential(self, n: int) -> float:
        async def call() -> None:
            for i in range(n):
                await self._generate(i)

        return await timed(call)

    async def langchain(self, n: int) -> float:
        from langchain_openai import ChatOpenAI

        chat = ChatOpenAI(
            base_url=self.llm_url, api_key=SecretStr("bench"), model="fake-model", max_retries=0
        )
        prompts = [f"Summarise Book {i}" for i in range(n)]
        return await timed(lambda: chat.abatch(prompts))  # type: ignore[arg-type]

    async def replicated_fanout(self, n: int) -> float:
        return await self.gateway_fanout(n, gateway=self.replicated)

    async def cpu_per_hit(self, n: int, rounds: int, replicated: bool = False) -> dict[str, float]:
        """CPU seconds (user + system) per hit of each service process over ``rounds``
        searches of ``n`` hits, through the first gateway or (``replicated``) the one in
        front of the generation replicas. Per hit means per hit of the whole search, so a
        replica that took half the hits shows about half the CPU per hit."""
        processes = self.replica_processes if replicated else self.processes
        stub = self.replicated if replicated else self.gateway
        before = {name: cpu_seconds(p.proc.pid) for name, p in processes.items() if p.proc}
        for _ in range(rounds):
            await self.gateway_fanout(n, gateway=stub)
        after = {name: cpu_seconds(p.proc.pid) for name, p in processes.items() if p.proc}
        return {name: (after[name] - before[name]) / (n * rounds) for name in before}

    async def llm_requests_by_replica(self) -> dict[str, float] | None:
        """The upstream LLM exchanges (``gensearch_llm_requests_total``, every outcome) each
        generation replica has finished so far, read from its /metrics: the one port it
        listens on besides its gRPC one (its metrics port is 0). None where ports cannot be
        read back (no /proc)."""
        if not owned_ports_known():
            return None
        counts: dict[str, float] = {}
        for name, process in self.replica_processes.items():
            if not name.startswith("generation replica") or process.proc is None:
                continue
            (port,) = listening_ports(process.proc.pid) - {process.port}
            async with self.http.get(f"http://{process.host}:{port}/metrics") as reply:
                text = await reply.text()
            counts[name] = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "gensearch_llm_requests_total"
            )
        return counts

    # -- the gateway's own cost ------------------------------------------------------------
    async def overhead(self, rounds: int) -> dict[str, list[float]]:
        query = ret_pb.NearVector(vector=[0.5] * DIM)
        search = ret_pb.SearchRequest(collection="Bench", near_vector=query, limit=10)
        generative = gw_pb.GenerativeSearchRequest(collection="Bench", near_vector=query, limit=10)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "direct": lambda: self.retrieval.Search(search, metadata=IDENTITY),
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
            gap: float | None = None
            async for event in self.gateway.StreamGenerativeSearch(request, timeout=30):
                if event.WhichOneof("event") == "token" and gap is None:
                    gap = first_token_gap(event.token.delta, time.perf_counter())
            assert gap is not None
            gaps.append(gap)
        return gaps


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Column:
    """One way of making N calls: how to time it, for which N, and its headline name."""

    title: str
    measure: Callable[[int], Awaitable[float]]
    figure: str = ""  # "{n}" is replaced by N; empty: not a headline figure
    target: Callable[[int], str] = lambda n: ""
    when: Callable[[int], bool] = lambda n: True
    once: bool = False  # one run instead of the median of --repeat


def fanout_target(n: int) -> str:
    """The target of architecture §6 (at default settings)."""
    return "≤ 1.10 x L" if n <= 25 else "≤ 1.3 x L" if n <= 100 else ""


async def fanout_table(bench: Bench, args: argparse.Namespace, figures: Figures) -> None:
    latency = args.latency
    columns = [
        Column(
            "gateway (defaults)" if not DEFAULT_LIMIT else f"gateway (limit {DEFAULT_LIMIT})",
            bench.gateway_fanout,
            "fan-out N={n}, gateway defaults / L",
            target=fanout_target,
        ),
        Column(
            "gateway (limit N)",
            lambda n: bench.gateway_fanout(n, n),
            "fan-out N={n}, gateway max_concurrency=N / L",
            target=fanout_target,
            when=lambda n: bool(DEFAULT_LIMIT) and n > DEFAULT_LIMIT,
        ),
    ]
    if bench.replicas:
        columns.append(
            Column(
                f"gateway, {bench.replicas} gen.",
                bench.replicated_fanout,
                f"fan-out N={{n}}, {bench.replicas} generation replicas / L",
                target=fanout_target,
            )
        )
    columns.append(
        Column("gather (floor)", bench.gather, "fan-out N={n}, asyncio.gather floor / L")
    )
    if not args.summary:
        columns += [
            Column("generation, gather", bench.generation_gather),
            Column("pool of 10", bench.pool, once=True),
            Column("LangChain abatch", bench.langchain),
            # A sequential loop takes N x L: measured while that stays short.
            Column("sequential", bench.sequential, when=lambda n: n * latency <= 6, once=True),
        ]
    print(
        f"fan-out, fake LLM latency L = {latency * 1000:.0f} ms ± {args.jitter:.0%}, "
        f"median of {args.repeat} interleaved rounds (pool and sequential: one run); {machine()}"
    )
    print(f"{'N':>4} | " + " | ".join(f"{c.title:>18}" for c in columns))
    for n in args.sizes:
        # Rounds of one call of each kind, so that load from elsewhere hits all alike.
        times: dict[str, list[float]] = {c.title: [] for c in columns if c.when(n)}
        for round_no in range(args.repeat):
            for column in columns:
                if column.when(n) and (round_no == 0 or not column.once):
                    times[column.title].append(await column.measure(n))
        cells = []
        spread = []
        for column in columns:
            if column.title not in times:
                cells.append(f"{'—':>18}")
                spread.append("")
                continue
            seconds = statistics.median(times[column.title])
            cells.append(f"{seconds * 1000:7.0f} ms {seconds / latency:5.2f}xL")
            low, high = min(times[column.title]) / latency, max(times[column.title]) / latency
            spread.append(f"{low:>9.2f}-{high:.2f}xL" if len(times[column.title]) > 1 else "")
            if column.figure:
                figure = column.figure.format(n=n)
                figures.add(figure, seconds / latency, "x L", column.target(n))
        print(f"{n:>4} | " + " | ".join(cells))
        print(f"{'':>4} | " + " | ".join(f"{s:>18}" for s in spread), flush=True)


async def run(args: argparse.Namespace) -> None:
    figures = Figures()
    async with Stack() as stack:
        bench = Bench(stack, args.latency, args.jitter, args.generation_replicas)
        try:
            await bench.start()
            await bench.gateway_fanout(1)  # warm the channels
            if bench.replicas:  # round robin: one call for each replica's connection
                for _ in range(bench.replicas):
                    await bench.replicated_fanout(1)
            await fanout_table(bench, args, figures)

            cpu = await bench.cpu_per_hit(CPU_HITS, CPU_ROUNDS)
            print(
                f"\nCPU per hit at N={CPU_HITS} ({CPU_ROUNDS} searches): "
                + ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in cpu.items())
            )
            for name, seconds in cpu.items():
                figures.add(f"CPU per hit at N={CPU_HITS}, {name}", seconds * 1000, "ms")
            if bench.replicas:
                # Read outside the CPU rounds: a scrape costs the replica CPU of its own.
                before = await bench.llm_requests_by_replica()
                cpu = await bench.cpu_per_hit(CPU_HITS, CPU_ROUNDS, replicated=True)
                after = await bench.llm_requests_by_replica()
                print(
                    f"CPU per hit at N={CPU_HITS} ({CPU_ROUNDS} searches) with "
                    f"{bench.replicas} generation replicas: "
                    + ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in cpu.items())
                    + f" (generation, all replicas: "
                    f"{sum(s for k, s in cpu.items() if k != 'gateway') * 1000:.2f} ms)"
                )
                for name, seconds in cpu.items():
                    figures.add(
                        f"CPU per hit at N={CPU_HITS}, {bench.replicas} generation replicas, "
                        f"{name}",
                        seconds * 1000,
                        "ms",
                    )
                if before is not None and after is not None:
                    # Which replica answered the hits: round robin should reach each.
                    print(
                        f"LLM requests per generation replica over those "
                        f"{CPU_HITS * CPU_ROUNDS} hits: "
                        + ", ".join(f"{name} {after[name] - before[name]:.0f}" for name in after)
                    )

            samples = await bench.overhead(args.rounds)
            p50 = {k: pct(v, 0.5) * 1000 for k, v in samples.items()}
            p90 = {k: pct(v, 0.9) * 1000 for k, v in samples.items()}
            print(f"\nsearch without generation, {args.rounds} calls each, interleaved (ms)")
            for name in ("direct", "gateway", "forwarded"):
                print(f"  {name:<10} p50 {p50[name]:6.3f}  p90 {p90[name]:6.3f}")
            gateway = p50["gateway"] - p50["direct"]
            forwarded = p50["forwarded"] - p50["direct"]
            print(
                f"  gateway overhead p50 {gateway:+.3f} ms (GenerativeSearch), "
                f"{forwarded:+.3f} ms (forwarded Search)"
            )
            figures.add("gateway overhead p50, search without generation", gateway, "ms", "≤ 2 ms")

            gaps = await bench.first_token(args.token_rounds)
            first = pct(gaps, 0.5) * 1000
            print(
                f"\nfirst token through StreamGenerativeSearch, {args.token_rounds} streams: "
                f"p50 {first:.2f} ms, p90 {pct(gaps, 0.9) * 1000:.2f} ms after the LLM "
                "endpoint made it (endpoint -> generation -> gateway -> client)"
            )
            figures.add("first token through StreamGenerativeSearch p50", first, "ms", "≤ 5 ms")
        finally:
            await bench.close()
    if args.summary:
        figures.emit()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="fake LLM latency L, s")
    parser.add_argument("--jitter", type=float, default=0.1, help="spread of L (0.1: ±10 %%)")
    parser.add_argument("--sizes", help="N, comma-separated (default 1,10,25,50,100)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, help="overhead samples (default 500)")
    parser.add_argument("--token-rounds", type=int, default=30)
    parser.add_argument(
        "--generation-replicas",
        type=int,
        default=GENERATION_REPLICAS,
        metavar="K",
        help="generation replicas behind a second gateway, a column of their own "
        f"(default {GENERATION_REPLICAS}; 0: no such column)",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="headline figures only (default N = 10, 25, 100; fewer samples), JSON last",
    )
    args = parser.parse_args()
    if args.generation_replicas not in (0, *range(2, MAX_REPLICAS + 1)):
        # One replica is the "gateway (defaults)" column already; replica i binds 127.0.0.i.
        parser.error(f"--generation-replicas: 0 (no such column) or 2 to {MAX_REPLICAS}")
    sizes = args.sizes or ",".join(map(str, HEADLINE_SIZES if args.summary else FULL_SIZES))
    args.sizes = [int(size) for size in sizes.split(",")]
    args.rounds = args.rounds or (300 if args.summary else 500)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
