"""What the gateway needs to know about a collection (schema, generative defaults), read
from retrieval's GetCollection and kept for a moment so a burst of searches asks once."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import timestamp_pb2

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
    def __init__(
        self, retrieval: RetrievalClient, ttl: float, entries_per_tenant: int = 1024
    ) -> None:
        """``entries_per_tenant``: (user, collection) pairs kept per tenant, the least
        recently used dropped first (COLLECTION_CACHE_ENTRIES_PER_TENANT)."""
        self._retrieval = retrieval
        self._ttl = ttl
        self._entries_per_tenant = entries_per_tenant
        # Keyed by tenant (names are unique per tenant only: the same name in two tenants
        # is two collections), then by user (whether a caller may read a collection is
        # retrieval's call, never this cache's) and name. Each tenant's entries are bounded
        # on their own: the whole cache was emptied past 1,024 entries, so one tenant with
        # many collections or users kept clearing every tenant's. Tenants are the API
        # keys' (a bounded, configured set).
        self._cache: dict[str, OrderedDict[tuple[str, str], tuple[float, CollectionInfo]]] = {}

    def forget(
        self, tenant: str, name: str, created: timestamp_pb2.Timestamp | None = None
    ) -> None:
        """Drop what is kept of ``tenant``'s collection ``name`` (for every user).
        ``created``: only what is kept of the collection created then, not one created
        again under the name since (a late store's refusal knows which one it read; a
        delete forgets every one)."""
        held = self._cache.get(tenant)
        if held is None:
            return
        for key in [
            k
            for k, (_, info) in held.items()
            if k[1] == name and (created is None or info.collection.create_time == created)
        ]:
            del held[key]
        if not held:
            del self._cache[tenant]

    def peek(self, name: str, caller: Caller) -> CollectionInfo | None:
        """What is kept of ``name`` for ``caller`` if still fresh, else None (no call)."""
        held = self._cache.get(caller.tenant)
        key = (caller.user, name)
        cached = held.get(key) if held is not None else None
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            held.move_to_end(key)  # type: ignore[union-attr]
            return cached[1]
        return None

    def _keep(self, caller: Caller, name: str, kept: tuple[float, CollectionInfo]) -> None:
        held = self._cache.setdefault(caller.tenant, OrderedDict())
        key = (caller.user, name)
        held[key] = kept
        held.move_to_end(key)
        while len(held) > self._entries_per_tenant:
            held.popitem(last=False)

    async def get(self, name: str, caller: Caller, timeout: float | None) -> CollectionInfo:
        known = self.peek(name, caller)
        if known is not None:
            return known
        now = time.monotonic()
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
            self._keep(caller, name, (now, info))
        return info
