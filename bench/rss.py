"""Resident memory of every service process under many large requests and replies at once,
with the bounds on bytes held at their defaults and lifted, side by side.

The bounds (docs/operations.md#process-memory) count the bytes our code holds: requests
held by calls being served (``MAX_REQUEST_BYTES_IN_FLIGHT``, 64 MiB), replies serialized
and not yet sent (``MAX_REPLY_BYTES_IN_FLIGHT``, 128 MiB, and ``..._PER_TENANT``, 64 MiB),
retrieval's reads being built (``MAX_READ_BYTES_IN_FLIGHT_PER_TENANT``). This measures what
the kernel sees: each service runs as its own process (bench/stack.py), the bench samples
every process's ``/proc/<pid>/status`` (VmRSS, RssAnon) every ``--sample`` seconds and
reads its high-water mark (VmHWM, reset before each load), while ``--tenants`` tenants
(API keys on the gateway) send, all at once, through the gateway:

* ``UpsertObjects``: ``--clients`` requests of one ``--request-mb`` MB object each
  (gateway, then retrieval, hold them);
* ``CreateInteraction``: ``--clients`` requests of ``--turn-mb`` MB of text each
  (gateway, then memory);
* ``BatchGetObjects``: ``--reads`` calls each answered with ``--objects`` stored objects of
  ``--object-mb`` MB (retrieval, then the gateway, hold the replies);
* ``GenerativeSearch``: ``--searches`` calls over ``--hits`` hits of ``--hit-mb`` MB, one
  answer per hit and a grouped one, each ``--answer-mb`` MB from the fake LLM (retrieval's
  search replies, generation's answers, the gateway's reply of all of them).
* ``BatchGetObjects to a stopped reader``: the ``BatchGetObjects`` above from a child
  process stopped (SIGSTOP) for ``--stall`` seconds once its calls are sent: the replies
  wait in the gateway, where the reply bound is meant to act.

Every call is made once (no retries): a refusal (RESOURCE_EXHAUSTED) is counted, not
repeated. Each run starts new processes twice, once with the bounds at their defaults and
once with every one of them lifted to 1 GiB (``LIFTED``, the most the settings take: far
above what the loads send); ``--runs N`` repeats that and prints the median and range of
every figure over the runs.

For each service and load it prints the RSS before the load, the peak (VmHWM), the anonymous
peak (sampled RssAnon: the heap, without mapped files such as the engine's), the RSS two
seconds after, the bytes the load sent through the service (``demand``), the bytes the
bounds let it hold at once (``allowed``: the smaller of the demand and the bound), and the
growth (peak - before) as a multiple of ``allowed``. The model of
docs/operations.md#process-memory counts every held byte twice (gRPC's copy and Python's):
a multiple above 2 is memory the model does not count.

    .venv/bin/python bench/rss.py --runs 3
    .venv/bin/python bench/rss.py --clients 4 --request-mb 1 --reads 2 --searches 2 --summary
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2 as mem_pb  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from bench.report import Figures, machine, markdown, table  # noqa: E402
from bench.stack import (  # noqa: E402
    API_KEYS,
    REPLY_BYTES_IN_FLIGHT,
    REPLY_BYTES_IN_FLIGHT_PER_TENANT,
    REQUEST_BYTES_IN_FLIGHT,
    RETRIEVAL_READ_BYTES_IN_FLIGHT_PER_TENANT,
    Stack,
    provider,
    service_setting,
)
from services.common.settings import (  # noqa: E402
    DEFAULT_REPLY_BYTES_IN_FLIGHT,
    DEFAULT_REQUEST_BYTES_IN_FLIGHT,
    MAX_SIZE_BYTES,
)

MIB = 1024 * 1024
MB = 1_000_000
SERVICES = ("gateway", "retrieval", "generation", "memory")
LIFTED = MAX_SIZE_BYTES  # 1 GiB: every bound "lifted"
DIM = 4
# The growth the model allows per byte held (docs/operations.md#process-memory): a held
# message exists as gRPC's bytes and as Python's (the parsed request, the serialized reply).
MODEL_MULTIPLE = 2.0
STALLED = "BatchGetObjects to a stopped reader"
SETTLE_NOTE = "--settle seconds after the load"
# Which bound holds each load's bytes: requests, or replies.
LOADS = {
    "UpsertObjects": "request",
    "CreateInteraction": "request",
    "BatchGetObjects": "reply",
    "GenerativeSearch": "reply",
    # BatchGetObjects from a client process stopped (SIGSTOP) once its calls are sent, for
    # --stall seconds: the replies wait in the gateway, where the reply bound is meant to act.
    STALLED: "reply",
}


def key(tenant: int) -> str:
    return f"rss-bench-key-{tenant}"


def metadata(tenant: int) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key(tenant)}"),)


def object_id(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"rss-bench/{n}"))


# -- sampling /proc ---------------------------------------------------------------------
def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of ``pid``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    """VmHWM back to the current RSS (proc(5), clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Sampler:
    """Every ``interval`` s: each process's RSS and anonymous RSS; the peaks since ``reset``."""

    pids: dict[str, int]
    interval: float
    peak_rss: dict[str, int] = field(default_factory=dict)
    peak_anon: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def reset(self) -> None:
        for pid in self.pids.values():
            reset_peak(pid)
        self.peak_rss = {name: 0 for name in self.pids}
        self.peak_anon = {name: 0 for name in self.pids}

    def sample(self) -> None:
        self.samples += 1
        for name, pid in self.pids.items():
            now = status(pid)
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), now["VmRSS"])
            self.peak_anon[name] = max(self.peak_anon.get(name, 0), now["RssAnon"])

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)


# -- the loads ----------------------------------------------------------------------------
@dataclass
class Load:
    name: str
    calls: Callable[[], list[Awaitable[Any]]]
    # Bytes the load sends through each service, all calls together.
    demand: dict[str, int]
    ends: collections.Counter[str] = field(default_factory=collections.Counter)


def text_object(n: int, size: int, **more: str) -> ret_pb.DataObject:
    props = struct_pb2.Struct()
    # One repeated letter: a single token, so the load is bytes, not tokenizing.
    props.update({"body": chr(97 + n % 26) * size, **more})
    return ret_pb.DataObject(id=object_id(n), properties=props, vector=[1.0, float(n), 0.5, 0.1])


async def create(stub: ret_grpc.RetrievalServiceStub, tenant: int, name: str) -> None:
    text = ret_pb.DATA_TYPE_TEXT
    await stub.CreateCollection(
        ret_pb.CreateCollectionRequest(
            collection=ret_pb.Collection(
                name=name,
                properties=[ret_pb.Property(name=p, data_type=text) for p in ("body", "title")],
                vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
                keyword_index=False,  # megabytes of text: the bytes, not the BM25 index
                generative=ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
            )
        ),
        metadata=metadata(tenant),
    )


async def setup(args: argparse.Namespace, load: str, channels: list[grpc.aio.Channel]) -> None:
    """What ``load`` needs, for every tenant: ``Sink`` (written by UpsertObjects), ``Big``
    (read by BatchGetObjects), ``Gen`` (searched by GenerativeSearch); and one small call
    of each kind first, so that the first call's imports and caches count in the idle RSS."""
    for tenant in range(args.tenants):
        stub = ret_grpc.RetrievalServiceStub(channels[tenant])
        md = metadata(tenant)
        if load == "CreateInteraction":
            await mem_grpc.MemoryServiceStub(channels[tenant]).CreateInteraction(
                mem_pb.CreateInteractionRequest(
                    input="q", response="a", new_conversation=mem_pb.CreateConversationRequest()
                ),
                metadata=md,
                timeout=60,
            )
            continue
        name = {"UpsertObjects": "Sink", "BatchGetObjects": "Big", STALLED: "Big"}.get(load, "Gen")
        await create(stub, tenant, name)
        if load == "UpsertObjects":
            small = ret_pb.UpsertObjectsRequest(collection=name, objects=[text_object(0, 10)])
            await stub.UpsertObjects(small, metadata=md, timeout=60)
            continue
        size = int((args.object_mb if name == "Big" else args.hit_mb) * MB)
        count = args.objects if name == "Big" else args.hits
        per_request = max(1, (4 * MB) // size)
        for start in range(0, count, per_request):
            objects = [
                text_object(n, size, title=f"Book {n}")
                for n in range(start, min(count, start + per_request))
            ]
            await stub.UpsertObjects(
                ret_pb.UpsertObjectsRequest(collection=name, objects=objects),
                metadata=md,
                timeout=120,
            )
        if name == "Big":
            small_read = ret_pb.BatchGetObjectsRequest(collection=name, ids=[object_id(0)])
            await stub.BatchGetObjects(small_read, metadata=md, timeout=60)


def loads(args: argparse.Namespace, channels: list[grpc.aio.Channel]) -> list[Load]:
    tenants = args.tenants

    def calls(
        count: int, rpc: Callable[[grpc.aio.Channel], Any], request: Callable[[int], Any]
    ) -> Callable[[], list[Awaitable[Any]]]:
        """One call of ``rpc`` (the stub method on a channel) by each of ``count`` clients,
        client i with ``request(i)``, on its own connection, as its tenant i % tenants."""

        def make() -> list[Awaitable[Any]]:
            return [
                rpc(channels[i])(request(i), metadata=metadata(i % tenants), timeout=120)
                for i in range(count)
            ]

        return make

    upsert_size = int(args.request_mb * MB)
    upserts = [
        ret_pb.UpsertObjectsRequest(collection="Sink", objects=[text_object(n % 4, upsert_size)])
        for n in range(args.clients)
    ]
    upsert_calls = calls(
        args.clients, lambda c: ret_grpc.RetrievalServiceStub(c).UpsertObjects, upserts.__getitem__
    )

    turn = int(args.turn_mb * MB) // 2  # input and response, each at most 1 MiB
    interaction = mem_pb.CreateInteractionRequest(
        input="q" * turn,
        response="a" * turn,
        new_conversation=mem_pb.CreateConversationRequest(name="rss"),
    )
    interaction_calls = calls(
        args.clients,
        lambda c: mem_grpc.MemoryServiceStub(c).CreateInteraction,
        lambda _: interaction,
    )

    read = ret_pb.BatchGetObjectsRequest(
        collection="Big", ids=[object_id(n) for n in range(args.objects)]
    )
    read_calls = calls(
        args.reads, lambda c: ret_grpc.RetrievalServiceStub(c).BatchGetObjects, lambda _: read
    )

    search = gw_pb.GenerativeSearchRequest(
        collection="Gen",
        near_vector=ret_pb.NearVector(vector=[1.0, 1.0, 0.5, 0.1]),
        limit=args.hits,
        generate=gw_pb.Generate(
            single_prompt="Name {title}",
            grouped_task="Name them all",
            grouped_properties=["title"],
        ),
    )
    search_calls = calls(
        args.searches, lambda c: gw_grpc.GatewayServiceStub(c).GenerativeSearch, lambda _: search
    )

    up = upserts[0].ByteSize() * args.clients
    turns = interaction.ByteSize() * args.clients
    reads = int(args.objects * args.object_mb * MB) * args.reads
    hits = int(args.hits * args.hit_mb * MB) * args.searches
    answers = int((args.hits + 1) * args.answer_mb * MB) * args.searches
    return [
        Load(STALLED, list, {"gateway": reads, "retrieval": reads}),  # calls: stalled_reads
        Load("UpsertObjects", upsert_calls, {"gateway": up, "retrieval": up}),
        Load("CreateInteraction", interaction_calls, {"gateway": turns, "memory": turns}),
        Load("BatchGetObjects", read_calls, {"gateway": reads, "retrieval": reads}),
        Load(
            "GenerativeSearch",
            search_calls,
            {"gateway": hits + answers, "retrieval": hits, "generation": answers},
        ),
    ]


def allowed(load: str, service: str, demand: int, lifted: bool, tenants: int) -> int:
    """The bytes the bounds let ``service`` hold at once under ``load``: the smaller of
    what the load sends and the bound (at least one message always goes: not counted)."""
    if lifted:
        return demand
    if LOADS[load] == "request":
        bound = DEFAULT_REQUEST_BYTES_IN_FLIGHT
    else:
        per_tenant = DEFAULT_REPLY_BYTES_IN_FLIGHT // 2
        bound = min(DEFAULT_REPLY_BYTES_IN_FLIGHT, tenants * per_tenant)
    return min(demand, bound)


def bounds_env(lifted: bool) -> dict[str, dict[str, str]]:
    if not lifted:
        return {}
    env = {
        name: {
            service_setting(name, REQUEST_BYTES_IN_FLIGHT): str(LIFTED),
            service_setting(name, REPLY_BYTES_IN_FLIGHT): str(LIFTED),
            service_setting(name, REPLY_BYTES_IN_FLIGHT_PER_TENANT): str(LIFTED),
        }
        for name in SERVICES
    }
    env["retrieval"][RETRIEVAL_READ_BYTES_IN_FLIGHT_PER_TENANT] = str(LIFTED)
    return env


def end_of(result: Any) -> str:
    if isinstance(result, grpc.aio.AioRpcError):
        return result.code().name
    if isinstance(result, BaseException):
        return type(result).__name__
    return "OK"


# -- one configuration and load --------------------------------------------------------
async def measure(args: argparse.Namespace, lifted: bool, load_name: str) -> list[dict[str, Any]]:
    """One new stack, bounds at defaults or lifted, under one load: a row per service (a
    stack of its own per load, so that what one load left in a process does not hide what
    the next one takes)."""
    rows: list[dict[str, Any]] = []
    async with Stack() as stack:
        stack.extra_env.update(bounds_env(lifted))
        keys = ",".join(f"u{t}@t{t}/admin:{key(t)}" for t in range(args.tenants))
        stack.extra_env.setdefault("gateway", {})[API_KEYS] = keys
        llm = await stack.fake_llm(latency=args.latency, reply_chars=int(args.answer_mb * MB))
        memory = await stack.memory()
        retrieval = await stack.retrieval()
        generation = await stack.generation({"fake": provider(llm)})
        gateway = await stack.gateway(memory, retrieval, generation)
        procs = {"gateway": gateway, "retrieval": retrieval, "generation": generation}
        procs["memory"] = memory
        pids = {name: p.proc.pid for name, p in procs.items() if p.proc is not None}
        started = rss(pids)
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        count = max(args.clients, args.reads, args.searches, args.tenants)
        channels = [
            grpc.aio.insecure_channel(gateway.address, options=options) for _ in range(count)
        ]
        try:
            await setup(args, load_name, channels)
            load = next(x for x in loads(args, channels) if x.name == load_name)
            await asyncio.sleep(args.settle)
            idle = rss(pids)
            idle_anon = {name: status(pid)["RssAnon"] for name, pid in pids.items()}
            sampler = Sampler(pids, args.sample)
            sampler.reset()
            sampling = asyncio.create_task(sampler.run())
            try:
                if load.name == STALLED:
                    load.ends.update(await stalled_reads(args, gateway.address, sampler))
                else:
                    results = await asyncio.gather(*load.calls(), return_exceptions=True)
                    load.ends.update(end_of(r) for r in results)
                sampler.sample()
            finally:
                sampling.cancel()
            hwm = {name: status(pid)["VmHWM"] for name, pid in pids.items()}
            await asyncio.sleep(args.settle)
            after = rss(pids)
        finally:
            for channel in channels:
                await channel.close()
    for name in SERVICES:
        demand = load.demand.get(name, 0)
        rows.append(
            {
                "config": "lifted" if lifted else "defaults",
                "load": load.name,
                "service": name,
                "started": started[name],
                "idle": idle[name],
                "peak": max(hwm[name], sampler.peak_rss[name]),
                "idle_anon": idle_anon[name],
                "peak_anon": sampler.peak_anon[name],
                "after": after[name],
                "demand": demand,
                "allowed": allowed(load.name, name, demand, lifted, args.tenants),
                "ends": dict(load.ends),
                "samples": sampler.samples,
            }
        )
    return rows


async def stalled_reads(args: argparse.Namespace, address: str, sampler: Sampler) -> dict[str, int]:
    """``--reads`` BatchGetObjects from a child process (this script, ``--reader``), stopped
    with SIGSTOP once it has sent them and let go on after ``--stall`` seconds: its replies
    wait in the gateway meanwhile. How its calls ended."""
    argv = [sys.executable, __file__, "--reader", address, "--reads", str(args.reads)]
    argv += ["--tenants", str(args.tenants), "--objects", str(args.objects)]
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert child.stdout is not None
    try:
        await asyncio.wait_for(child.stdout.readline(), 60)  # "sent"
        child.send_signal(signal.SIGSTOP)
        await asyncio.sleep(args.stall)
        sampler.sample()
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGCONT)
    out, _ = await asyncio.wait_for(child.communicate(), 180)
    if child.returncode != 0:
        raise RuntimeError(f"the stopped reader failed ({child.returncode})")
    ends: dict[str, int] = json.loads(out.decode().splitlines()[-1])
    return ends


async def reader(args: argparse.Namespace) -> None:
    """The child of ``stalled_reads``: sends its calls, says so, prints how they ended."""
    options = [("grpc.max_receive_message_length", -1)]
    channels = [grpc.aio.insecure_channel(args.reader, options=options) for _ in range(args.reads)]
    read = ret_pb.BatchGetObjectsRequest(
        collection="Big", ids=[object_id(n) for n in range(args.objects)]
    )
    calls = [
        asyncio.ensure_future(
            ret_grpc.RetrievalServiceStub(channel).BatchGetObjects(
                read, metadata=metadata(i % args.tenants), timeout=120
            )
        )
        for i, channel in enumerate(channels)
    ]
    await asyncio.sleep(0.5)  # the requests are small: written by now
    print("sent", flush=True)
    results = await asyncio.gather(*calls, return_exceptions=True)
    print(json.dumps(collections.Counter(end_of(r) for r in results)), flush=True)
    for channel in channels:
        await channel.close()


def rss(pids: dict[str, int]) -> dict[str, int]:
    return {name: status(pid)["VmRSS"] for name, pid in pids.items()}


# -- reporting ----------------------------------------------------------------------------
def mib(n: float) -> str:
    return f"{n / MIB:.0f}"


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """Median and range over the runs (one run: the value alone)."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def multiple(row: dict[str, Any]) -> float:
    """Growth over idle, as a multiple of the bytes the bounds let the service hold."""
    return (row["peak"] - row["idle"]) / row["allowed"]


def ends(rows: list[dict[str, Any]]) -> str:
    """How the calls ended: each status with its range over the runs."""
    codes = sorted({code for r in rows for code in r["ends"]})
    return ", ".join(
        f"{code} {spread([r['ends'].get(code, 0) for r in rows], lambda x: f'{x:.0f}')}"
        for code in codes
    )


def report(runs: list[list[dict[str, Any]]], summary: bool, as_markdown: bool = False) -> None:
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for rows in runs:
        for row in rows:
            if row["demand"]:  # else the service takes no part in this load
                by_key[(row["load"], row["service"], row["config"])].append(row)
    header = [
        "load / service / bounds", "at start", "idle", "peak", "idle anon", "peak anon", "after",
        "sent", "allowed", "(peak - idle) / allowed", "calls ended",
    ]  # fmt: skip
    lines = []
    figures = Figures()
    for (load, service, config), rows in by_key.items():
        lines.append(
            [
                f"{load} / {service} / {config}",
                *(spread([r[c] for r in rows], mib) for c in ("started", "idle", "peak")),
                *(spread([r[c] for r in rows], mib) for c in ("idle_anon", "peak_anon", "after")),
                mib(rows[0]["demand"]),
                mib(rows[0]["allowed"]),
                spread([multiple(r) for r in rows], lambda x: f"{x:.1f}"),
                ends(rows),
            ]
        )
        name = f"{load} {service} {config}"
        figures.add(f"{name} peak RSS", statistics.median(r["peak"] for r in rows) / MIB, "MiB")
        figures.add(f"{name} peak / allowed", statistics.median(map(multiple, rows)), "x")
    print(
        "RSS in MiB, median (range) over the runs. idle: collections loaded, before the load;"
        "\npeak: VmHWM (reset at the load's start) or the largest sample; peak anon: the "
        "largest sampled\nRssAnon (heap, not mapped files; idle anon: before the load); after: RSS "
        f"{SETTLE_NOTE}; sent: bytes the load sent through the service;\nallowed: the "
        "smaller of sent and the bounds (defaults: requests 64 MiB, replies 128 MiB);\n"
        f"the model (docs/operations.md#process-memory) allows growth of {MODEL_MULTIPLE:g} x "
        "allowed."
    )
    print(table(header, lines))
    if as_markdown:
        print()
        print(markdown(header, lines))
    if summary:
        figures.emit()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--clients", type=int, default=64, help="UpsertObjects and turns")
    parser.add_argument("--request-mb", type=float, default=4.0)
    parser.add_argument("--turn-mb", type=float, default=2.0, help="at most 2 (1 MiB each side)")
    parser.add_argument("--reads", type=int, default=32, help="concurrent BatchGetObjects")
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--object-mb", type=float, default=1.0)
    parser.add_argument("--searches", type=int, default=24, help="concurrent GenerativeSearch")
    parser.add_argument("--hits", type=int, default=8)
    parser.add_argument("--hit-mb", type=float, default=0.5)
    parser.add_argument("--answer-mb", type=float, default=0.8, help="each LLM answer")
    parser.add_argument("--latency", type=float, default=0.3, help="the fake LLM's, seconds")
    parser.add_argument("--sample", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after each load")
    parser.add_argument(
        "--loads", type=lambda v: v.split(","), default=list(LOADS), help="comma-separated"
    )
    parser.add_argument("--json", type=Path, help="write every row of every run here")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown too")
    parser.add_argument("--summary", action="store_true", help="end with the figures as JSON")
    parser.add_argument("--stall", type=float, default=3.0, help="seconds the reader stops")
    parser.add_argument("--from-json", type=Path, help="report the runs of this --json file")
    parser.add_argument("--reader", help=argparse.SUPPRESS)  # the stopped reader's child
    args = parser.parse_args()
    if args.reader:
        asyncio.run(reader(args))
        return
    unknown = [name for name in args.loads if name not in LOADS]
    if unknown:
        parser.error(f"--loads: no load {unknown[0]!r} (loads: {', '.join(LOADS)})")
    if args.from_json is not None:
        report(json.loads(args.from_json.read_text())["runs"], args.summary, args.markdown)
        return
    print(f"bench/rss.py, commit {commit()}, started {machine()}", flush=True)
    began = time.monotonic()
    runs = []
    for n in range(args.runs):
        rows = []
        for load in args.loads:
            for lifted in (False, True):
                rows += asyncio.run(measure(args, lifted, load))
        runs.append(rows)
        print(f"run {n + 1}: load average {load_average()}", flush=True)
    print(
        f"finished {(time.monotonic() - began) / 60:.1f} min later, load average {load_average()}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "runs": runs}))  # fmt: skip
    report(runs, args.summary, args.markdown)


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    """The checkout's commit, short."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


if __name__ == "__main__":
    main()
