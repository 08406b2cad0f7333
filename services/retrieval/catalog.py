"""The collections a service holds: create, look up, list, delete.

Schemas are cached in memory and loaded from the store at start-up; a name missing from the
cache is looked up in the store again, so replicas sharing a Qdrant server see collections
another replica created.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.retrieval.embedders import Embedders
from services.retrieval.schema import Schema, check_collection_name, validate_new_collection
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import CollectionLayout, VectorStore

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100

MISS_RELOAD_SECONDS = 0.5


class Catalog:
    def __init__(
        self, store: VectorStore, embedders: Embedders, settings: RetrievalSettings
    ) -> None:
        self._store = store
        self._embedders = embedders
        self._settings = settings
        self._schemas: dict[str, Schema] = {}
        self._lock = asyncio.Lock()
        self._loaded_at = -MISS_RELOAD_SECONDS

    async def load(self) -> None:
        # Under the lock: a snapshot read before a concurrent create or delete must not
        # overwrite what that call did.
        async with self._lock:
            schemas = [Schema.from_json(data) for data in await self._store.schemas()]
            self._schemas = {s.name: s for s in schemas}
            self._loaded_at = time.monotonic()

    async def get(self, name: str, field: str = "collection") -> Schema:
        check_collection_name(name, field)
        schema = self._schemas.get(name)
        # Another replica (on a shared Qdrant server) may have made it: look again, but
        # at most every MISS_RELOAD_SECONDS, so unknown names cannot force a scan each.
        if schema is None and time.monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            await self.load()
            schema = self._schemas.get(name)
        if schema is None:
            raise NotFound(f"collection {name!r} not found", field=field)
        return schema

    def forget(self, name: str) -> None:
        self._schemas.pop(name, None)

    async def create(self, collection: pb.Collection) -> Schema:
        kind = collection.vectorizer.kind
        local_dims = None
        if kind in (pb.VECTORIZER_KIND_UNSPECIFIED, pb.VECTORIZER_KIND_LOCAL):
            local_dims = await self._embedders.local.dimensions()
        normalized = validate_new_collection(
            collection,
            local_model_name=self._settings.local_model_name,
            local_dimensions=local_dims,
            policy=self._settings.embedding_policy(),
        )
        normalized.create_time.FromNanoseconds(time.time_ns() // 1000 * 1000)
        schema = Schema(normalized)
        async with self._lock:
            if len(self._schemas) >= self._settings.max_collections:
                raise FailedPrecondition(
                    f"this service holds at most {self._settings.max_collections} collections",
                    reason="TOO_MANY_COLLECTIONS",
                )
            layout = CollectionLayout(
                name=schema.name,
                dimensions=schema.dimensions,
                distance=schema.distance,
                sparse=schema.keyword,
            )
            await self._store.create_collection(layout, schema.to_json())
            self._schemas[schema.name] = schema
        return schema

    async def delete(self, name: str) -> None:
        check_collection_name(name, "name")
        async with self._lock:
            self._schemas.pop(name, None)
            if not await self._store.delete_collection(name):
                raise NotFound(f"collection {name!r} not found", field="name")

    async def page(self, page_size: int, page_token: str) -> tuple[list[Schema], str]:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token) if page_token else ""
        await self.load()
        names = sorted(n for n in self._schemas if n > after)
        chosen = names[:size]
        next_token = _encode_token(chosen[-1]) if len(names) > size else ""
        return [self._schemas[n] for n in chosen], next_token


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(b"c1:" + name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(b"c1:"):
        raise InvalidArgument("page_token is not a token this service issued", field="page_token")
    return raw[3:].decode(errors="replace")
