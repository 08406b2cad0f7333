"""What the gateway needs to know about a collection (schema, generative defaults), read
from retrieval's GetCollection and kept for a moment so a burst of searches asks once."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.errors import ServiceError
from services.gateway.clients import Caller, RetrievalClient

_TEXT = (ret_pb.DATA_TYPE_TEXT, ret_pb.DATA_TYPE_TEXT_ARRAY)


@dataclass(frozen=True)
class CollectionInfo:
    collection: ret_pb.Collection
    properties: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, collection: ret_pb.Collection) -> CollectionInfo:
        return cls(collection, {p.name: p.data_type for p in collection.properties})

    @property
    def generative(self) -> ret_pb.GenerativeConfig:
        return self.collection.generative

    @property
    def text_properties(self) -> list[str]:
        return [p.name for p in self.collection.properties if p.data_type in _TEXT]

    @property
    def has_vectorizer(self) -> bool:
        return self.collection.vectorizer.kind != ret_pb.VECTORIZER_KIND_NONE


class Catalog:
    def __init__(self, retrieval: RetrievalClient, ttl: float) -> None:
        self._retrieval = retrieval
        self._ttl = ttl
        # Keyed by tenant (names are unique per tenant only: the same name in two tenants
        # is two collections) and by user (whether a caller may read a collection is
        # retrieval's call, never this cache's).
        self._cache: dict[tuple[str, str, str], tuple[float, CollectionInfo]] = {}

    def forget(self, tenant: str, name: str) -> None:
        """Drop what is kept of ``tenant``'s collection ``name`` (for every user)."""
        for key in [k for k in self._cache if k[0] == tenant and k[2] == name]:
            del self._cache[key]

    def peek(self, name: str, caller: Caller) -> CollectionInfo | None:
        """What is kept of ``name`` for ``caller`` if still fresh, else None (no call)."""
        cached = self._cache.get((caller.tenant, caller.user, name))
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        return None

    async def get(self, name: str, caller: Caller, timeout: float | None) -> CollectionInfo:
        known = self.peek(name, caller)
        if known is not None:
            return known
        now = time.monotonic()
        key = (caller.tenant, caller.user, name)
        try:
            collection = await self._retrieval.get_collection(name, caller, timeout)
        except ServiceError as err:
            # GetCollection names its own field (name); every gateway request that reads
            # a collection here names it ``collection``, whatever the error: not found
            # (missing and another tenant's read the same, as retrieval made them) or a
            # malformed name (BAD_NAME). The rest (status, reason, metadata) is retrieval's.
            if err.field != "name":
                raise
            message = err.message.removeprefix("name: ")
            if message.startswith("name "):
                message = "collection " + message.removeprefix("name ")
            metadata = {k: v for k, v in err.metadata.items() if k != "field"}
            raise type(err)(
                message, field="collection", reason=err.reason, metadata=metadata
            ) from None
        info = CollectionInfo.of(collection)
        if self._ttl > 0:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[key] = (now, info)
        return info
