"""``VectorStore`` on a Qdrant server through ``AsyncQdrantClient``.

Each collection is a Qdrant collection of the same name; its schema travels in the
collection's ``metadata`` (key ``gensearch_schema``), so every retrieval replica pointed at
the server sees the same collections and the schema dies with the data. Qdrant collections
without that key are not ours and are ignored. Writes wait for the server's acknowledgement
(``wait=True``): acknowledged means in Qdrant's WAL. ``AsyncQdrantClient(":memory:")`` (the
client's in-process engine) runs the same code in tests; it takes payload indexes and
ignores them (it filters by reading every point, indexes or not).

Every key the service filters on has a payload index (``payload_index.py``), created with
the collection. A collection made before indexes existed (or by an older replica) gets the
ones it lacks the first time this process uses it: read from the collection's info, asked
for without waiting (the server builds them in the background, filtering correctly
meanwhile), once per collection and process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import AlreadyExists, NotFound, Unavailable
from services.common.logs import ThrottledWarning
from services.retrieval import filters as f
from services.retrieval.payload_index import IndexKind, missing, payload_indexes
from services.retrieval.store import (
    DENSE,
    SPARSE,
    CollectionLayout,
    FoundPoint,
    SparseVector,
    StoredPoint,
)

log = logging.getLogger("gensearch.retrieval.qdrant")
SCHEMA_KEY = "gensearch_schema"
# The reasons of a Qdrant server that cannot serve: unreachable, or answering an error.
QDRANT_UNAVAILABLE = "QDRANT_UNAVAILABLE"
QDRANT_ERROR = "QDRANT_ERROR"

_DISTANCES = {
    "cosine": models.Distance.COSINE,
    "dot": models.Distance.DOT,
    "euclid": models.Distance.EUCLID,
}
# The server's index for each kind (payload_index.py decides which key gets which).
_INDEXES: dict[IndexKind, Any] = {
    IndexKind.KEYWORD: models.PayloadSchemaType.KEYWORD,
    IndexKind.TENANT: models.KeywordIndexParams(
        type=models.KeywordIndexType.KEYWORD, is_tenant=True
    ),
    IndexKind.INTEGER: models.PayloadSchemaType.INTEGER,
    IndexKind.FLOAT: models.PayloadSchemaType.FLOAT,
    IndexKind.DATETIME: models.PayloadSchemaType.DATETIME,
}
_KINDS = {
    models.PayloadSchemaType.KEYWORD: IndexKind.KEYWORD,
    models.PayloadSchemaType.INTEGER: IndexKind.INTEGER,
    models.PayloadSchemaType.FLOAT: IndexKind.FLOAT,
    models.PayloadSchemaType.DATETIME: IndexKind.DATETIME,
}


def _index_kind(info: models.PayloadIndexInfo) -> IndexKind | None:
    """The kind of an index the server reports (None: one we never make)."""
    if info.data_type == models.PayloadSchemaType.KEYWORD and getattr(
        info.params, "is_tenant", None
    ):
        return IndexKind.TENANT
    return _KINDS.get(info.data_type)


def _server_indexes(info: models.CollectionInfo) -> dict[str, IndexKind | None]:
    """The payload indexes a collection's info reports: key -> kind (None: one we never
    make)."""
    return {key: _index_kind(index) for key, index in (info.payload_schema or {}).items()}


def to_qdrant_filter(node: f.Node | None) -> models.Filter | None:
    if node is None:
        return None
    if isinstance(node, f.Bool):
        return models.Filter(
            must=[_condition(n) for n in node.must] or None,
            should=[_condition(n) for n in node.should] or None,
            must_not=[_condition(n) for n in node.must_not] or None,
        )
    return models.Filter(must=[_condition(node)])


def _condition(node: f.Node) -> Any:
    if isinstance(node, f.Bool):
        return to_qdrant_filter(node)
    if isinstance(node, f.Match):
        return models.FieldCondition(key=node.key, match=models.MatchValue(value=node.value))
    if isinstance(node, f.MatchAny):
        values: Any = list(node.values)
        return models.FieldCondition(key=node.key, match=models.MatchAny(any=values))
    if isinstance(node, f.Range):
        rng = models.Range(gt=node.gt, gte=node.gte, lt=node.lt, lte=node.lte)
        return models.FieldCondition(key=node.key, range=rng)
    if isinstance(node, f.DateRange):
        gt, gte, lt, lte = (_instant(b) for b in (node.gt, node.gte, node.lt, node.lte))
        dates = models.DatetimeRange(gt=gt, gte=gte, lt=lt, lte=lte)
        return models.FieldCondition(key=node.key, range=dates)
    return models.FieldCondition(key=node.key, match=models.MatchText(text=node.text))


def _instant(bound: str | None) -> datetime | None:
    return None if bound is None else datetime.fromisoformat(bound)


@contextlib.contextmanager
def _guard(name: str | None = None) -> Iterator[None]:
    """Engine failures as statuses: a missing collection, or a server we cannot reach."""
    try:
        yield
    except UnexpectedResponse as err:
        if err.status_code == 404 and name is not None:
            raise NotFound(f"collection {name!r} not found", field="collection") from None
        raise Unavailable(f"Qdrant answered HTTP {err.status_code}", reason=QDRANT_ERROR) from None
    except (ResponseHandlingException, httpx.HTTPError, ConnectionError, TimeoutError) as err:
        raise Unavailable(
            f"Qdrant is unreachable ({type(err).__name__})", reason=QDRANT_UNAVAILABLE
        ) from None
    except ValueError as err:
        # The in-process engine reports a missing collection this way.
        if name is not None and "not found" in str(err):
            raise NotFound(f"collection {name!r} not found", field="collection") from None
        raise


# What a Qdrant server that cannot serve answers with: logged once per outage.
OUTAGE_REASONS = (QDRANT_UNAVAILABLE, QDRANT_ERROR)


class ServerStore:
    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        variables: str = "GENSEARCH_RETRIEVAL_QDRANT_URL, GENSEARCH_RETRIEVAL_QDRANT_API_KEY",
    ) -> None:
        """``variables``: the settings that name this server, for the outage's line (the
        memory service's search index uses this store too, with settings of its own)."""
        self.client = client
        # Qdrant unreachable (or refusing, e.g. a wrong API key): one WARNING per outage
        # (again every 30 s while it lasts) and one INFO line when it answers again. Each
        # call answered UNAVAILABLE before with nothing but its access line.
        self._outage = ThrottledWarning(
            log,
            f"vector store unavailable (%s): calls answer UNAVAILABLE until Qdrant answers "
            f"({variables})",
            recovery="vector store reachable again",
        )
        # Collections whose payload indexes this process has seen to (_indexed).
        self._indexed_names: set[str] = set()

    @contextlib.contextmanager
    def _guard(self, name: str | None = None) -> Iterator[None]:
        """``_guard``, and the outage's log: its start, and its end."""
        try:
            with _guard(name):
                yield
        except Unavailable as err:
            if err.reason in OUTAGE_REASONS:
                self._outage(err.__context__ or err, extra={"error": err.message})
            raise
        self._outage.recovered()

    async def open(self) -> None:
        with self._guard():
            await self.client.get_collections()

    async def close(self) -> None:
        await self.client.close()

    async def create_collection(self, layout: CollectionLayout, schema: dict[str, Any]) -> None:
        with self._guard():
            if await self.client.collection_exists(layout.name):
                raise AlreadyExists(
                    f"collection {layout.name!r} already exists", field="collection.name"
                )
            sparse = (
                {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}
                if layout.sparse
                else None
            )
            await self.client.create_collection(
                layout.name,
                vectors_config={
                    DENSE: models.VectorParams(
                        size=layout.dimensions, distance=_DISTANCES[layout.distance]
                    )
                },
                sparse_vectors_config=sparse,
                metadata={SCHEMA_KEY: schema},
            )
            # Before the first write: created on an empty collection, at once.
            for key, kind in payload_indexes(schema).items():
                await self.client.create_payload_index(
                    layout.name, key, field_schema=_INDEXES[kind], wait=True
                )
        self._indexed_names.add(layout.name)

    async def indexes(self, name: str) -> dict[str, IndexKind | None]:
        """The payload indexes collection ``name`` has, as the server reports them (the
        in-process engine reports none)."""
        with self._guard(name):
            info = await self.client.get_collection(name)
        return _server_indexes(info)

    async def _indexed(self, name: str) -> None:
        """Create the payload indexes collection ``name`` lacks (one made before indexes
        existed, or by an older replica), the first time this process uses it. NotFound
        for a missing collection, as the call that asks would say."""
        if name in self._indexed_names:
            return
        with self._guard(name):
            info = await self.client.get_collection(name)
        schema = (info.config.metadata or {}).get(SCHEMA_KEY)
        wanted = payload_indexes(schema) if isinstance(schema, dict) else {}
        lacking = missing(wanted, _server_indexes(info))
        try:
            with self._guard(name):
                for key, kind in lacking.items():
                    # Not waited for: over a large collection the build takes a while, and
                    # the server filters correctly (by reading payloads) until it is done.
                    await self.client.create_payload_index(
                        name, key, field_schema=_INDEXES[kind], wait=False
                    )
        except Unavailable as err:
            if err.reason == QDRANT_UNAVAILABLE:
                raise  # unreachable: tried again on the next call
            # Refused (a read-only key, say): served as before, by reading payloads.
            log.warning(
                "creating payload indexes failed", extra={"collection": name, "error": str(err)}
            )
        else:
            if lacking:
                log.info(
                    "payload indexes requested", extra={"collection": name, "keys": sorted(lacking)}
                )
        self._indexed_names.add(name)

    async def delete_collection(self, name: str) -> bool:
        self._indexed_names.discard(name)
        with self._guard(name):
            if not await self.client.collection_exists(name):
                return False
            return bool(await self.client.delete_collection(name))

    async def schemas(self) -> list[dict[str, Any]]:
        out = []
        with self._guard():
            for description in (await self.client.get_collections()).collections:
                info = await self.client.get_collection(description.name)
                schema = (info.config.metadata or {}).get(SCHEMA_KEY)
                if isinstance(schema, dict):
                    out.append(schema)
        return out

    async def schema(self, name: str) -> dict[str, Any] | None:
        try:
            with self._guard(name):
                info = await self.client.get_collection(name)
        except NotFound:
            return None
        schema = (info.config.metadata or {}).get(SCHEMA_KEY)
        return schema if isinstance(schema, dict) else None

    async def upsert(self, name: str, points: list[StoredPoint]) -> None:
        structs = []
        for point in points:
            vectors: dict[str, Any] = {}
            if point.dense is not None:
                vectors[DENSE] = point.dense
            if point.sparse is not None:
                vectors[SPARSE] = models.SparseVector(
                    indices=point.sparse.indices, values=point.sparse.values
                )
            structs.append(models.PointStruct(id=point.id, vector=vectors, payload=point.payload))
        await self._indexed(name)
        with self._guard(name):
            await self.client.upsert(name, points=structs, wait=True)

    async def retrieve(self, name: str, ids: list[str], with_vector: bool) -> list[FoundPoint]:
        await self._indexed(name)
        with self._guard(name):
            records = await self.client.retrieve(
                name,
                ids=list(ids),
                with_payload=True,
                with_vectors=[DENSE] if with_vector else False,
            )
        return [FoundPoint.of(r.id, r.payload, 0.0, r.vector) for r in records]

    async def delete_ids(self, name: str, ids: list[str]) -> int:
        await self._indexed(name)
        with self._guard(name):
            existing = await self.client.retrieve(
                name, ids=list(ids), with_payload=False, with_vectors=False
            )
            if existing:
                await self.client.delete(
                    name,
                    points_selector=models.PointIdsList(points=[r.id for r in existing]),
                    wait=True,
                )
        return len(existing)

    async def delete_matching(self, name: str, where: f.Node) -> int:
        # One filter operation (FilterSelector): whatever matches when Qdrant applies it,
        # with no window between reading ids and deleting them. Qdrant's delete answers
        # no count, so the count is an exact one taken just before: a concurrent writer
        # between the two can make it differ (docs/retrieval.md, "Deleting").
        selector = to_qdrant_filter(where)
        assert selector is not None
        await self._indexed(name)
        with self._guard(name):
            count = (await self.client.count(name, count_filter=selector, exact=True)).count
            if count:
                await self.client.delete(
                    name, points_selector=models.FilterSelector(filter=selector), wait=True
                )
        return int(count)

    async def count(self, name: str, where: f.Node | None) -> int:
        await self._indexed(name)
        with self._guard(name):
            result = await self.client.count(name, count_filter=to_qdrant_filter(where), exact=True)
        return int(result.count)

    async def scroll(
        self,
        name: str,
        offset: str | None,
        limit: int,
        where: f.Node | None = None,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[FoundPoint], str | None]:
        await self._indexed(name)
        with self._guard(name):
            records, next_offset = await self.client.scroll(
                name,
                scroll_filter=to_qdrant_filter(where),
                offset=offset,
                limit=limit,
                with_payload=True if fields is None else list(fields),
                with_vectors=False,
            )
        points = [FoundPoint.of(r.id, r.payload, 0.0, None) for r in records]
        return points, None if next_offset is None else str(next_offset)

    async def query_dense(
        self,
        name: str,
        vector: list[float],
        where: f.Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]:
        return await self._query(name, list(vector), DENSE, where, limit, offset, with_vector)

    async def query_sparse(
        self,
        name: str,
        vector: SparseVector,
        where: f.Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]:
        query = models.SparseVector(indices=vector.indices, values=vector.values)
        return await self._query(name, query, SPARSE, where, limit, offset, with_vector)

    async def _query(
        self,
        name: str,
        query: Any,
        using: str,
        where: f.Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]:
        await self._indexed(name)
        with self._guard(name):
            response = await self.client.query_points(
                name,
                query=query,
                using=using,
                query_filter=to_qdrant_filter(where),
                limit=limit,
                offset=offset or None,
                with_payload=True,
                with_vectors=[DENSE] if with_vector else False,
            )
        return [FoundPoint.of(p.id, p.payload, p.score, p.vector) for p in response.points]

    async def optimize(self, name: str) -> None:
        # A Qdrant server optimizes in the background on its own.
        return None
