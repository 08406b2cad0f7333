"""The semantic answer cache: answers stored beside the question vectors they answered,
looked up by nearness in meaning (the gateway's Ask uses it for questions without history).

Layout: one hidden engine collection per (tenant, collection), named ``_a`` + sha256(tenant,
name, the collection's create_time). So entries never cross tenants (another tenant's
collection has another name, and the lookup starts from the caller's own collection, which
another tenant's is not found as), a dropped collection takes its entries with it
(``drop``), and a collection recreated under the same name starts empty even if a drop was
missed (another create_time, another hidden collection).

The hidden collections carry a schema marked ``CACHE_MARKER`` so the catalog never lists
them; the ``_a`` prefix cannot collide with a collection name (those start with a letter)
nor with ``tenancy.storage_name`` (``_t``).

Question vectors come from the service's local model whatever the collection's vectorizer:
it is in-process, needs no key and costs nothing per question, and collections without a
vectorizer can cache too. The vectors of the last few questions looked up are kept per
(tenant, question): the gateway stores a missed question's answer moments after looking it
up, and the store then reuses the lookup's vector instead of embedding the question again
(per tenant, so how fast a lookup answers says nothing of another tenant's questions).
The answer is opaque bytes: this service stores, never reads it.

Bounded twice: ``max_cached_answers`` entries per collection (``_make_room``), and
``max_cached_answer_bytes_per_tenant`` bytes per tenant over all its collections
(``answer_budget.py``: the tenant's soonest-expiring entries make room).

An answer is only as good as the objects it was built from: each entry keeps its
``sources`` (object ids, and a digest of each object's properties as the answer saw them,
``well_known.properties_sha256``), and a lookup returns an entry only while every source is
still in the collection with the same digest. The check is here, beside the objects, so a
hit costs no second call and a stale entry is passed over (and deleted) for the next
candidate instead of hiding it; it reads the caller's own collection, so another tenant's
object is simply missing. An entry stored before sources were kept cannot be checked: it
is passed over and deleted the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    MissingField,
    NotFound,
    ResourceExhausted,
)
from services.common.settings import MAX_TTL_SECONDS
from services.common.values import check_uuid
from services.common.well_known import duration_seconds, properties_sha256, struct
from services.retrieval.answer_budget import SIZE_KEY, AnswerBudget, entry_bytes
from services.retrieval.answer_cache_marker import CACHE_MARKER
from services.retrieval.catalog import Catalog
from services.retrieval.embedders import Embedders
from services.retrieval.filters import Match, Range
from services.retrieval.schema import Schema
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import PROPS, CollectionLayout, StoredPoint, VectorStore

MIN_SIMILARITY = 0.5
# Nearest entries read per lookup: expired ones are skipped (and deleted), so a few stale
# neighbours never hide a live one just behind them.
_CANDIDATES = 16
_MAX_CONTEXT_KEY = 128
_SHA256_BYTES = 32
# Question vectors kept for the store that follows a lookup (384 floats each: ~0.5 MB).
_RECENT_VECTORS = 256
MAX_CACHED_ANSWERS_SETTING = "GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWERS"
BYTES_PER_TENANT_SETTING = "GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWER_BYTES_PER_TENANT"


def cache_store_name(schema: Schema) -> str:
    stamp = schema.collection.create_time.ToNanoseconds()
    digest = hashlib.sha256(f"{schema.tenant}\0{schema.name}\0{stamp}".encode()).hexdigest()
    return f"_a{digest}"


class AnswerCache:
    def __init__(
        self,
        store: VectorStore,
        catalog: Catalog,
        embedders: Embedders,
        settings: RetrievalSettings,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._embedders = embedders
        self._settings = settings
        self._create_lock = asyncio.Lock()
        self._recent: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._budget = AnswerBudget(store, settings.max_cached_answer_bytes_per_tenant)

    async def lookup(
        self, tenant: str, user: str, request: pb.LookupCachedAnswerRequest
    ) -> pb.LookupCachedAnswerResponse:
        """The nearest fresh entry of ``tenant``'s collection; its question only when
        ``user`` asked it (``_asker``)."""
        schema = await self._catalog.get(tenant, request.collection)
        self._check_question(request.question)
        if not MIN_SIMILARITY <= request.min_similarity <= 1:
            raise InvalidArgument(
                f"min_similarity must be between {MIN_SIMILARITY} and 1",
                field="min_similarity",
                reason="OUT_OF_RANGE",
            )
        _check_context_key(request.context_key)
        vector = await self._vector(tenant, request.question)
        name = cache_store_name(schema)
        try:
            # Only entries answered under the same settings (model, prompt, filter...): the
            # nearest of other settings must not crowd a match out of the candidates.
            where = Match("k", request.context_key)
            points = await self._store.query_dense(name, vector, where, _CANDIDATES, 0, False)
        except NotFound:
            return pb.LookupCachedAnswerResponse()  # nothing stored yet
        now = time.time()
        expired = [p.id for p in points if float(p.payload.get("exp", 0)) <= now]
        stale: list[str] = []
        found = pb.LookupCachedAnswerResponse()
        for point in points:
            if point.id in expired or point.score < request.min_similarity:
                continue
            if point.payload.get("k", "") != request.context_key:
                continue  # the engine filtered on it already; kept as a guard
            props = point.payload.get(PROPS, {})
            if not await self._fresh(schema, props.get("s")):
                stale.append(point.id)
                continue
            found = pb.LookupCachedAnswerResponse(
                found=True,
                answer=base64.b64decode(props.get("a", "")),
                # Another user's question is theirs: the tenant shares the answer, not
                # the words a colleague typed (it was told to anyone of the tenant whose
                # question came near, an Ask's own question being private otherwise).
                question=str(props.get("q", "")) if props.get("u") == _asker(user) else "",
                similarity=point.score,
            )
            break
        if expired or stale:
            with contextlib.suppress(NotFound):
                await self._store.delete_ids(name, expired + stale)
            self._budget.forget(tenant, name, expired + stale)
        found.stale = len(stale)
        return found

    async def store(self, tenant: str, user: str, request: pb.StoreCachedAnswerRequest) -> None:
        schema = await self._catalog.get(tenant, request.collection)
        # The caller's collection (its create_time as the caller read it) must still be the
        # one of that name: the gateway's store comes after its answer, from a collection
        # it read through its own cache, maybe deleted and made again since (through
        # another gateway, or on retrieval directly); the new one must not get the old
        # one's answer. Unset: not checked.
        if request.HasField("collection_create_time"):
            schema = await self._catalog.check_created(schema, request.collection_create_time)
        self._check_question(request.question)
        s = self._settings
        if len(request.answer) > s.max_cached_answer_bytes:
            raise InvalidArgument(
                f"answer is longer than {s.max_cached_answer_bytes} bytes",
                field="answer",
                reason="TOO_LARGE",
            )
        ttl = duration_seconds(request.ttl, "ttl")
        if not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidArgument(
                f"ttl must be positive and at most {MAX_TTL_SECONDS} s",
                field="ttl",
                reason="OUT_OF_RANGE",
            )
        # Cut to this service's maximum, not refused: the gateway checks a caller's TTL
        # against its own GENSEARCH_GATEWAY_CACHE_MAX_TTL, and an answer refused here (the
        # two set apart) was simply never cached, its store failing in the background.
        ttl = min(ttl, s.max_cached_answer_ttl)
        _check_context_key(request.context_key)
        sources = self._sources(request.sources)
        vector = await self._vector(tenant, request.question)
        name = cache_store_name(schema)
        point = StoredPoint(
            # One entry per question text and context: storing it again replaces it.
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request.context_key}\0{request.question}")),
            payload={
                PROPS: {
                    "q": request.question,
                    "u": _asker(user),
                    "a": base64.b64encode(request.answer).decode(),
                    "s": sources,
                },
                "k": request.context_key,
                "exp": time.time() + ttl,
            },
            dense=vector,
        )
        size = point.payload[SIZE_KEY] = entry_bytes(point.payload, len(vector))
        if size > self._budget.budget:
            raise InvalidArgument(
                f"answer: the entry takes {size} bytes with its question, sources and vector, "
                f"more than a tenant's whole answer cache ({BYTES_PER_TENANT_SETTING})",
                field="answer",
                reason="TOO_LARGE",
                metadata={"limit": str(self._budget.budget), "setting": BYTES_PER_TENANT_SETTING},
            )

        async def check() -> None:
            # Before the budget makes room: a store refused for the collection's count must
            # not have deleted the tenant's soonest-expiring entries for nothing.
            try:
                await self._make_room(name, schema, point.id)
            except NotFound:
                # No cache yet: nothing to count, unless the collection itself went (its
                # cache with it): refused here, before the budget evicts the tenant's other
                # entries for a store ``write`` would refuse anyway.
                await self._catalog.check_same(schema)

        async def write() -> None:
            try:
                await self._store.upsert(name, [point])
            except NotFound:
                await self._create_for(name, schema, len(vector), point)

        def names() -> list[str]:
            return [cache_store_name(s) for s in self._catalog.of_tenant(tenant)]

        expires = float(point.payload["exp"])
        key = (name, point.id)
        await self._budget.store(tenant, key, expires, size, names, len(vector), write, check)

    async def _make_room(self, name: str, schema: Schema, entry_id: str) -> None:
        """Refuses a new entry when the collection's cache holds max_cached_answers once
        its expired entries are deleted (a replacement, same question and context, always
        fits). Expired entries were deleted only when a lookup met them among its nearest
        candidates, so without this every question a tenant ever asked stayed on disk: one
        entry per Ask, up to its LLM-calls quota (1200) a minute, each up to 8000
        characters of question and a 1 MiB answer, for good."""
        limit = self._settings.max_cached_answers
        if await self._store.count(name, None) < limit:
            return
        await self._store.delete_matching(name, Range("exp", lte=time.time()))
        held = await self._store.count(name, None)
        if held < limit or await self._store.retrieve(name, [entry_id], False):
            return
        raise ResourceExhausted(
            f"the answer cache of collection {schema.name!r} holds {held} live entries, "
            f"the limit ({MAX_CACHED_ANSWERS_SETTING}); nothing was stored: entries expire "
            "with their TTL",
            reason="COLLECTION_FULL",
            metadata={
                "limit": str(limit),
                "setting": MAX_CACHED_ANSWERS_SETTING,
                "collection": schema.name,
            },
        )

    async def drop(self, schema: Schema) -> None:
        """Forget every answer cached for ``schema``'s collection."""
        await self._store.delete_collection(cache_store_name(schema))
        self._budget.forget_collection(schema.tenant, cache_store_name(schema))

    def _sources(self, sources: Sequence[pb.CachedAnswerSource]) -> dict[str, str]:
        """The checked sources of an entry: canonical id -> hex digest."""
        limit = self._settings.max_get_ids  # the most one engine read of a lookup takes
        if len(sources) > limit:
            raise InvalidArgument(
                f"sources holds {len(sources)} entries, more than the limit of {limit}",
                field="sources",
                reason="OUT_OF_RANGE",
                metadata={"max": str(limit)},
            )
        out: dict[str, str] = {}
        for i, source in enumerate(sources):
            object_id = check_uuid(source.id, f"sources[{i}].id")
            if len(source.properties_sha256) != _SHA256_BYTES:
                raise InvalidArgument(
                    f"sources[{i}].properties_sha256 must be {_SHA256_BYTES} bytes",
                    field=f"sources[{i}].properties_sha256",
                )
            out[object_id] = source.properties_sha256.hex()
        return out

    async def _fresh(self, schema: Schema, sources: Any) -> bool:
        """Whether every source of an entry is still in ``schema``'s collection with the
        properties it had (``sources``: the entry's payload; not a dict: stored before
        sources were kept)."""
        if not isinstance(sources, dict):
            return False
        if not sources:
            return True  # built from no object (no context)
        try:
            found = await self._store.retrieve(schema.store_name, list(sources), False)
        except NotFound:
            return False  # the collection's objects went with it
        return len(found) == len(sources) and all(
            sources.get(point.id) == properties_sha256(struct(point.payload.get(PROPS, {}))).hex()
            for point in found
        )

    async def _create_for(
        self, name: str, schema: Schema, dimensions: int, point: StoredPoint
    ) -> None:
        """Makes the collection's hidden cache with its first entry, only while the
        collection itself is still there. A store that read the schema before its
        collection was deleted (the gateway stores in the background, after the answer)
        found the cache gone with it: made again, it was named after a collection nobody
        has, listed by no catalog (so outside the tenant's byte budget) and never dropped,
        its entries on disk for good. Checked before (no useless create) and after (a
        delete between the check and the create dropped nothing: we drop it)."""
        await self._catalog.check_same(schema)
        await self._create(name, schema, dimensions)
        try:
            await self._store.upsert(name, [point])
            await self._catalog.check_same(schema)
        except NotFound:
            # Deleted meanwhile. A drop between the create and the upsert fails the upsert
            # with the engine's NotFound, which names the hidden cache: checked again, the
            # caller is told in its own terms (CollectionGone names the collection).
            with contextlib.suppress(NotFound):
                await self._store.delete_collection(name)
            await self._catalog.check_same(schema)
            raise

    async def _create(self, name: str, schema: Schema, dimensions: int) -> None:
        layout = CollectionLayout(name=name, dimensions=dimensions, distance="cosine", sparse=False)
        marker = {CACHE_MARKER: True, "tenant": schema.tenant, "collection": schema.name}
        async with self._create_lock:
            with contextlib.suppress(AlreadyExists):  # another call made it first
                await self._store.create_collection(layout, marker)

    async def _vector(self, tenant: str, question: str) -> list[float]:
        key = (tenant, question)
        vector = self._recent.get(key)
        if vector is not None:
            self._recent.move_to_end(key)
            return vector
        vector = (await self._embedders.local.embed([question]))[0]
        self._recent[key] = vector
        if len(self._recent) > _RECENT_VECTORS:
            self._recent.popitem(last=False)
        return vector

    def _check_question(self, question: str) -> None:
        if not question.strip():
            raise MissingField("question is required", field="question")
        limit = self._settings.max_cached_question_chars
        if len(question) > limit:
            raise InvalidArgument(
                f"question is longer than {limit} characters", field="question", reason="TOO_LONG"
            )


def _asker(user: str) -> str:
    """Who asked an entry's question, as stored with it: a digest, never the name (the
    entry already lives in its tenant's collection)."""
    return hashlib.sha256(b"asker\0" + user.encode()).hexdigest()[:32]


def _check_context_key(key: str) -> None:
    if len(key) > _MAX_CONTEXT_KEY:
        raise InvalidArgument(
            f"context_key is longer than {_MAX_CONTEXT_KEY} characters", field="context_key"
        )
