"""Retrieval fixtures: a real server (gRPC on port 0) over a real Qdrant engine.

``retrieval`` runs on the embedded qdrant-edge engine in a temp dir; ``make_retrieval``
builds more (the congruence tests build one per adapter). The MiniLM model is loaded once
per test session and shared by every server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from qdrant_client import AsyncQdrantClient

from services.common import auth
from services.common.auth import Identity, Role
from services.common.server import GrpcServer
from services.retrieval.__main__ import build_server
from services.retrieval.edge_store import EdgeStore
from services.retrieval.embedders import LocalEmbedder
from services.retrieval.server_store import ServerStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import VectorStore
from tests.support.rpc import error_info

# Filter operators, short.
EQ, NE = pb.OPERATOR_EQUAL, pb.OPERATOR_NOT_EQUAL
LT, LTE = pb.OPERATOR_LESS_THAN, pb.OPERATOR_LESS_THAN_EQUAL
GT, GTE = pb.OPERATOR_GREATER_THAN, pb.OPERATOR_GREATER_THAN_EQUAL
ANY, ALL = pb.OPERATOR_CONTAINS_ANY, pb.OPERATOR_CONTAINS_ALL
TEXT = pb.OPERATOR_TEXT_MATCH


@pytest.fixture(scope="session")
def local_embedder() -> LocalEmbedder:
    embedder = LocalEmbedder(batch_size=64)
    embedder.load()
    return embedder


@dataclass
class Retrieval:
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: pb_grpc.RetrievalServiceStub
    settings: RetrievalSettings
    store: VectorStore

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(0)


MakeRetrieval = Callable[..., Awaitable[Retrieval]]


@pytest.fixture
async def make_retrieval(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> AsyncIterator[MakeRetrieval]:
    started: list[Retrieval] = []

    async def make(
        adapter: str = "edge",
        data_dir: Path | None = None,
        store: VectorStore | None = None,
        **overrides: Any,
    ) -> Retrieval:
        """``store``: another server's, for a replica sharing its engine (a Qdrant server's
        client; one qdrant-edge data dir is one process's)."""
        settings = RetrievalSettings(data_dir=data_dir or tmp_path / "data", **overrides)
        if store is None:
            store = _new_store(adapter, settings)
        server = await build_server(settings, port=0, store=store, local_embedder=local_embedder)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        harness = Retrieval(server, channel, pb_grpc.RetrievalServiceStub(channel), settings, store)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        with contextlib.suppress(Exception):  # some tests stop their server themselves
            await harness.stop()


def _new_store(adapter: str, settings: RetrievalSettings) -> VectorStore:
    if adapter == "edge":
        return EdgeStore(
            settings.data_dir / "qdrant",
            settings.engine_write_turn_bytes,
            settings.flush_after_objects,
            settings.flush_interval_seconds,
        )
    return ServerStore(AsyncQdrantClient(location=":memory:"))


@pytest.fixture
async def retrieval(make_retrieval: MakeRetrieval) -> Retrieval:
    return await make_retrieval()


@pytest.fixture
def stub(retrieval: Retrieval) -> pb_grpc.RetrievalServiceStub:
    return retrieval.stub


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def obj(props: dict[str, Any], id: str = "", vector: Iterable[float] = ()) -> pb.DataObject:
    return pb.DataObject(id=id, properties=struct(props), vector=list(vector))


def props(*specs: tuple[str, int]) -> list[pb.Property]:
    return [pb.Property(name=n, data_type=t) for n, t in specs]


ARTICLE_PROPS = props(
    ("title", pb.DATA_TYPE_TEXT),
    ("body", pb.DATA_TYPE_TEXT),
    ("tags", pb.DATA_TYPE_TEXT_ARRAY),
    ("year", pb.DATA_TYPE_INT),
    ("rating", pb.DATA_TYPE_NUMBER),
    ("published", pb.DATA_TYPE_BOOL),
    ("date", pb.DATA_TYPE_DATE),
)


def vector_collection(name: str, dims: int = 4, **kw: Any) -> pb.Collection:
    """A collection whose callers supply vectors (no model needed)."""
    return pb.Collection(
        name=name,
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=dims),
        **kw,
    )


def remote_collection(
    base_url: str, key_env: str, *, name: str = "Remote", model: str = "text-embedding-3-small"
) -> pb.Collection:
    """The collection ``name``, its titles embedded (16 dimensions) by ``model`` of the
    OpenAI-compatible endpoint at ``base_url`` with the key in the variable ``key_env``."""
    return pb.Collection(
        name=name,
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(
            kind=pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
            base_url=base_url,
            model=model,
            api_key_env=key_env,
            dimensions=16,
            source_properties=["title"],
        ),
    )


async def remote_retrieval(
    make_retrieval: MakeRetrieval, base_url: str, key_env: str, **settings: Any
) -> Retrieval:
    """A service (``settings``) whose operator pairs ``key_env`` with the endpoint at
    ``base_url`` (so its key goes there, and only there), holding ``remote_collection``."""
    retrieval = await make_retrieval(embedding_key_urls={key_env: base_url}, **settings)
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=remote_collection(base_url, key_env))
    )
    return retrieval


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, field: str | None = None
) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, f"{err.code()} {err.details()}"
        if field is not None:
            assert error_info(err).metadata.get("field") == field, err.details()
        return err
    raise AssertionError(f"expected {code}, the call succeeded")


def cond(prop: str, op: int, value: Any) -> pb.Filter:
    v = struct_pb2.Value()
    if isinstance(value, list):
        v.list_value.extend(value)
    elif isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int | float):
        v.number_value = value
    else:
        v.string_value = value
    return pb.Filter(condition=pb.Condition(property=prop, operator=op, value=v))


def all_of(*filters: pb.Filter) -> pb.Filter:
    return pb.Filter(all_of=pb.FilterGroup(filters=list(filters)))


def any_of(*filters: pb.Filter) -> pb.Filter:
    return pb.Filter(any_of=pb.FilterGroup(filters=list(filters)))


def none_of(*filters: pb.Filter) -> pb.Filter:
    return pb.Filter(none_of=pb.FilterGroup(filters=list(filters)))


def hold_engine(r: Retrieval) -> tuple[threading.Event, asyncio.Future[Any]]:
    """The engine's one thread busy with a third tenant's call until the event is set."""
    store = r.store
    assert isinstance(store, EdgeStore)
    gate = threading.Event()
    token = auth._current.set(Identity("u", "blocker", Role.ADMIN))
    try:
        holding = asyncio.ensure_future(store._executor.run(gate.wait, 60))
    finally:
        auth._current.reset(token)
    return gate, holding


def hold_embedding(
    monkeypatch: pytest.MonkeyPatch, embedder: LocalEmbedder
) -> tuple[asyncio.Event, asyncio.Event]:
    """``embedder``'s next embeddings wait, once begun (the first event set), until the
    second event is set: a call held after it read its collection."""
    real = embedder.embed
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(texts: list[str]) -> list[list[float]]:
        entered.set()
        await release.wait()
        return await real(texts)

    monkeypatch.setattr(embedder, "embed", held)
    return entered, release


async def store_racing_delete(
    r: Retrieval,
    request: pb.StoreCachedAnswerRequest,
    metadata: Iterable[tuple[str, str]],
    entered: asyncio.Event,
    release: asyncio.Event,
) -> grpc.aio.AioRpcError:
    """Starts ``request``'s store, waits until it is held (``entered``: a hold such as
    ``hold_embedding``'s, after it read its collection), deletes that collection, then lets
    it go on; the store's error, asserted NOT_FOUND naming ``collection``."""
    late = asyncio.ensure_future(r.stub.StoreCachedAnswer(request, metadata=metadata))
    await entered.wait()
    await r.stub.DeleteCollection(
        pb.DeleteCollectionRequest(name=request.collection), metadata=metadata
    )
    release.set()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await late
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["field"] == "collection"
    return caught.value
