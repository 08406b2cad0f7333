"""The collections a service holds, per tenant: create, look up, list, delete.

A collection is known by (tenant, name): names are unique within a tenant, the same name in
two tenants is two collections (``tenancy.py`` says where each lives in the engine), and
another tenant's collection is not found exactly like a missing one.

The engine may hold more than collections: the answer cache's hidden ones, the memory
service's interaction index (on a Qdrant server both services use), another application's.
Only a schema this catalog wrote is a collection (``is_collection_schema``), so no caller,
in no tenant, can read, search, write or drop anything else; and new collections live under
derived engine names (``tenancy.py``), so a CreateCollection cannot collide with anything
but the caller's own collection.

Schemas are cached in memory and loaded from the store at start-up (or, when the engine is
unreachable then, on the first call after it is back); a name missing from the cache is
looked up in the store again, so replicas sharing a Qdrant server see collections another
replica created.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Iterable
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.auth import DEFAULT_TENANT
from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    over_limit,
)
from services.common.suggest import did_you_mean
from services.retrieval.answer_cache_marker import is_cache_schema
from services.retrieval.embedders import Embedders
from services.retrieval.schema import (
    COLLECTION_NAME,
    Schema,
    check_collection_name,
    validate_new_collection,
)
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import CollectionLayout, VectorStore
from services.retrieval.tenancy import TENANT_KEY

DEFAULT_PAGE_SIZE = 10
# Not a setting: a larger page_size is served as this (AIP-158), never refused, and a
# caller pages on with next_page_token.
MAX_PAGE_SIZE = 100

MISS_RELOAD_SECONDS = 0.5

log = logging.getLogger("gensearch.retrieval.catalog")
# The key the memory service's interaction index marks its schema with (search_index.py):
# schemas of our own that are not collections say what they are.
_INDEX_KIND = "kind"


def is_collection_schema(data: dict[str, Any]) -> bool:
    """Whether a stored schema is a collection's (one ``Catalog.create`` wrote): not a
    hidden answer cache, not another index of ours, and shaped as every collection's schema
    is (a valid name; a vectorizer with its dimensions, which creation always fills in)."""
    if is_cache_schema(data) or _INDEX_KIND in data:
        return False
    vectorizer = data.get("vectorizer")
    name = data.get("name")
    return (
        isinstance(name, str)
        and COLLECTION_NAME.fullmatch(name) is not None
        and isinstance(vectorizer, dict)
        and bool(vectorizer.get("dimensions"))
    )


class CollectionGone(NotFound):
    """NOT_FOUND for a collection deleted while a call used it, worded in the caller's
    terms already (the engine's own NOT_FOUND names the engine's collection)."""


def _collection_gone(name: str, why: str) -> CollectionGone:
    return CollectionGone(
        f"collection {name!r} not found: {why} (a collection created again under its "
        "name is another collection)",
        field="collection",
    )


def _stored_collection(stored: dict[str, Any] | None) -> Schema | None:
    """A collection's schema as the engine stores it, parsed; None if there is none, it is
    not a collection's, or it does not parse (not the collection a caller read)."""
    if stored is None or not is_collection_schema(stored):
        return None
    try:
        return Schema.from_json(stored)
    except json_format.ParseError:
        return None


def _is_collection_of(current: Schema | None, schema: Schema, create_time: Timestamp) -> bool:
    """Whether ``current`` is ``schema``'s tenant's collection of its name created at
    ``create_time`` (unset in collections from before create_time was stored)."""
    return (
        current is not None
        and current.tenant == schema.tenant
        and current.name == schema.name
        and current.collection.create_time == create_time
    )


# (tenant, name) -> the stored schema and what it parsed to.
Parsed = dict[tuple[str, str], tuple[dict[str, Any], Schema]]


def _parsed(
    stored: list[dict[str, Any]],
    before: Parsed,
    unparsable: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> Parsed:
    """The collections' schemas among ``stored``. One parsed at the last load, and stored
    the same since (the very dict, as qdrant-edge keeps them, or an equal one, as a Qdrant
    server sends them again), is not parsed again: parsing runs on the event loop, and a
    reload parsed every schema of every tenant, up to every MISS_RELOAD_SECONDS at any
    caller's asking (a missing name, a list). One tenant's 100 collections of 256
    properties with 4 KiB descriptions (1 MB of JSON each) held the loop 7 s a reload:
    every other tenant's calls waited.

    ``unparsable``: the schemas that did not parse at the last load, updated here: one
    stored the same since is neither parsed nor logged again (a reload runs on any miss)."""
    parsed: Parsed = {}
    refused = {} if unparsable is None else unparsable
    before_refused = dict(refused)
    refused.clear()
    for data in stored:
        if not is_collection_schema(data):
            continue
        key = (str(data.get(TENANT_KEY, DEFAULT_TENANT)), str(data["name"]))
        known = before.get(key)
        if known is not None and (known[0] is data or known[0] == data):
            parsed[key] = known
            continue
        if before_refused.get(key) == data:
            refused[key] = data
            continue
        try:
            schema = Schema.from_json(data)
        except json_format.ParseError as err:  # no one's collection; serve the rest
            # One line naming it, no traceback: a schema written by another version (a
            # value this one does not know) is the operator's to read, not a fault of ours.
            log.warning(
                "ignoring collection %r of tenant %r: its stored schema does not parse "
                "(%s); written by another version? (docs/operations.md, Backups and restores)",
                key[1],
                key[0],
                str(err)[:300],
            )
            refused[key] = data
            continue
        parsed[(schema.tenant, schema.name)] = (data, schema)
    return parsed


class Catalog:
    def __init__(
        self, store: VectorStore, embedders: Embedders, settings: RetrievalSettings
    ) -> None:
        self._store = store
        self._embedders = embedders
        self._settings = settings
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._parsed: Parsed = {}  # as of the last load: what need not be parsed again
        self._unparsable: dict[tuple[str, str], dict[str, Any]] = {}  # ... nor logged again
        self._lock = asyncio.Lock()
        # (tenant, name) -> schema bytes of each create under way (``create``): its name is
        # taken and it counts toward its tenant's bounds while the engine makes it.
        self._creating: dict[tuple[str, str], int] = {}
        self._loaded_at = -MISS_RELOAD_SECONDS
        # False until one load succeeded (the engine may be unreachable at start).
        self._loaded = False

    async def load(self) -> None:
        # Under the lock: a snapshot read before a concurrent create or delete must not
        # overwrite what that call did.
        async with self._lock:
            # Not the answer cache's hidden collections nor other indexes: no one's collection.
            self._parsed = _parsed(await self._store.schemas(), self._parsed, self._unparsable)
            self._schemas = {key: schema for key, (_, schema) in self._parsed.items()}
            self._loaded_at = time.monotonic()
            self._loaded = True

    async def get(self, tenant: str, name: str, field: str = "collection") -> Schema:
        check_collection_name(name, field)
        schema = await self._lookup(tenant, name)
        if schema is None:
            # The caller's own names only: another tenant's are never shown, and its
            # collection still answers exactly as a name nobody has.
            raise not_found(name, field, (n for t, n in self._schemas if t == tenant))
        return schema

    async def _lookup(self, tenant: str, name: str) -> Schema | None:
        key = (tenant, name)
        schema = self._schemas.get(key)
        # Another replica (on a shared Qdrant server) may have made it: look again, but
        # at most every MISS_RELOAD_SECONDS, so unknown names cannot force a scan each.
        if schema is None and time.monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            await self.load()
            schema = self._schemas.get(key)
        return schema

    async def check_same(self, schema: Schema) -> None:
        """NOT_FOUND (``collection``) unless the engine still holds the very collection
        ``schema`` was read from: not deleted, and not deleted and created again under its
        name (a new collection: another ``create_time``; a collection from before
        create_time was stored has none, and any collection made since has one). Asks the
        engine, not this replica's cache, so a delete by another replica counts too."""
        current = _stored_collection(await self._store.schema(schema.store_name))
        if not _is_collection_of(current, schema, schema.collection.create_time):
            self.forget(schema)
            raise _collection_gone(schema.name, "it was deleted after this call started")

    async def check_created(self, schema: Schema, create_time: Timestamp) -> Schema:
        """The collection of ``schema``'s name created at ``create_time`` (as a caller read
        it, maybe long ago, maybe from another replica); NOT_FOUND (``collection``) if the
        engine holds no such collection any more: deleted, or deleted and created again
        under its name (another collection).

        ``schema`` is this replica's cached one. Only when it differs is the engine asked:
        another replica sharing the engine may have deleted and created the collection
        again, and this replica's cache, reloaded only on a missing name, would otherwise
        refuse every caller of the new collection until something else reloaded it."""
        cached = schema.collection.create_time
        if cached == create_time:
            return schema
        # Older than the cached one: a collection deleted before this replica's was made
        # (a late store after a delete and create again here, the usual case), gone
        # without asking the engine, whose read waits for the lock. Only a newer one can
        # mean this replica is stale.
        # Compared as numbers, not ToNanoseconds(): the caller's may be any two integers
        # (one past Timestamp's range raised ValueError there: INTERNAL).
        if (create_time.seconds, create_time.nanos) < (cached.seconds, cached.nanos):
            raise _collection_gone(
                schema.name, "the collection this answer was built from was deleted"
            )
        current = await self.current(schema)
        if current is None or not _is_collection_of(current, schema, create_time):
            raise _collection_gone(
                schema.name, "the collection this answer was built from was deleted"
            )
        return current

    async def current(self, schema: Schema) -> Schema | None:
        """The collection the engine holds now under ``schema``'s (tenant, name), read from
        the engine, and this replica's cache set to it; None, and ``schema`` forgotten
        here, when the engine holds none there (or one whose schema does not parse).
        Takes ``_lock``: never call it with the lock held (asyncio.Lock is not reentrant)."""
        key = (schema.tenant, schema.name)
        # Under the lock, as a load: a delete of this replica (it holds the lock while the
        # engine drops the collection) must not be undone by a read from before it.
        async with self._lock:
            stored = await self._store.schema(schema.store_name)
            current = _stored_collection(stored)
            if stored is None or current is None or (current.tenant, current.name) != key:
                self.forget(schema)
                return None
            self._schemas[key] = current
            self._parsed[key] = (stored, current)  # no reload parses it again
        return current

    def of_tenant(self, tenant: str) -> list[Schema]:
        """The tenant's collections as of the last load (and this replica's own creates
        and deletes since)."""
        return [schema for (owner, _), schema in self._schemas.items() if owner == tenant]

    def forget(self, schema: Schema) -> None:
        key = (schema.tenant, schema.name)
        cached = self._schemas.get(key)
        # Only that collection: not one created again under its name since.
        if cached is not None and cached.collection.create_time == schema.collection.create_time:
            del self._schemas[key]

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
            max_description_chars=self._settings.max_description_chars,
            max_properties=self._settings.max_properties,
            max_dimensions=self._settings.max_dimensions,
            max_provider_chars=self._settings.max_provider_chars,
            max_model_chars=self._settings.max_model_chars,
        )
        normalized.create_time.FromNanoseconds(time.time_ns() // 1000 * 1000)
        size = normalized.ByteSize()
        if size > self._settings.max_schema_bytes:
            limit = self._settings.max_schema_bytes
            raise over_limit(
                InvalidArgument,
                f"collection is {size} bytes serialized; a collection's schema takes at most "
                f"{limit} (GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES): shorten its descriptions "
                "or generative prompts",
                field="collection",
                size=size,
                limit=limit,
                setting="GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES",
                reason="SCHEMA_TOO_LARGE",
            )
        schema = Schema(normalized, tenant)
        # The caller's own collection under this name may sit at another engine name than a
        # new one would (a default tenant's from before derived names): ask the catalog,
        # not only the engine. Other tenants' names were always derived: the engine's
        # ALREADY_EXISTS is enough, and no reload of every schema is needed.
        known = await self._lookup(tenant, schema.name) if tenant == DEFAULT_TENANT else None
        if not self._loaded:  # the count of the tenant's collections below needs them all
            await self.load()
        key = (tenant, schema.name)
        # The lock is held to check and reserve the name, and to record the collection,
        # not while the engine makes it (a collection of many properties took 10-16 s):
        # every other tenant's reload (a list, a name not known yet) and create waited.
        async with self._lock:
            self._reserve(tenant, schema, size, known)
        # Made and recorded, its reservation given back after, even if the caller goes away
        # meanwhile (the engine's create runs on, shielded): given back at the caller's
        # cancel, the name and the tenant's room were free while the engine still made
        # the collection, which then went unrecorded (uncounted toward MAX_COLLECTIONS)
        # until a reload.
        making = asyncio.ensure_future(self._make(key, schema))
        making.add_done_callback(_retrieved)
        await asyncio.shield(making)
        return schema

    async def _make(self, key: tuple[str, str], schema: Schema) -> None:
        """Has the engine make ``schema``'s collection reserved under ``key``, and records
        it; the reservation is given back either way."""
        try:
            layout = CollectionLayout(
                name=schema.store_name,
                dimensions=schema.dimensions,
                distance=schema.distance,
                sparse=schema.keyword,
            )
            stored = schema.to_json()
            try:
                await self._store.create_collection(layout, stored)
            except AlreadyExists:
                # Only the caller's own collection has this derived name (made by another
                # replica a moment ago); the engine's name for it stays ours to know.
                raise _already_exists(schema.name) from None
            async with self._lock:
                self._schemas[key] = schema
                self._parsed[key] = (stored, schema)  # no reload parses it
        finally:
            self._creating.pop(key, None)

    def _reserve(self, tenant: str, schema: Schema, size: int, known: Schema | None) -> None:
        """Holds ``schema``'s name for a create (under the lock), or refuses it: the name
        taken (by a collection or a create under way), the tenant's collections or their
        schemas' bytes at their bounds (creates under way counted)."""
        key = (tenant, schema.name)
        if known is not None or key in self._schemas or key in self._creating:
            raise _already_exists(schema.name)
        # Per tenant: one tenant cannot use up another's room, nor learn from a refusal
        # that other tenants' collections exist.
        held = sum(1 for owner, _ in self._schemas if owner == tenant)
        held += sum(1 for owner, _ in self._creating if owner == tenant)
        if held >= self._settings.max_collections:
            # A per-tenant quota, as memory's OWNER_CONVERSATIONS_FULL: delete some, or
            # the operator raises the setting.
            limit = self._settings.max_collections
            raise ResourceExhausted(
                f"a tenant holds at most {limit} collections "
                "(GENSEARCH_RETRIEVAL_MAX_COLLECTIONS); delete some to create more",
                reason="TOO_MANY_COLLECTIONS",
                metadata={
                    "limit": str(limit),
                    "setting": "GENSEARCH_RETRIEVAL_MAX_COLLECTIONS",
                },
            )
        self._check_schema_room(tenant, size)
        self._creating[key] = size

    def _check_schema_room(self, tenant: str, size: int) -> None:
        """RESOURCE_EXHAUSTED unless the tenant's schemas, with one of ``size`` bytes more,
        stay within max_schema_bytes_per_tenant (counted per tenant, as collections are)."""
        limit = self._settings.max_schema_bytes_per_tenant
        held = sum(
            s.collection.ByteSize() for (owner, _), s in self._schemas.items() if owner == tenant
        )
        held += sum(b for (owner, _), b in self._creating.items() if owner == tenant)
        if held + size > limit:
            raise ResourceExhausted(
                f"the tenant's collection schemas take {held} bytes; with this one ({size}) "
                f"they would pass {limit} (GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES_PER_TENANT); "
                "delete some collections to create more",
                field="collection",
                reason="TENANT_SCHEMAS_FULL",
                metadata={
                    "limit_bytes": str(limit),
                    "setting": "GENSEARCH_RETRIEVAL_MAX_SCHEMA_BYTES_PER_TENANT",
                    "held_bytes": str(held),
                },
            )

    async def delete(self, tenant: str, name: str) -> Schema:
        """Deletes the collection; the schema it had, as the engine held it when deleted."""
        # Only a collection this tenant made through us: the engine may hold others (another
        # application's on a shared Qdrant server) under a name ours could map to.
        cached = await self.get(tenant, name, "name")
        async with self._lock:
            self._schemas.pop((tenant, name), None)
            # The engine's schema, not this replica's cached one: the engine's name comes
            # from (tenant, name) alone, so on a stale replica (another one deleted and
            # created the collection again) the delete removes the new collection, and the
            # caller (which fences by create_time) and the answer-cache drop need the new
            # one's schema. Read under the lock, so no delete of ours passes in between.
            stored = _stored_collection(await self._store.schema(cached.store_name))
            if stored is None or (stored.tenant, stored.name) != (tenant, name):
                raise not_found(name, "name")
            if not await self._store.delete_collection(cached.store_name):
                raise not_found(name, "name")
        return stored

    async def page(self, tenant: str, page_size: int, page_token: str) -> tuple[list[Schema], str]:
        if page_size < 0:
            raise InvalidArgument(
                "page_size must not be negative", field="page_size", reason="INVALID_PAGE_SIZE"
            )
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token) if page_token else ""
        # Another replica's creates and deletes show within MISS_RELOAD_SECONDS, like a name
        # missing from the cache (_lookup); this replica's own at once. Reloaded on every
        # call, a list cost one engine call per collection of every tenant on the server
        # (and held the lock creates wait for): any reader could multiply that at will.
        if time.monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            await self.load()
        names = sorted(n for t, n in self._schemas if t == tenant and n > after)
        chosen = names[:size]
        next_token = _encode_token(chosen[-1]) if len(names) > size else ""
        return [self._schemas[(tenant, n)] for n in chosen], next_token


def _retrieved(task: asyncio.Future[None]) -> None:
    """Takes a shielded create's outcome, told to no one when its caller went away (not
    logged as an exception never retrieved)."""
    if not task.cancelled():
        task.exception()


def _already_exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"collection {name!r} already exists", field="collection.name")


def not_found(name: str, field: str, own: Iterable[str] = ()) -> NotFound:
    """One answer for a name nobody has and a name another tenant has; the closest of the
    caller's ``own`` names, if any is close, as a suggestion (message and metadata)."""
    hint, metadata = did_you_mean(name, sorted(own))
    return NotFound(f"collection {name!r} not found{hint}", field=field, metadata=metadata)


# A page token is the last name of the page before, after a version prefix, in unpadded
# URL-safe base64: an opaque keyset cursor. It is not signed (unlike the memory service's,
# services/memory/page_token.py), because it grants nothing: the caller's tenant filters
# the names before the cursor is compared, so any token, forged or another caller's, only
# chooses where the caller's own list starts. It is parsed strictly, though: anything but
# a token this encoding makes from a collection name is INVALID_ARGUMENT, never a guess
# (a 3 MB token, stray characters or bytes that are no name were silently read as some
# cursor, often an empty page).
_TOKEN_PREFIX = b"c1:"
# The longest token: that of the longest collection name (63 characters). Not a setting:
# it bounds no caller's data, only what is read of a text no ListCollections issued.
MAX_TOKEN_CHARS = 128


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(_TOKEN_PREFIX + name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    """The name after which ``token``'s page starts; INVALID_ARGUMENT ``page_token``
    (reason ``INVALID_PAGE_TOKEN``) unless ``_encode_token`` made it from a collection
    name."""
    name = ""
    if len(token) <= MAX_TOKEN_CHARS and token.isascii():
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if raw.startswith(_TOKEN_PREFIX):
                name = raw[len(_TOKEN_PREFIX) :].decode("ascii")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            name = ""
    # Re-encoding must give the token back: no stray characters, padding or spare bits.
    if not COLLECTION_NAME.fullmatch(name) or _encode_token(name) != token:
        raise InvalidArgument(
            "page_token is not a token this service issued",
            field="page_token",
            reason="INVALID_PAGE_TOKEN",
        )
    return name
