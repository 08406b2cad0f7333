"""The collections a service holds, per tenant: create, look up, list, delete.

A collection is known by (tenant, name): names are unique within a tenant, the same name in
two tenants is two collections (``tenancy.py`` says where each lives in the engine), and
another tenant's collection is not found exactly like a missing one.

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

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.retrieval.answer_cache_marker import is_cache_schema
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
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._lock = asyncio.Lock()
        self._loaded_at = -MISS_RELOAD_SECONDS

    async def load(self) -> None:
        # Under the lock: a snapshot read before a concurrent create or delete must not
        # overwrite what that call did.
        async with self._lock:
            # Not the answer cache's hidden collections: they are no one's collection.
            stored = [d for d in await self._store.schemas() if not is_cache_schema(d)]
            schemas = [Schema.from_json(data) for data in stored]
            self._schemas = {(s.tenant, s.name): s for s in schemas}
            self._loaded_at = time.monotonic()

    async def get(self, tenant: str, name: str, field: str = "collection") -> Schema:
        check_collection_name(name, field)
        key = (tenant, name)
        schema = self._schemas.get(key)
        # Another replica (on a shared Qdrant server) may have made it: look again, but
        # at most every MISS_RELOAD_SECONDS, so unknown names cannot force a scan each.
        if schema is None and time.monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            await self.load()
            schema = self._schemas.get(key)
        if schema is None:
            raise not_found(name, field)
        return schema

    def forget(self, schema: Schema) -> None:
        self._schemas.pop((schema.tenant, schema.name), None)

    async def create(self, tenant: str, collection: pb.Collection) -> Schema:
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
        schema = Schema(normalized, tenant)
        async with self._lock:
            # Per tenant: one tenant cannot use up another's room, nor learn from a refusal
            # that other tenants' collections exist.
            held = sum(1 for owner, _ in self._schemas if owner == tenant)
            if held >= self._settings.max_collections:
                raise FailedPrecondition(
                    f"a tenant holds at most {self._settings.max_collections} collections",
                    reason="TOO_MANY_COLLECTIONS",
                )
            layout = CollectionLayout(
                name=schema.store_name,
                dimensions=schema.dimensions,
                distance=schema.distance,
                sparse=schema.keyword,
            )
            try:
                await self._store.create_collection(layout, schema.to_json())
            except AlreadyExists:
                # The engine names it by its storage name; the caller knows its own.
                raise AlreadyExists(
                    f"collection {schema.name!r} already exists", field="collection.name"
                ) from None
            self._schemas[(tenant, schema.name)] = schema
        return schema

    async def delete(self, tenant: str, name: str) -> Schema:
        """Deletes the collection; the schema it had."""
        # Only a collection this tenant made through us: the engine may hold others (another
        # application's on a shared Qdrant server) under a name ours could map to.
        schema = await self.get(tenant, name, "name")
        async with self._lock:
            self._schemas.pop((tenant, name), None)
            if not await self._store.delete_collection(schema.store_name):
                raise not_found(name, "name")
        return schema

    async def page(self, tenant: str, page_size: int, page_token: str) -> tuple[list[Schema], str]:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token) if page_token else ""
        await self.load()
        names = sorted(n for t, n in self._schemas if t == tenant and n > after)
        chosen = names[:size]
        next_token = _encode_token(chosen[-1]) if len(names) > size else ""
        return [self._schemas[(tenant, n)] for n in chosen], next_token


def not_found(name: str, field: str) -> NotFound:
    # One answer for a name nobody has and a name another tenant has.
    return NotFound(f"collection {name!r} not found", field=field)


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
