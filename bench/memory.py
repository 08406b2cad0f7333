"""Memory service: CreateInteraction beside its two floors, standalone and Redis Cluster.

    .venv/bin/python bench/memory.py [--rounds 5] [--slice 0.6] [--in-flight 1,32]
        [--modes standalone,cluster] [--appendfsync everysec] [--no-list]

Everything runs as deployed, each server in its own process, all on loopback TCP:

- **echo**: a bare ``grpc.aio`` server in a process of its own (one generic unary method,
  bytes in, the same bytes out): the floor of any gRPC call;
- **service**: ``python -m services.memory`` pointed at the Redis of the mode (a
  standalone server, or a three-master cluster with ``GENSEARCH_MEMORY_REDIS_CLUSTER=true``),
  called with CreateInteraction;
- **redis-py**: this process running the service's own create script
  (``services/memory/lua/create_interaction.lua``, EVALSHA through ``register_script``)
  with the same keys and arguments the store sends: the floor of the Redis work.

The three kinds take turns in short slices, ``--rounds`` times, so a burst of load from
elsewhere hits them alike; each row gives the median calls/s of the rounds and their range,
and the service's rate as a share of each floor (median of the per-round ratios). Then, on
the standalone server, ListInteractions latency for a 10- and a 10,000-interaction
conversation (page size 10): a page costs the same however long the conversation is.
There is no target for CreateInteraction: the floors show where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2 as pb  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc  # noqa: E402

from bench.report import Figures, median_range  # noqa: E402
from services.common.auth import ANONYMOUS, DEFAULT_TENANT  # noqa: E402
from services.common.redis_client import RedisClient, connect  # noqa: E402
from services.devlaunch.redis_server import RedisProcess  # noqa: E402
from services.memory.ids import UUIDv7Generator  # noqa: E402
from services.memory.settings import MemorySettings  # noqa: E402
from services.memory.store import (  # noqa: E402
    MemoryStore,
    Owner,
    lua_source,
)
from tests.support.processes import wait_serving  # noqa: E402
from tests.support.redis_cluster import LocalCluster  # noqa: E402

ECHO_METHOD = "/bench.v1.EchoService/Echo"
Call = Callable[[], Awaitable[Any]]
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris. " * 4


# ---- the echo server (child process) ---------------------------------------------------


async def _serve_echo() -> None:
    server = grpc.aio.server()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.v1.EchoService", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


# ---- processes -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _echo_process() -> AsyncIterator[str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-echo", stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert child.stdout is not None
    try:
        port = json.loads(await child.stdout.readline())["port"]
        yield f"127.0.0.1:{port}"
    finally:
        child.send_signal(signal.SIGTERM)
        await child.wait()


@contextlib.asynccontextmanager
async def _memory_process(redis_url: str, cluster: bool, data: Path) -> AsyncIterator[str]:
    """``python -m services.memory`` as deployed, configured by environment, on a port of
    its own choosing (0), read back once it serves: a port picked here would be free only
    until the service bound it, seconds of imports later."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update(
        GENSEARCH_MEMORY_REDIS_URL=redis_url,
        GENSEARCH_MEMORY_REDIS_CLUSTER="true" if cluster else "false",
        GENSEARCH_MEMORY_PORT="0",
        GENSEARCH_MEMORY_METRICS_PORT="0",
        GENSEARCH_MEMORY_MAX_INTERACTIONS_PER_CONVERSATION=str(MAX_INTERACTIONS_PER_CONVERSATION),
        GENSEARCH_DATA_DIR=str(data),
        GENSEARCH_LOG_LEVEL="WARNING",
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.memory", cwd=ROOT, env=env
    )
    try:
        port = await wait_serving(
            "127.0.0.1:0", child, service="gensearch.memory.v1.MemoryService", timeout=60
        )
        yield f"127.0.0.1:{port}"
    finally:
        child.send_signal(signal.SIGTERM)
        await child.wait()


@contextlib.asynccontextmanager
async def _redis(mode: str, data: Path, appendfsync: str) -> AsyncIterator[str]:
    if mode == "cluster":
        cluster = LocalCluster(data / "cluster", appendfsync=appendfsync)
        try:
            await cluster.start()
            yield cluster.url
        finally:
            cluster.stop()
    else:
        server = RedisProcess(data / "redis", appendfsync=appendfsync)
        await server.start()
        try:
            yield server.url
        finally:
            await server.stop()


# ---- measuring -------------------------------------------------------------------------


async def _rate(call_factory: Callable[[int], Call], in_flight: int, seconds: float) -> float:
    """Calls per second with ``in_flight`` workers, each calling back to back."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        call = call_factory(w)
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return done / (time.perf_counter() - started)


async def _interleaved(
    factories: dict[str, Callable[[int], Call]], in_flight: int, rounds: int, seconds: float
) -> dict[str, list[float]]:
    for factory in factories.values():  # warm up connections, scripts and code paths
        await asyncio.gather(*(factory(w)() for w in range(in_flight)))
    rates: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(rounds):
        for name, factory in factories.items():
            rates[name].append(await _rate(factory, in_flight, seconds))
    return rates


# MemorySettings' default eviction_grace_turns and per-owner byte limit, as the store
# passes them.
EVICTION_GRACE = MemorySettings.model_fields["eviction_grace_turns"].default
MAX_BYTES_PER_OWNER = MemorySettings.model_fields["max_bytes_per_owner"].default
# The bench measures writes, not the cap on turns per conversation: each worker writes all
# its turns into one conversation, more than the default cap on a fast machine.
MAX_INTERACTIONS_PER_CONVERSATION = 1_000_000


class _Floor:
    """redis-py running the create script itself, with the keys and arguments of the store."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        store, owner = MemoryStore(redis), Owner(DEFAULT_TENANT, ANONYMOUS)
        self._tag = store.tag(owner)
        self._caller = store.caller(owner)
        self._script = redis.register_script(lua_source("create_interaction"))  # type: ignore[misc]
        self._ids = UUIDv7Generator()

    def call(self, cid: str) -> Call:
        tag = self._tag
        data = pb.Interaction(
            conversation_id=cid, input=QUESTION, response=ANSWER, origin="bench"
        ).SerializeToString()

        async def create() -> None:
            iid, now = self._ids.new()
            keys = [f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints", f"{tag}:int:{iid}",
                    f"{tag}:convs", f"{tag}:req:", f"{tag}:claim:", f"{tag}:usage"]  # fmt: skip
            # As the store sends them: no traces, the default eviction grace and limits
            # (the cap on turns as the bench's service has it), no new conversation ("0")
            # and no turns declared for eviction (0).
            args = [self._caller, tag, cid, iid, now, "", 1000, data, b"", EVICTION_GRACE,
                    MAX_BYTES_PER_OWNER, MAX_INTERACTIONS_PER_CONVERSATION, "0", 0]  # fmt: skip
            out = await self._script(keys=keys, args=args)
            if out[0] != 1:  # a floor that writes nothing would be no floor
                raise SystemExit(f"the floor's create script wrote nothing (status {out[0]})")

        return create

    async def check_created_by_service(self, cid: str) -> None:
        if not await self._redis.exists(f"{self._tag}:conv:{cid}"):
            raise SystemExit(
                "the memory service does not use the Redis this bench started "
                "(were its GENSEARCH_* setting names changed?)"
            )


async def _mode(
    mode: str, echo_address: str, args: argparse.Namespace, figures: Figures
) -> list[str]:
    data = Path(tempfile.mkdtemp(prefix=f"bench-memory-{mode}-"))
    lines = []
    async with (
        _redis(mode, data, args.appendfsync) as url,
        _memory_process(url, mode == "cluster", data) as address,
        grpc.aio.insecure_channel(echo_address) as echo_channel,
        grpc.aio.insecure_channel(address) as channel,
    ):
        redis = connect(url, cluster=mode == "cluster", socket_timeout=5, connect_timeout=2)
        floor = _Floor(redis)
        stub = pb_grpc.MemoryServiceStub(channel)
        echo = echo_channel.unary_unary(ECHO_METHOD)
        width = max(args.in_flight)
        convs = [
            (
                await stub.CreateConversation(pb.CreateConversationRequest(name=f"w{w}"))
            ).conversation.conversation_id
            for w in range(2 * width)
        ]
        await floor.check_created_by_service(convs[0])
        payload = pb.CreateInteractionRequest(
            conversation_id=convs[0], input=QUESTION, response=ANSWER, origin="bench"
        ).SerializeToString()

        def service(w: int) -> Call:
            request = pb.CreateInteractionRequest(
                conversation_id=convs[w], input=QUESTION, response=ANSWER, origin="bench"
            )
            return lambda: stub.CreateInteraction(request)

        factories = {
            "echo": lambda w: lambda: echo(payload),
            "redis-py": lambda w: floor.call(convs[width + w]),
            "service": service,
        }
        for in_flight in args.in_flight:
            rates = await _interleaved(factories, in_flight, args.rounds, args.slice)
            service_rates = rates["service"]
            _headline(figures, mode, in_flight, rates)
            for name, values in rates.items():
                share = ""
                if name != "service":
                    ratios = [s / v for s, v in zip(service_rates, values, strict=True)]
                    share = f"service = {median_range(ratios, '.0%')} of it"
                rate = median_range(values, ",.0f")
                lines.append(f"{mode:<11}x{in_flight:<3}{name:<10}{rate:>24}  {share}")
        if mode == "standalone" and args.list:
            lines += await _list_latency(stub, floor, args.samples)
        await redis.aclose()
    return lines


def _headline(figures: Figures, mode: str, in_flight: int, rates: dict[str, list[float]]) -> None:
    """CreateInteraction's rate and its share of each floor (medians of the per-round
    ratios), as bench/headline.py shows them."""
    service = rates["service"]
    where = f"CreateInteraction {mode} x{in_flight}"
    figures.add(f"{where}", statistics.median(service), "calls/s")
    for floor in ("echo", "redis-py"):
        ratios = [a / b for a, b in zip(service, rates[floor], strict=True)]
        figures.add(f"{where} / {floor}", 100 * statistics.median(ratios), "%")


async def _list_latency(stub: pb_grpc.MemoryServiceStub, floor: _Floor, samples: int) -> list[str]:
    async def conversation(size: int) -> str:
        cid = (await stub.CreateConversation(pb.CreateConversationRequest())).conversation
        create = floor.call(cid.conversation_id)
        for start in range(0, size, 200):
            await asyncio.gather(*(create() for _ in range(min(200, size - start))))
        return cid.conversation_id

    small, big = await conversation(10), await conversation(10_000)
    token = ""
    for _ in range(50):  # to the middle of the long one, 100 at a time
        page = await stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=big, page_size=100, page_token=token)
        )
        token = page.next_page_token

    async def p50(cid: str, page_token: str = "") -> float:
        request = pb.ListInteractionsRequest(
            conversation_id=cid, page_size=10, page_token=page_token
        )
        for _ in range(20):
            await stub.ListInteractions(request)
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            await stub.ListInteractions(request)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    return [
        "",
        "ListInteractions, page_size 10, 1 in flight (standalone): p50 "
        f"{await p50(small):.2f} ms (10 interactions), {await p50(big):.2f} ms (10,000, first "
        f"page), {await p50(big, token):.2f} ms (10,000, page at 5,000)",
    ]


async def _bench(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    lines = []
    figures = Figures()
    async with _echo_process() as echo_address:
        for mode in args.modes:
            lines += await _mode(mode, echo_address, args, figures)
    print(
        f"\nmemory bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
        f"appendfsync {args.appendfsync}, {args.rounds} interleaved rounds of {args.slice:g} s"
    )
    print(f"{'mode':<11}{'calls':<14}{'calls/s median (range)':>24}")
    print("\n".join(lines))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.summary:
        figures.emit()  # last line: bench/headline.py reads it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices per kind")
    parser.add_argument("--slice", type=float, default=0.6, help="seconds per slice")
    parser.add_argument("--samples", type=int, default=300, help="per list latency row")

    def levels(value: str) -> list[int]:
        return [int(n) for n in value.split(",")]

    parser.add_argument("--in-flight", type=levels, default=[1, 32], help="default 1,32")
    parser.add_argument("--modes", type=lambda v: v.split(","), default=["standalone", "cluster"])
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    parser.add_argument("--no-list", dest="list", action="store_false", help="skip list latency")
    parser.add_argument(
        "--summary", action="store_true",
        help="the headline figures only (no list latency), as JSON on the last line",
    )  # fmt: skip
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summary:
        args.list = False
    asyncio.run(_serve_echo() if args.serve_echo else _bench(args))


if __name__ == "__main__":
    main()
