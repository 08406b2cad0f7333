"""Memory service throughput and list latency, side by side with a bare grpc.aio echo.

    .venv/bin/python bench/memory.py [--seconds 3] [--rounds 6] [--in-flight 1,32]
        [--appendfsync everysec|always|no] [--redis unix|tcp] [--batch-window S]

One run: a child process serves a bare ``grpc.aio`` echo (one generic unary method, bytes
in, same bytes out, nothing around it) and the memory service (full chassis, its own Redis
with AOF, reached like the embedded default: over a unix socket); this process drives both
over loopback with 1 and 32 calls in flight (``--in-flight`` for other levels). The kinds
of call take turns in short interleaved slices, so a burst of load from elsewhere hits
them alike; it prints the rates, their ratio to the echo (median of the per-round
ratios), and ListInteractions latency for a 10-interaction and a 10,000-interaction
conversation (first page and a page from the middle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2 as pb  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc  # noqa: E402

ECHO_METHOD = "/bench.v1.EchoService/Echo"
Call = Callable[[], Awaitable[Any]]


# ---- the server side (child process) ---------------------------------------------------


async def _serve(appendfsync: str, transport: str, batch_window: float | None) -> None:
    from services.devlaunch.redis_server import RedisProcess
    from services.memory.__main__ import build_server
    from services.memory.settings import MemorySettings

    data = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    redis = RedisProcess(data / "redis", appendfsync=appendfsync)
    await redis.start()

    echo = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

    async def echo_call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.v1.EchoService", {"Echo": grpc.unary_unary_rpc_method_handler(echo_call)}
    )
    echo.add_generic_rpc_handlers((handler,))
    echo_port = echo.add_insecure_port("127.0.0.1:0")
    await echo.start()

    url = redis.socket_url if transport == "unix" else redis.url
    window = {} if batch_window is None else {"redis_batch_window": batch_window}
    settings = MemorySettings(redis_url=url, metrics_port=None, data_dir=data, **window)
    memory = await build_server(settings, port=0)
    memory_port = await memory.start()

    print(json.dumps({"echo": echo_port, "memory": memory_port, "redis": redis.url}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await echo.stop(0)
    await memory.stop(0)
    await redis.stop()
    shutil.rmtree(data, ignore_errors=True)


# ---- the client side -------------------------------------------------------------------


async def _run(call_factory: Callable[[int], Call], in_flight: int, seconds: float) -> tuple:
    """Calls per second with ``in_flight`` workers, each calling back to back, and the
    latencies of the calls."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        call = call_factory(w)
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def _compare(
    factories: dict[str, Callable[[int], Call]], in_flight: int, seconds: float, rounds: int
) -> dict[str, dict]:
    """Every kind of call, ``seconds`` each, measured in ``rounds`` interleaved slices: a
    burst of background load hits all of them alike instead of one row. Ratios to the
    first kind (the echo) are the median of the per-round ratios."""
    for factory in factories.values():  # warm up connections and code paths
        await asyncio.gather(*(factory(w)() for w in range(in_flight)))
    rates: dict[str, list[float]] = {name: [] for name in factories}
    latencies: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(rounds):
        for name, factory in factories.items():
            rate, lat = await _run(factory, in_flight, seconds / rounds)
            rates[name].append(rate)
            latencies[name] += lat
    base = next(iter(rates.values()))
    return {
        name: {
            "rate": statistics.median(r),
            "ratio": statistics.median(x / b for x, b in zip(r, base, strict=True)),
            **_percentiles(latencies[name]),
        }
        for name, r in rates.items()
    }


def _percentiles(latencies: list[float]) -> dict:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}


async def _latency(call: Call, count: int) -> dict:
    for _ in range(20):
        await call()
    latencies = []
    for _ in range(count):
        t = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t)
    return _percentiles(latencies)


async def _fill(redis_url: str, cid: str, count: int) -> None:
    """Bulk-load a conversation through the real store code (faster than over gRPC)."""
    from services.common.auth import ANONYMOUS
    from services.memory.redis_link import RedisLink
    from services.memory.store import MemoryStore

    store = MemoryStore(RedisLink(redis_url))
    sem = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        async with sem:
            interaction = pb.Interaction(
                input=f"question {n}", response="an answer of a typical length " * 4, origin="bench"
            )
            await store.create_interaction(ANONYMOUS, cid, interaction, "")

    await asyncio.gather(*(one(n) for n in range(count)))
    await store.close()


async def _bench(args: argparse.Namespace) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve",
        "--appendfsync", args.appendfsync, "--redis", args.redis,
        *(["--batch-window", str(args.batch_window)] if args.batch_window is not None else []),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert child.stdout is not None
    ports = json.loads(await child.stdout.readline())
    try:
        await _measure(args, ports)
    finally:
        child.send_signal(signal.SIGTERM)
        await child.wait()


async def _measure(args: argparse.Namespace, ports: dict) -> None:
    echo_ch = grpc.aio.insecure_channel(f"127.0.0.1:{ports['echo']}")
    mem_ch = grpc.aio.insecure_channel(f"127.0.0.1:{ports['memory']}")
    echo = echo_ch.unary_unary(ECHO_METHOD)
    stub = pb_grpc.MemoryServiceStub(mem_ch)

    payload = pb.CreateInteractionRequest(
        conversation_id="0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d",
        input="What is the capital of France?",
        response="The capital of France is Paris. " * 4,
        origin="bench",
    ).SerializeToString()

    convs = [
        (
            await stub.CreateConversation(pb.CreateConversationRequest(name=f"w{w}"))
        ).conversation.conversation_id
        for w in range(32)
    ]

    def echo_factory(w: int) -> Call:
        return lambda: echo(payload)

    def create_factory(w: int) -> Call:
        request = pb.CreateInteractionRequest(
            conversation_id=convs[w],
            input="What is the capital of France?",
            response="The capital of France is Paris. " * 4,
            origin="bench",
        )
        return lambda: stub.CreateInteraction(request)

    small = (await stub.CreateConversation(pb.CreateConversationRequest())).conversation
    await _fill(ports["redis"], small.conversation_id, 10)
    big = (await stub.CreateConversation(pb.CreateConversationRequest())).conversation
    await _fill(ports["redis"], big.conversation_id, 10_000)

    def get_factory(w: int) -> Call:
        request = pb.GetConversationRequest(conversation_id=convs[w])
        return lambda: stub.GetConversation(request)

    def list_factory(w: int) -> Call:
        request = pb.ListInteractionsRequest(conversation_id=small.conversation_id, page_size=10)
        return lambda: stub.ListInteractions(request)

    factories = {
        "echo": echo_factory,
        "GetConversation": get_factory,
        "CreateInteraction": create_factory,
        "ListInteractions(10)": list_factory,
    }
    rows: list[tuple[str, dict]] = []
    for in_flight in args.in_flight:
        measured = await _compare(factories, in_flight, args.seconds, args.rounds)
        rows += [(f"{name:<21}x{in_flight:<2}", r) for name, r in measured.items()]

    # A page from the middle of the long conversation: page there, then time that page.
    token = ""
    for _ in range(50):
        page = await stub.ListInteractions(
            pb.ListInteractionsRequest(
                conversation_id=big.conversation_id, page_size=100, page_token=token
            )
        )
        token = page.next_page_token

    def list_call(cid: str, page_token: str = "") -> Call:
        request = pb.ListInteractionsRequest(
            conversation_id=cid, page_size=10, page_token=page_token
        )
        return lambda: stub.ListInteractions(request)

    cases = [
        ("10 interactions, first page", list_call(small.conversation_id)),
        ("10,000 interactions, first page", list_call(big.conversation_id)),
        ("10,000 interactions, page at 5,000", list_call(big.conversation_id, token)),
    ]
    lat = [(name, await _latency(call, args.samples)) for name, call in cases]

    print(
        f"\nappendfsync={args.appendfsync}, redis over {args.redis}, batch window "
        f"{'default' if args.batch_window is None else f'{args.batch_window:g} s'}, "
        f"{args.seconds:g} s per row "
        f"in {args.rounds} interleaved rounds, cpus={os.cpu_count()}"
    )
    print(f"{'calls':<26}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs echo':>9}")
    for name, r in rows:
        print(
            f"{name:<26}{r['rate']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['ratio']:>8.0%}"
        )
    print(f"\n{'ListInteractions page_size=10, 1 in flight':<44}{'p50 ms':>8}{'p99 ms':>8}")
    for name, r in lat:
        print(f"{name:<44}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}")
    ratio = lat[1][1]["p50_ms"] / lat[0][1]["p50_ms"]
    print(f"\nlist p50 10,000 vs 10 interactions: {ratio:.2f}x (target: ~1, independent of length)")
    create_ratios = [r["ratio"] for n, r in rows if n.startswith("CreateInteraction")]
    levels = ", ".join(f"x{n}" for n in args.in_flight)
    print(
        "CreateInteraction vs echo: "
        + ", ".join(f"{r:.0%}" for r in create_ratios)
        + f" ({levels}; target >= 70%)"
    )
    await echo_ch.close()
    await mem_ch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput row")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved slices per row")
    parser.add_argument("--samples", type=int, default=1000, help="per latency row")
    parser.add_argument(
        "--in-flight", type=lambda v: [int(n) for n in v.split(",")], default=[1, 32],
        help="comma-separated concurrency levels (default 1,32)",
    )  # fmt: skip
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    parser.add_argument(
        "--redis", default="unix", choices=["unix", "tcp"],
        help="how the memory service reaches its Redis (the embedded default: unix)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-window", type=float, default=None,
        help="the service's GENSEARCH_MEMORY_REDIS_BATCH_WINDOW in seconds (default: its default)",
    )  # fmt: skip
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.appendfsync, args.redis, args.batch_window))
    else:
        asyncio.run(_bench(args))


if __name__ == "__main__":
    main()
