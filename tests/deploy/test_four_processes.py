"""The four services as an operator runs them: each its own ``python -m services.<name>``
process, configured only by the documented variables, memory and the gateway's quotas on a
real three-node Redis Cluster (``GENSEARCH_<SERVICE>_REDIS_URL`` + ``_REDIS_CLUSTER``), each
exporting its spans to one loopback OTLP/gRPC collector. One Ask and one GenerativeSearch
through the gateway: one trace each, across the processes that took part, with no key,
token or prompt in what was exported; every metrics endpoint answers with the documented
names.

The in-process tests (tests/gateway/test_tracing.py) show the trace's shape with one
tracer provider for all four; only separate processes show that each service's own
exporter, set from its own environment, sends its part under the caller's trace id."""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.gateway.conftest import ALICE, DIM, KEYS, TOKEN, book_objects, books_collection
from tests.support.fake_openai import FakeOpenAI
from tests.support.otlp_collector import Collector
from tests.support.processes import listening_ports, owned_ports_known, start_serving
from tests.support.redis_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "memory": "gensearch.memory.v1.MemoryService",
    "retrieval": "gensearch.retrieval.v1.RetrievalService",
    "generation": "gensearch.generation.v1.GenerationService",
    "gateway": "gensearch.gateway.v1.GatewayService",
}
PROMPT = "Summarise the zanyness of {title}"
QUESTION = "Which planet has sandworms?"
# The documented names every service exports (docs/operations.md, "Metric names").
CHASSIS_METRICS = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "gensearch_grpc_server_in_flight",
}
# Every service that uses Redis (docs/operations.md).
REDIS_METRICS = {"gensearch_redis_errors_total"}

pytestmark = pytest.mark.skipif(not owned_ports_known(), reason="needs /proc to find ports")


class _Processes:
    def __init__(self) -> None:
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.addresses: dict[str, str] = {}

    async def start(self, name: str, env: dict[str, str]) -> str:
        proc, address = await start_serving(
            f"services.{name}", env, service=SERVICES[name], cwd=ROOT
        )
        self.procs[name], self.addresses[name] = proc, address
        return address

    def metrics_port(self, name: str) -> int:
        """The port the process listens on besides its gRPC one (its metrics port 0)."""
        grpc_port = int(self.addresses[name].rsplit(":", 1)[1])
        (port,) = listening_ports(self.procs[name].pid) - {grpc_port}
        return port

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def _env(data_dir: Path, collector_port: int, **variables: str) -> dict[str, str]:
    """The process environment with none of the caller's GENSEARCH_ or OTEL_ variables: the
    documented ones given, and the collector as the OTLP endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENSEARCH_", "OTEL_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        GENSEARCH_DATA_DIR=str(data_dir),
        GENSEARCH_INTERNAL_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    env.update(variables)
    return env


def _prefixed(service: str, **variables: str) -> dict[str, str]:
    """The variables named as ``service`` reads them: ``GENSEARCH_<SERVICE>_<name>``."""
    return {f"GENSEARCH_{service.upper()}_{k}": v for k, v in variables.items()}


async def _create_books(channel: grpc.aio.Channel) -> None:
    retrieval = ret_grpc.RetrievalServiceStub(channel)  # the gateway serves it too
    await retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=books_collection()), metadata=ALICE
    )
    response = await retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection="Books", objects=book_objects()), metadata=ALICE
    )
    assert not response.errors, response.errors


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def _metric_names(exposition: str) -> set[str]:
    """The metrics a Prometheus text exposition declares (``# TYPE`` lines: a labelled
    metric none of whose series exists yet is declared too), counters by their series'
    name (``…_total``), and every series' name."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names.add(name + "_total" if kind == "counter" and "_total" not in name else name)
        elif line and not line.startswith("#"):
            series = line.split("{")[0].split(" ")[0]
            for suffix in ("_bucket", "_count", "_sum"):
                series = series.removesuffix(suffix)
            names.add(series)
    return names


# docs/operations.md's tables of the metrics one service exports ("Gateway only …").
_OWN_TABLE = re.compile(r"^(\w+) only \(`services/\w+/metrics\.py`\)[^\n]*:\n\n((?:\|.*\n)+)", re.M)


def _documented_metrics() -> dict[str, set[str]]:
    """Each service's own metrics as docs/operations.md lists them; every service also
    the chassis' and prometheus-client's process metrics it names."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    own = {
        service.lower(): set(re.findall(r"^\| `(\w+)` \|", table, re.M))
        for service, table in _OWN_TABLE.findall(text)
    }
    assert set(own) == set(SERVICES), own.keys()
    process = {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"}
    return {name: own[name] | CHASSIS_METRICS | process for name in SERVICES}


async def _until_spans(received: Collector, wanted: set[str], root: str) -> list[Span]:
    """Waits (up to 60 s) until every service in ``wanted`` exported a span of the trace of
    the gateway's server span ``root`` and every span's parent there arrived too; returns
    that trace's spans. Each process exports its batches on its own schedule, so a span
    may reach the collector before its parent (a server span ends, and is batched, after
    its children): a trace read at the first span of each service could lack a parent
    still on its way (seen once under load: the tree check below failed)."""
    end = asyncio.get_running_loop().time() + 60
    while True:
        spans = received.spans()
        roots = [s for _, s in spans if s.name == root and s.kind == Span.SPAN_KIND_SERVER]
        if roots:
            trace = [(n, s) for n, s in spans if s.trace_id == roots[0].trace_id]
            ids = {s.span_id for _, s in trace}
            whole = all(not s.parent_span_id or s.parent_span_id in ids for _, s in trace)
            if whole and {n.removeprefix("gensearch-") for n, _ in trace} >= wanted:
                return [s for _, s in trace]
        if asyncio.get_running_loop().time() > end:
            seen = sorted({n for n, _ in spans})
            raise AssertionError(
                f"no whole trace of {root} from {sorted(wanted)}; spans from {seen}"
            )
        await asyncio.sleep(0.05)


async def test_four_processes_one_trace_each_metrics_and_a_redis_cluster(
    tmp_path: Path, collector: tuple[Collector, int]
) -> None:
    received, collector_port = collector
    cluster = LocalCluster(tmp_path / "cluster")
    await cluster.start()
    processes = _Processes()
    try:
        async with FakeOpenAI() as fake:
            provider = {"name": "fake", "base_url": fake.base_url, "default_model": "fake-model"}
            on_cluster = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
            generation = {"PROVIDERS": json.dumps([provider]), "DEFAULT_PROVIDER": "fake"}
            # The back-end services, each with its own documented variables.
            backends = {
                "memory": _prefixed("memory", **on_cluster),
                "retrieval": {},
                "generation": _prefixed("generation", **generation),
            }
            for name, variables in backends.items():
                ports = _prefixed(name, PORT="0", METRICS_PORT="0")
                env = _env(tmp_path / name, collector_port, **ports, **variables)
                await processes.start(name, env)
            # The gateway last: it is given the other three's addresses.
            addresses = {f"{k.upper()}_ADDR": v for k, v in processes.addresses.items()}
            gateway = await processes.start(
                "gateway",
                _env(
                    tmp_path / "gateway",
                    collector_port,
                    GENSEARCH_API_KEYS=KEYS,
                    **_prefixed("gateway", PORT="0", METRICS_PORT="0", **on_cluster, **addresses),
                ),
            )
            async with grpc.aio.insecure_channel(gateway) as channel:
                stub = gw_grpc.GatewayServiceStub(channel)
                await _create_books(channel)
                search = await stub.GenerativeSearch(
                    gw_pb.GenerativeSearchRequest(
                        collection="Books",
                        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
                        limit=2,
                        generate=gw_pb.Generate(single_prompt=PROMPT),
                    ),
                    metadata=ALICE,
                )
                answer = await stub.Ask(
                    gw_pb.AskRequest(
                        collection="Books", llm_question=QUESTION, new_conversation=True
                    ),
                    metadata=ALICE,
                )
            assert all(h.generation.result for h in search.hits) and len(search.hits) == 2
            assert answer.answer and answer.interaction_id

            search_trace = await _until_spans(
                received,
                {"gateway", "retrieval", "generation"},
                "/gensearch.gateway.v1.GatewayService/GenerativeSearch",
            )
            ask_trace = await _until_spans(
                received,
                {"gateway", "retrieval", "generation", "memory"},
                "/gensearch.gateway.v1.GatewayService/Ask",
            )
            # Each request is one trace, a tree across the processes.
            for trace in (search_trace, ask_trace):
                ids = {s.span_id for s in trace}
                assert len([s for s in trace if not s.parent_span_id]) == 1
                assert all(not s.parent_span_id or s.parent_span_id in ids for s in trace)
            assert search_trace[0].trace_id != ask_trace[0].trace_id

            # No key, token or prompt in anything exported, by any process.
            exported = b"".join(r.SerializeToString() for r in received.requests)
            secrets = [ALICE[0][1].split()[-1], TOKEN, "zanyness", "sandworms"]
            assert [s for s in secrets if s.encode() in exported] == []

            documented = _documented_metrics()
            on_redis = {"memory", "gateway"}
            # Every documented metrics endpoint answers with the documented names, and
            # counted the calls its service served.
            for name, service in SERVICES.items():
                text = _scrape(processes.metrics_port(name))
                wanted = documented[name] | (REDIS_METRICS if name in on_redis else set())
                missing = wanted - _metric_names(text)
                assert missing == set(), f"{name}'s /metrics lacks {sorted(missing)}"
                assert f'grpc_service="{service}"' in text, name

            # Memory and the gateway's quotas wrote into the cluster, across its nodes.
            keys: list[bytes] = []
            for node in cluster.nodes:
                async with node.client() as client:
                    keys += [k async for k in client.scan_iter(match="*")]
            assert any(b":quota:{t:" in k for k in keys), keys
            assert any(b":{u:" in k for k in keys), keys
    finally:
        await processes.stop()
        cluster.stop()
