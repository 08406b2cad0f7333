"""The processes a benchmark measures, each started as it is deployed.

Every service runs as its own process, ``python -m services.<name>``, configured by
environment variables only, on a free loopback port, and counts as started once its gRPC
health check answers SERVING. The fake LLM endpoint (``tests/support/fake_openai.py``) is a
process of its own too (``bench/fake_llm.py``). A benchmark's own process holds only its
clients and, where it compares against them, the engines it times directly.

The names of the environment variables the services read live in this module and nowhere
else under ``bench/``: when a setting is renamed, change it here.

    async with Stack() as stack:
        llm = await stack.fake_llm(latency=0.2)
        generation = await stack.generation({"fake": provider(llm)})
        ...
        stub = RetrievalServiceStub(stack.channel(retrieval))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from services.common.auth import DEFAULT_TENANT, Identity, Role, forwarded_identity  # noqa: E402
from services.devlaunch.processes import die_with_parent, free_port  # noqa: E402
from tests.support.processes import owned_ports_known, wait_serving  # noqa: E402

# -- environment variable names ---------------------------------------------------------
# Shared settings are GENSEARCH_<FIELD>, a service's own GENSEARCH_<SERVICE>_<FIELD>
# (services/common/settings.py, services/*/settings.py). Renamed: change them here only.
HOST = "GENSEARCH_HOST"
DATA_DIR = "GENSEARCH_DATA_DIR"
INTERNAL_TOKEN = "GENSEARCH_INTERNAL_TOKEN"
LOG_LEVEL = "GENSEARCH_LOG_LEVEL"
API_KEYS = "GENSEARCH_API_KEYS"  # "user@tenant/role:key,..." (services/common/api_keys.py)

MEMORY_PORT = "GENSEARCH_MEMORY_PORT"
MEMORY_METRICS_PORT = "GENSEARCH_MEMORY_METRICS_PORT"
MEMORY_REDIS_URL = "GENSEARCH_MEMORY_REDIS_URL"  # empty: the service starts its own Redis

RETRIEVAL_PORT = "GENSEARCH_RETRIEVAL_PORT"
RETRIEVAL_METRICS_PORT = "GENSEARCH_RETRIEVAL_METRICS_PORT"
RETRIEVAL_QDRANT_URL = "GENSEARCH_RETRIEVAL_QDRANT_URL"  # empty: qdrant-edge in the data dir
RETRIEVAL_MAX_BATCH_SIZE = "GENSEARCH_RETRIEVAL_MAX_BATCH_SIZE"
RETRIEVAL_MAX_LIMIT = "GENSEARCH_RETRIEVAL_MAX_LIMIT"
RETRIEVAL_LOCAL_EMBED_THREADS = "GENSEARCH_RETRIEVAL_LOCAL_EMBED_THREADS"

GENERATION_PORT = "GENSEARCH_GENERATION_PORT"
GENERATION_METRICS_PORT = "GENSEARCH_GENERATION_METRICS_PORT"
GENERATION_PROVIDERS = "GENSEARCH_GENERATION_PROVIDERS"
GENERATION_DEFAULT_PROVIDER = "GENSEARCH_GENERATION_DEFAULT_PROVIDER"
GENERATION_LOCAL_LLM_AUTOSTART = "GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART"
GENERATION_REDIS_URL = "GENSEARCH_GENERATION_REDIS_URL"  # provider limits shared by replicas

GATEWAY_PORT = "GENSEARCH_GATEWAY_PORT"
GATEWAY_METRICS_PORT = "GENSEARCH_GATEWAY_METRICS_PORT"
GATEWAY_MEMORY_ADDR = "GENSEARCH_GATEWAY_MEMORY_ADDR"
GATEWAY_RETRIEVAL_ADDR = "GENSEARCH_GATEWAY_RETRIEVAL_ADDR"
GATEWAY_GENERATION_ADDR = "GENSEARCH_GATEWAY_GENERATION_ADDR"
GATEWAY_DEFAULT_MAX_CONCURRENCY = "GENSEARCH_GATEWAY_DEFAULT_MAX_CONCURRENCY"
GATEWAY_REDIS_URL = "GENSEARCH_GATEWAY_REDIS_URL"  # quotas and the generation cache
GATEWAY_MAX_HITS = "GENSEARCH_GATEWAY_MAX_HITS"

# The bounds on bytes held at once (services/common/request_bytes.py, reply_bytes.py,
# services/retrieval/read_bytes.py), by service: GENSEARCH_<SERVICE>_<one of these>.
REQUEST_BYTES_IN_FLIGHT = "MAX_REQUEST_BYTES_IN_FLIGHT"
REPLY_BYTES_IN_FLIGHT = "MAX_REPLY_BYTES_IN_FLIGHT"
REPLY_BYTES_IN_FLIGHT_PER_TENANT = "MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT"
RETRIEVAL_READ_BYTES_IN_FLIGHT_PER_TENANT = (
    "GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT"
)


def service_setting(service: str, field: str) -> str:
    """The variable of ``field`` (e.g. ``REPLY_BYTES_IN_FLIGHT``) in ``service``'s namespace."""
    return f"GENSEARCH_{service.upper()}_{field}"


# -- what every benchmark shares --------------------------------------------------------
TOKEN = "bench-internal-token"
# Metadata a trusted peer (the gateway) sends; benches calling a service directly send it
# too, so both paths run the same identity checks.
IDENTITY = forwarded_identity(Identity("bench", DEFAULT_TENANT, Role.ADMIN), TOKEN)
START_TIMEOUT = 120.0


def _as_the_peer(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """``details`` with ``IDENTITY`` added: a service behind the gateway with a token and
    no keys takes calls from the gateway alone (MISSING_INTERNAL_TOKEN otherwise)."""
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *IDENTITY)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# Two classes: grpc.aio files an interceptor under the first kind it is an instance of.
class _UnaryAsThePeer(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_as_the_peer(details), request)


class _StreamAsThePeer(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_as_the_peer(details), requests)


def peer_channel(address: str) -> grpc.aio.Channel:
    """A channel whose calls reach a service as the gateway's would (``IDENTITY``)."""
    return grpc.aio.insecure_channel(address, interceptors=[_UnaryAsThePeer(), _StreamAsThePeer()])


STOP_TIMEOUT = 15.0


def provider(
    base_url: str, model: str = "fake-model", concurrency: int | None = None, **limits: Any
) -> dict[str, Any]:
    """An OpenAI-compatible provider of the generation service (GENSEARCH_PROVIDERS entry)
    at its defaults: no fixed cap unless ``concurrency`` is given; ``limits`` are declared
    limits (requests_per_minute, rate_window, ...)."""
    fields: dict[str, Any] = {"base_url": base_url, "default_model": model, **limits}
    if concurrency is not None:
        fields["max_concurrency"] = concurrency
    return fields


async def load_vectors(
    retrieval: ret_grpc.RetrievalServiceStub,
    name: str,
    rows: list[dict[str, str]],
    generative: ret_pb.GenerativeConfig,
    *,
    dim: int = 8,
    step: float = 100,
) -> None:
    """A collection ``name`` of text properties (the first row's keys), vectors given (no
    vectorizer), with one object per row: its vector is 0.1 everywhere but
    ``1 + i / step`` on axis ``i % dim``, so the objects are distinct and ranked."""
    await retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(
            collection=ret_pb.Collection(
                name=name,
                properties=[
                    ret_pb.Property(name=key, data_type=ret_pb.DATA_TYPE_TEXT) for key in rows[0]
                ],
                vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=dim),
                generative=generative,
            )
        ),
        metadata=IDENTITY,
    )
    objects = []
    for i, row in enumerate(rows):
        props = struct_pb2.Struct()
        props.update(row)
        vec = [0.1] * dim
        vec[i % dim] = 1.0 + i / step
        objects.append(ret_pb.DataObject(properties=props, vector=vec))
    await retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection=name, objects=objects), metadata=IDENTITY
    )


def base_environment() -> dict[str, str]:
    """This process's environment without any GENSEARCH_ setting (a stray one would change
    what is measured), with the generated code on the path and quiet libraries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class ServiceProcess:
    """One ``python -m services.<name>``; ``start`` again after ``stop`` serves the same
    data dir on a new port."""

    def __init__(
        self,
        name: str,
        port_var: str,
        env: dict[str, str],
        log: Path,
        root: Path = ROOT,
        *,
        port: int = 0,
    ) -> None:
        self.name = name
        self.port_var = port_var
        self.env = env
        self.log = log
        # The checkout whose code it runs (``python -m`` imports from its working directory).
        self.root = root
        # The loopback address it binds (GENSEARCH_HOST) and, if not 0, the port it must.
        self.host = env.get(HOST, "127.0.0.1")
        self.fixed_port = port
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def service(self) -> str:
        """The full name of its gRPC service, as its health check knows it."""
        return f"gensearch.{self.name}.v1.{self.name.title()}Service"

    async def start(self) -> ServiceProcess:
        # Port 0 where the port it bound can be read back (Linux): a port picked here would
        # be free only until the service binds it, seconds of imports later, and another
        # process (a parallel test's service or Redis) may take it in between.
        self.port = self.fixed_port or (0 if owned_ports_known() else free_port())
        argv = die_with_parent([sys.executable, "-m", f"services.{self.name}"])
        log = await asyncio.to_thread(open, self.log, "ab")
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.root,
                env={**self.env, self.port_var: str(self.port)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a terminal's Ctrl-C reaches the bench only
            )
        try:
            self.port = await wait_serving(
                self.address, self.proc, service=self.service, timeout=START_TIMEOUT
            )
        except AssertionError as err:
            await self.stop()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"services.{self.name} did not serve ({err}):\n{tail}") from None
        # A service names the GENSEARCH_ variables it does not know: a renamed setting would
        # otherwise leave the benchmark measuring defaults.
        unknown = [x for x in self.log.read_text().splitlines() if "unknown GENSEARCH_" in x]
        if unknown:
            await self.stop()
            raise RuntimeError(f"services.{self.name}: {unknown[0]}")
        return self

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop_process(proc)


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the graceful shutdown a service gets in Kubernetes), SIGKILL if it hangs."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Stack:
    """The processes of one benchmark run, stopped in reverse start order on exit."""

    def __init__(self, log_level: str = "WARNING") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="gensearch-bench-")
        self.work = Path(self._tmp.name)
        self.log_level = log_level
        self._services: list[ServiceProcess] = []
        self._others: list[asyncio.subprocess.Process] = []
        self._channels: list[grpc.aio.Channel] = []
        # More settings, by service name ("gateway" -> {variable: value}).
        self.extra_env: dict[str, dict[str, str]] = {}

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for channel in self._channels:
            await channel.close()
        for service in reversed(self._services):
            await service.stop()
        for proc in reversed(self._others):
            await stop_process(proc)
        self._tmp.cleanup()

    def channel(self, target: ServiceProcess | str) -> grpc.aio.Channel:
        """A channel to a service, closed with the stack."""
        address = target.address if isinstance(target, ServiceProcess) else target
        channel = grpc.aio.insecure_channel(address)
        self._channels.append(channel)
        return channel

    def _common(self, name: str) -> dict[str, str]:
        data = self.work / name
        data.mkdir(exist_ok=True)
        return {
            **base_environment(),
            HOST: "127.0.0.1",
            DATA_DIR: str(data),
            INTERNAL_TOKEN: TOKEN,
            LOG_LEVEL: self.log_level,
        }

    async def _service(
        self,
        name: str,
        port_var: str,
        env: dict[str, str],
        *,
        label: str = "",
        root: Path = ROOT,
        port: int = 0,
    ) -> ServiceProcess:
        env = {**env, **self.extra_env.get(name, {})}
        log = self.work / f"{label or name}.log"
        service = ServiceProcess(name, port_var, env, log, root, port=port)
        self._services.append(service)
        return await service.start()

    # -- the services -----------------------------------------------------------------------
    async def memory(self, root: Path | None = None) -> ServiceProcess:
        """The memory service on the Redis it starts itself (the embedded default);
        ``root``: another checkout whose code it runs (an A/B in one bench, both under
        the same load), with a data dir and log of its own."""
        label = "memory" if root is None else "memory-versus"
        env = {**self._common(label), MEMORY_METRICS_PORT: "0", MEMORY_REDIS_URL: ""}
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "gen")])
        return await self._service("memory", MEMORY_PORT, env, label=label, root=root or ROOT)

    async def retrieval(
        self, *, max_batch_size: int | None = None, max_limit: int | None = None
    ) -> ServiceProcess:
        """The retrieval service on qdrant-edge in its data dir (``self.work/retrieval``)."""
        env = {**self._common("retrieval"), RETRIEVAL_METRICS_PORT: "0", RETRIEVAL_QDRANT_URL: ""}
        if max_batch_size is not None:
            env[RETRIEVAL_MAX_BATCH_SIZE] = str(max_batch_size)
        if max_limit is not None:
            env[RETRIEVAL_MAX_LIMIT] = str(max_limit)
        return await self._service("retrieval", RETRIEVAL_PORT, env)

    async def generation(
        self,
        providers: dict[str, dict[str, Any]],
        *,
        redis_url: str = "",
        beside: ServiceProcess | None = None,
        host: str = "127.0.0.2",
    ) -> ServiceProcess:
        """The generation service with these providers (name -> fields, see ``provider``);
        the first is the default. ``redis_url``: where provider limits are counted.

        ``beside``: a replica of that (started) generation service on the same port of
        another loopback address ``host`` (127.0.0.0/8 is all loopback on Linux), as
        replicas behind one DNS name share a port; with its own data dir and log."""
        entries = [{"name": name, **fields} for name, fields in providers.items()]
        label = "generation" if beside is None else f"generation-{host}"
        env = {
            **self._common(label),
            GENERATION_METRICS_PORT: "0",
            GENERATION_PROVIDERS: json.dumps(entries),
            GENERATION_DEFAULT_PROVIDER: next(iter(providers)),
            GENERATION_LOCAL_LLM_AUTOSTART: "false",
            GENERATION_REDIS_URL: redis_url,
        }
        if beside is None:
            return await self._service("generation", GENERATION_PORT, env)
        env[HOST] = host
        return await self._service(
            "generation", GENERATION_PORT, env, label=label, port=beside.port
        )

    async def gateway(
        self,
        memory: ServiceProcess,
        retrieval: ServiceProcess,
        generation: ServiceProcess | list[ServiceProcess],
        *,
        max_concurrency: int | None = None,
        redis_url: str | None = None,
        max_hits: int | None = None,
    ) -> ServiceProcess:
        """The gateway in front of the three (several generation replicas: round robin over
        them, one ``ipv4:`` target listing their addresses); ``max_concurrency`` and
        ``max_hits`` None keep the defaults; ``redis_url`` gives it a Redis (quotas, the
        generation cache)."""
        replicas = generation if isinstance(generation, list) else [generation]
        env = {
            **self._common("gateway"),
            GATEWAY_METRICS_PORT: "0",
            GATEWAY_MEMORY_ADDR: memory.address,
            GATEWAY_RETRIEVAL_ADDR: retrieval.address,
            GATEWAY_GENERATION_ADDR: (
                replicas[0].address
                if len(replicas) == 1
                else "ipv4:" + ",".join(r.address for r in replicas)
            ),
        }
        if max_concurrency is not None:
            env[GATEWAY_DEFAULT_MAX_CONCURRENCY] = str(max_concurrency)
        if redis_url is not None:
            env[GATEWAY_REDIS_URL] = redis_url
        if max_hits is not None:
            env[GATEWAY_MAX_HITS] = str(max_hits)
        return await self._service("gateway", GATEWAY_PORT, env)

    # -- the LLM endpoint -------------------------------------------------------------------
    async def fake_llm(
        self,
        latency: float,
        *,
        jitter: float = 0.1,
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        reply_chars: int = 0,
    ) -> str:
        """A fake OpenAI-compatible endpoint in its own process; returns its base URL.

        Each answer waits ``latency`` seconds times a uniform factor in
        [1 - jitter, 1 + jitter], so N calls at once finish over a spread, as on a real
        endpoint. Each answer's first word is ``time.perf_counter()`` taken right before it
        is written (see bench/fake_llm.py); ``reply_chars`` pads each answer to that many
        characters."""
        argv = [sys.executable, str(ROOT / "bench" / "fake_llm.py")]
        argv += ["--latency", str(latency), "--jitter", str(jitter)]
        if rate_limit is not None:
            argv += ["--rate-limit", str(rate_limit), "--rate-window", str(rate_window)]
        if reply_chars:
            argv += ["--reply-chars", str(reply_chars)]
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(argv),
            cwd=ROOT,
            env=base_environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._others.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        if not line.strip():
            raise RuntimeError(f"the fake LLM did not start (exit code {await proc.wait()})")
        return f"http://127.0.0.1:{int(line)}/v1"
