"""The whole stack on loopback: memory (real Redis), retrieval (real qdrant-edge in a temp
dir), generation (pointed at the fake OpenAI server) and the gateway in front, every one
a real gRPC server on a free port, talked to through real channels."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY

from services.common.auth import Identity, Role, forwarded_identity
from services.common.server import GrpcServer
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from services.gateway.__main__ import build as build_gateway
from services.gateway.ask import AskService
from services.gateway.backends import Backends
from services.gateway.clients import Caller
from services.gateway.generator import Options
from services.gateway.settings import GatewaySettings
from services.generation.__main__ import build_server as build_generation
from services.generation.settings import GenerationSettings
from services.memory.__main__ import build_server as build_memory
from services.memory.settings import MemorySettings
from services.retrieval.__main__ import build_server as build_retrieval
from services.retrieval.embedders import LocalEmbedder
from services.retrieval.settings import RetrievalSettings
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_cluster import LocalCluster
from tests.support.redis_patience import redis_timeouts

TOKEN = "gateway-test-internal-token"
KEYS = "alice:key-alice-123,bob:key-bob-456"
ALICE = (("authorization", "Bearer key-alice-123"),)
BOB = (("authorization", "Bearer key-bob-456"),)
# Alice as the gateway forwards her to the services behind it ("alice:<key>": alice alone
# in her tenant). Those services have the token and no keys, as when the keys are on the
# gateway alone: they take no other caller.
AS_ALICE = forwarded_identity(Identity("alice", "alice", Role.ADMIN), TOKEN)
DIM = 4
# The test's channels connect on their own: gRPC otherwise shares a subchannel, with its
# reconnect backoff, with any channel of this process to the same address, e.g. one an
# earlier test left failing to reach a port this stack's gateway has since been given.
OWN_CONNECTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Stack:
    fake: FakeOpenAI
    gateway: GrpcServer
    channel: grpc.aio.Channel
    stub: gw_grpc.GatewayServiceAsyncStub
    memory: mem_grpc.MemoryServiceAsyncStub  # through the gateway
    retrieval: ret_grpc.RetrievalServiceAsyncStub  # through the gateway
    retrieval_direct: ret_grpc.RetrievalServiceAsyncStub
    # The gateway's Ask service: ``await stack.ask.idle()`` waits for the semantic cache
    # stores its answers queued.
    ask: AskService
    servers: dict[str, GrpcServer] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    memory_settings: MemorySettings | None = None

    async def stop_service(self, name: str) -> None:
        await self.servers[name].stop(0)


StackFactory = Callable[..., Awaitable[Stack]]


# Callers of two tenants (acme: an admin and a reader; globex: an admin), for the
# generation-cache tests that share the session's Redis (``cached``).
CACHE_KEYS = (
    "alice@acme/admin:key-alice-acme,rita@acme/reader:key-rita-acme,bob@globex/admin:key-bob-globex"
)


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of the test's own: stacks share the session's Redis."""
    return f"gc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cached(stack_factory: StackFactory, shared_redis: RedisProcess, prefix: str) -> Stack:
    """A stack whose gateway keeps its quotas and generation cache under ``prefix`` in the
    session's Redis, with CACHE_KEYS' callers."""
    return await stack_factory(
        shared={"api_keys": CACHE_KEYS}, redis_url=shared_redis.url, quota_key_prefix=prefix
    )


def fake_provider(fake: FakeOpenAI, **fields: Any) -> dict[str, Any]:
    return {
        "name": "fake",
        "base_url": fake.base_url,
        "default_model": "fake-model",
        "max_concurrency": 256,
        **fields,
    }


async def model_checking_upstream_stack(
    stack_factory: StackFactory, fake: FakeOpenAI, **settings: Any
) -> Stack:
    """A stack whose endpoint checks the model itself (OpenAI's way) while generation
    cannot (check_models off, as for an endpoint that adds models): an unknown model is
    refused only by the upstream's own 404 model_not_found."""
    fake.reject_unknown_models = True
    return await stack_factory(
        provider=fake_provider(fake, check_models=False), default_provider="fake", **settings
    )


@dataclass
class OwnCall:
    """What the gateway's own steps (a summary fold, a completion) are called with, for
    calling them directly against a stack's services: its backends, the options of an
    Ask that named no model, and Alice as the caller."""

    backends: Backends
    options: Options
    caller: Caller


@contextlib.asynccontextmanager
async def own_call(stack: Stack, **settings: Any) -> AsyncIterator[OwnCall]:
    """The gateway's backends built from ``settings`` (pointed at the stack's memory and
    generation) as the gateway builds them; closed on the way out."""
    gateway_settings = GatewaySettings(
        memory_addr=f"127.0.0.1:{stack.servers['memory'].port}",
        generation_addr=f"127.0.0.1:{stack.servers['generation'].port}",
        internal_token=TOKEN,
        metrics_port=None,
        **settings,
    )
    options = Options.resolve(
        gw_pb.AskRequest(),
        "",
        ret_pb.GenerativeConfig(),
        gateway_settings,
        prefix="",
        model_field="llm_model",
    )
    backends = Backends.build(gateway_settings)
    alice = Identity("alice", "alice", Role.ADMIN)
    try:
        yield OwnCall(
            backends, options, Caller(who=alice, identity=forwarded_identity(alice, TOKEN))
        )
    finally:
        await backends.clients.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real three-master Redis Cluster for a module's cluster tests (started on a loop
    of its own, as the shared standalone server is)."""
    loop = asyncio.new_event_loop()
    local = LocalCluster(tmp_path_factory.mktemp("gateway-cluster"))
    try:
        loop.run_until_complete(local.start())
        yield local
    finally:
        local.stop()
        loop.close()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One real Redis for every gateway test (starting one costs about a second on a busy
    machine); each stack keeps its memory under its own key prefix, so stacks never see
    each other's conversations."""
    loop = asyncio.new_event_loop()
    server = RedisProcess(tmp_path_factory.mktemp("gateway-redis"), appendfsync="everysec")
    loop.run_until_complete(server.start())
    try:
        yield server
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


@pytest.fixture(scope="session")
def stack_embedder() -> Iterator[LocalEmbedder]:
    """The local model every stack's retrieval uses, loaded once, before any call. Each
    stack loaded its own in its first call that needed it, and the session's first such
    load imported torch inside that call's deadline: 72 s on a loaded 2-core machine,
    so an Ask's first semantic cache lookup ended DEADLINE_EXCEEDED at 30 s."""
    defaults = RetrievalSettings.model_fields
    embedder = LocalEmbedder(
        batch_size=defaults["embed_batch_size"].default,
        threads=defaults["local_embed_threads"].default,
    )
    embedder.load()
    try:
        yield embedder
    finally:
        embedder.close()


@pytest.fixture
async def stack_factory(
    tmp_path: Path, shared_redis: RedisProcess, fake: FakeOpenAI, stack_embedder: LocalEmbedder
) -> AsyncIterator[StackFactory]:
    """``await stack_factory(**gateway_settings)``; ``generation=False`` leaves the
    generation address pointing at a port where nothing listens; ``shared`` settings go to
    all four services, ``generation_settings`` to generation only, ``memory`` settings to
    memory alone, ``extra_providers`` beside the fake one. The gateway and generation give
    Redis ``PATIENT_REDIS``'s timeouts (they fail open on a late reply);
    ``production_redis_timeouts=True`` keeps their defaults, for a Redis outage test."""
    stacks: list[Stack] = []

    async def start(
        *,
        generation: bool = True,
        provider: dict[str, Any] | None = None,
        shared: dict[str, Any] | None = None,
        extra_providers: list[dict[str, Any]] | None = None,
        generation_settings: dict[str, Any] | None = None,
        memory: dict[str, Any] | None = None,
        production_redis_timeouts: bool = False,
        **overrides: Any,
    ) -> Stack:
        servers: dict[str, GrpcServer] = {}
        common: dict[str, Any] = {"internal_token": TOKEN, "grace_period": 0.5, **(shared or {})}
        # Memory keeps its own defaults (2 s): a Redis timeout there is UNAVAILABLE, not silent.
        patience = redis_timeouts(production=production_redis_timeouts)
        memory_settings = MemorySettings(
            **{
                "redis_url": shared_redis.url,
                "key_prefix": f"gw-{uuid.uuid4().hex[:12]}",
                "metrics_port": None,
                **common,
                **(memory or {}),  # e.g. a Redis Cluster's url and redis_cluster=True
            }
        )
        servers["memory"] = await build_memory(memory_settings, port=0)
        data = tmp_path / f"stack{len(stacks)}"
        # The operator allows collections to name the loopback fake as their vectorizer.
        servers["retrieval"] = await build_retrieval(
            RetrievalSettings(data_dir=data, allowed_hosts="http://127.0.0.1", **common),
            port=0,
            local_embedder=stack_embedder,
        )
        if generation:
            servers["generation"] = await build_generation(
                GenerationSettings(
                    providers=[provider or fake_provider(fake), *(extra_providers or [])],
                    default_provider=(provider or {}).get("name", "fake"),
                    metrics_port=None,
                    **{
                        "retry_max_attempts": 1,
                        **patience,
                        **common,
                        **(generation_settings or {}),
                    },
                ),
                port=0,
            )
        ports = {name: await server.start() for name, server in servers.items()}
        gen_port = ports.get("generation") or free_port()
        settings: dict[str, Any] = {
            "memory_addr": f"127.0.0.1:{ports['memory']}",
            "retrieval_addr": f"127.0.0.1:{ports['retrieval']}",
            "generation_addr": f"127.0.0.1:{gen_port}",
            "metrics_port": None,
            "api_keys": KEYS,
            "collection_cache_ttl": 0,
            **patience,
            **common,
            **overrides,
        }
        built = await build_gateway(GatewaySettings(**settings), port=0)
        gateway = built.server
        port = await gateway.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTIONS)
        direct = grpc.aio.insecure_channel(
            f"127.0.0.1:{ports['retrieval']}", options=OWN_CONNECTIONS
        )
        # Ready means the test's channel has connected to the gateway (the gateway's own
        # channels connect on its first calls, waiting for it: downstream_connect_wait).
        await asyncio.wait_for(channel.channel_ready(), 30)
        stack = Stack(
            fake=fake,
            gateway=gateway,
            channel=channel,
            stub=gw_grpc.GatewayServiceStub(channel),  # type: ignore[arg-type]
            memory=mem_grpc.MemoryServiceStub(channel),  # type: ignore[arg-type]
            retrieval=ret_grpc.RetrievalServiceStub(channel),  # type: ignore[arg-type]
            retrieval_direct=ret_grpc.RetrievalServiceStub(direct),  # type: ignore[arg-type]
            ask=built.ask,
            servers=servers,
            channels=[channel, direct],
            memory_settings=memory_settings,
        )
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        for channel in stack.channels:
            await channel.close()
        await stack.gateway.stop(0)
        for server in stack.servers.values():
            with contextlib.suppress(Exception):
                await server.stop(0)


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


@pytest.fixture
async def retrying(stack_factory: StackFactory, fake: FakeOpenAI) -> Stack:
    """A stack whose generation retries (up to four attempts, backoff at most 0.05 s; the
    stacks' default is one attempt) and gives up on a provider's first byte after 0.5 s."""
    return await stack_factory(
        provider=fake_provider(fake, first_byte_timeout=0.5),
        generation_settings={"retry_max_attempts": 4, "retry_max_backoff": 0.05},
    )


def started_calls(service: str, method: str) -> float:
    """Unary calls of ``service``/``method`` started so far in this process, by the chassis
    metric (counted before the handler runs, so a call answered is a call counted). The
    gateway serves the forwarded RetrievalService under the same name: compare around
    calls that reach retrieval from the gateway itself only."""
    labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
    return REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0.0


def retrieval_calls(method: str) -> float:
    return started_calls("gensearch.retrieval.v1.RetrievalService", method)


def _book(title: str, body: str, year: int, tags: list[str]) -> dict[str, Any]:
    return {"title": title, "body": body, "year": year, "tags": tags}


BOOKS = [
    _book("Dune", "A desert planet and the spice melange.", 1965, ["sf", "desert"]),
    _book("Neuromancer", "A hacker in a cyberpunk future.", 1984, ["sf"]),
    _book("Emma", "A matchmaker in an English village.", 1815, ["classic"]),
    _book("Untitled draft", "", 2020, []),
    _book("Foundation", "A galactic empire falls; psychohistory plans its return.", 1951, ["sf"]),
]


# The books create_books stores whose body is not empty.
WITH_BODY = [b for b in BOOKS if b["body"]]


def books_search(limit: int = 4, **generate: Any) -> gw_pb.GenerativeSearchRequest:
    """A GenerativeSearch of ``create_books``' Books, near every book, its generate block
    as ``generate`` says."""
    return gw_pb.GenerativeSearchRequest(**_books_search(limit, generate))


def books_stream_search(limit: int = 4, **generate: Any) -> gw_pb.StreamGenerativeSearchRequest:
    """``books_search``, as a StreamGenerativeSearch."""
    return gw_pb.StreamGenerativeSearchRequest(**_books_search(limit, generate))


def _books_search(limit: int, generate: dict[str, Any]) -> dict[str, Any]:
    return {
        "collection": "Books",
        "near_vector": ret_pb.NearVector(vector=[0.5] * DIM),
        "limit": limit,
        "generate": gw_pb.Generate(**generate),
    }


def books_ask(**fields: Any) -> gw_pb.AskRequest:
    """An Ask of ``create_books``' Books, near every book: the desert question unless
    ``fields`` say otherwise."""
    return gw_pb.AskRequest(**_books_question(fields))


def books_stream_ask(**fields: Any) -> gw_pb.StreamAskRequest:
    """``books_ask``, as a StreamAsk."""
    return gw_pb.StreamAskRequest(**_books_question(fields))


def _books_question(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "collection": "Books",
        "llm_question": "Which book is about a desert?",
        "near_vector": ret_pb.NearVector(vector=[0.5] * DIM),
        **fields,
    }


def vector(i: int) -> list[float]:
    v = [0.1] * DIM
    v[i % DIM] = 1.0
    return v


def books_collection(
    name: str = "Books", generative: ret_pb.GenerativeConfig | None = None
) -> ret_pb.Collection:
    """The books' collection: four properties, no vectorizer (no embedding model needed),
    answered by the fake provider unless ``generative`` says otherwise."""
    return ret_pb.Collection(
        name=name,
        properties=[
            ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT),
            ret_pb.Property(name="body", data_type=ret_pb.DATA_TYPE_TEXT),
            ret_pb.Property(name="year", data_type=ret_pb.DATA_TYPE_INT),
            ret_pb.Property(name="tags", data_type=ret_pb.DATA_TYPE_TEXT_ARRAY),
        ],
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
        generative=generative or ret_pb.GenerativeConfig(provider="fake", model="fake-model"),
    )


def book_objects(books: list[dict[str, Any]] | None = None) -> list[ret_pb.DataObject]:
    """``books`` (BOOKS by default) as objects, the i-th with ``vector(i)``."""
    objects = []
    for i, book in enumerate(books if books is not None else BOOKS):
        props = struct_pb2.Struct()
        props.update(book)
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    return objects


async def create_books(
    stack: Stack,
    name: str = "Books",
    *,
    books: list[dict[str, Any]] | None = None,
    metadata: tuple[tuple[str, str], ...] | None = None,
    generative: ret_pb.GenerativeConfig | None = None,
    direct: bool = False,
) -> list[str]:
    """A collection without a vectorizer (no embedding model needed) and its objects;
    returns the object ids in insertion order. ``direct``: straight to retrieval, past the
    gateway's own checks (a collection stored under other settings)."""
    retrieval = stack.retrieval_direct if direct else stack.retrieval
    if metadata is None:  # Alice's, as the gateway or as retrieval takes it
        metadata = AS_ALICE if direct else ALICE
    await retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=books_collection(name, generative)),
        metadata=metadata,
    )
    response = await retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(collection=name, objects=book_objects(books)),
        metadata=metadata,
    )
    assert not response.errors, response.errors
    return list(response.ids)


async def create_embedded(stack: Stack) -> None:
    """A collection "Embedded" whose vectorizer is the fake's /v1/embeddings."""
    collection = ret_pb.Collection(
        name="Embedded",
        properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
        vectorizer=ret_pb.Vectorizer(
            kind=ret_pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
            base_url=stack.fake.base_url,
            model="fake-embedding",
            dimensions=stack.fake.embedding_dim,
        ),
    )
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
    )


def storing_asks(
    question: str, conversation_id: str
) -> list[gw_pb.AskRequest | gw_pb.StreamAskRequest]:
    """The three ways an Ask stores a turn: Ask and StreamAsk into ``conversation_id``,
    Ask into a new conversation."""
    return [
        gw_pb.AskRequest(
            collection="Books", llm_question=question, conversation_id=conversation_id
        ),
        gw_pb.StreamAskRequest(
            collection="Books", llm_question=question, conversation_id=conversation_id
        ),
        gw_pb.AskRequest(collection="Books", llm_question=question, new_conversation=True),
    ]


async def refused_before_any_event(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` (unary, or a stream that yields nothing first) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            assert [event async for event in call] == []  # not even the context event
        else:
            await call
    return err.value
