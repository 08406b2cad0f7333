"""``VectorStore`` on qdrant-edge: the embedded engine, one shard per collection.

Layout under ``<data_dir>/qdrant``::

    collections/<name>/        the engine's shard (segments + write-ahead log)
    collections/<name>.json    the collection's schema, written atomically and fsync'd

The shard is created before its schema file and the schema file removed before its shard,
so a schema file always names a complete shard; a shard without one is left over from a
crash half-way through and is removed at start-up.

qdrant-edge is synchronous and a shard may be opened by one process only (its WAL is
locked), so every call runs on one dedicated thread: the event loop never blocks and calls
never race. Tenants take turns on that thread (``services/common/fair_executor.py``): one
tenant's queue of calls never makes another's wait behind all of it. Writes go through
the engine's WAL before ``update`` returns, so an acknowledged write survives ``kill -9``;
``flush`` makes the segments themselves durable and truncates the WAL up to there, which
keeps it, and its replay at start after ``kill -9``, short: after a large import's
optimize, on close, and once a collection took ``flush_after_objects`` writes since its
last flush or has had one unflushed for ``flush_interval_seconds`` (before, UpsertObjects
alone grew the WAL without bound: 128 MB and ~1.4 s of replay for 40 000 points). Each
flush is a turn of its own on the engine's thread, one collection at a time.

Every key the service filters on has a payload index (``payload_index.py``), created with
the shard, or after open (while the service answers) for a shard made before indexes
existed: a filter is looked up, not checked against every point while that one thread,
and every tenant's calls, wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import qdrant_edge as qe

from services.common.errors import AlreadyExists, NotFound
from services.common.fair_executor import FairExecutor
from services.common.tasks import cancel_and_wait
from services.retrieval import filters as f
from services.retrieval.metrics import ENGINE_FLUSHES
from services.retrieval.payload_index import IndexKind, missing, payload_indexes
from services.retrieval.store import (
    DENSE,
    FLUSH_AFTER_OBJECTS,
    FLUSH_INTERVAL_SECONDS,
    SPARSE,
    WRITE_TURN_BYTES,
    CollectionLayout,
    FoundPoint,
    SparseVector,
    StoredPoint,
    point_bytes,
)

log = logging.getLogger("gensearch.retrieval.edge")
T = TypeVar("T")


class DataDirUnreadable(Exception):
    """A collection under the data dir that cannot be opened (a corrupt or partial copy):
    the process stops at start with this one line (``services.retrieval.__main__``),
    naming the files and the setting, not a traceback."""


_DISTANCES = {
    "cosine": qe.Distance.Cosine,
    "dot": qe.Distance.Dot,
    "euclid": qe.Distance.Euclid,
}
# The engine's index for each kind (payload_index.py decides which key gets which).
_INDEXES: dict[IndexKind, Any] = {
    IndexKind.KEYWORD: qe.PayloadSchemaType.Keyword,
    IndexKind.TENANT: qe.KeywordIndexParams(is_tenant=True),
    IndexKind.INTEGER: qe.PayloadSchemaType.Integer,
    IndexKind.FLOAT: qe.PayloadSchemaType.Float,
    IndexKind.DATETIME: qe.PayloadSchemaType.Datetime,
}
_KINDS = {
    qe.PayloadSchemaType.Keyword: IndexKind.KEYWORD,
    qe.PayloadSchemaType.Integer: IndexKind.INTEGER,
    qe.PayloadSchemaType.Float: IndexKind.FLOAT,
    qe.PayloadSchemaType.Datetime: IndexKind.DATETIME,
}


def to_edge_filter(node: f.Node | None) -> qe.Filter | None:
    if node is None:
        return None
    if isinstance(node, f.Bool):
        return qe.Filter(
            must=[_condition(n) for n in node.must] or None,
            should=[_condition(n) for n in node.should] or None,
            must_not=[_condition(n) for n in node.must_not] or None,
        )
    return qe.Filter(must=[_condition(node)])


def _condition(node: f.Node) -> Any:
    if isinstance(node, f.Bool):
        return to_edge_filter(node)
    if isinstance(node, f.Match):
        return qe.FieldCondition(node.key, match=qe.MatchValue(node.value))
    if isinstance(node, f.MatchAny):
        values: Any = list(node.values)
        return qe.FieldCondition(node.key, match=qe.MatchAny(values))
    if isinstance(node, f.Range):
        rng = qe.RangeFloat(gt=node.gt, gte=node.gte, lt=node.lt, lte=node.lte)
        return qe.FieldCondition(node.key, range=rng)
    if isinstance(node, f.DateRange):
        dates = qe.RangeDateTime(gt=node.gt, gte=node.gte, lt=node.lt, lte=node.lte)
        return qe.FieldCondition(node.key, range=dates)
    return qe.FieldCondition(node.key, match=qe.MatchText(node.text))


def write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _index_kind(info: Any) -> IndexKind | None:
    """The kind of an index the shard reports (None: one we never make)."""
    if info.data_type == qe.PayloadSchemaType.Keyword and getattr(info.params, "is_tenant", None):
        return IndexKind.TENANT
    return _KINDS.get(info.data_type)


def shard_indexes(shard: qe.EdgeShard) -> dict[str, IndexKind | None]:
    """The payload indexes ``shard`` has: key -> kind (None: one we never make)."""
    return {key: _index_kind(info) for key, info in shard.info().payload_schema.items()}


def create_indexes(
    shard: qe.EdgeShard,
    schema: dict[str, Any],
    most: int | None = None,
    skip: Collection[str] = (),
) -> dict[str, IndexKind]:
    """Create the payload indexes ``schema``'s collection should have and lacks (all of them
    for a new shard; those of collections made before indexes existed, after open), at most
    ``most`` of them (None: all) and none of the keys ``skip``; the ones it created.
    Idempotent. An index over points already stored is built right here."""
    lacking = missing(payload_indexes(schema), shard_indexes(shard))
    lacking = {key: kind for key, kind in lacking.items() if key not in skip}
    created = dict(itertools.islice(lacking.items(), most))
    for key, kind in created.items():
        shard.update(qe.UpdateOperation.create_field_index(key, _INDEXES[kind]))
    return created


def write_pieces(points: list[StoredPoint], most_bytes: int) -> list[list[StoredPoint]]:
    """``points`` in order, in pieces of at most ``most_bytes`` (``point_bytes``) each, or
    of one point where that one alone is larger."""
    pieces: list[list[StoredPoint]] = []
    size = 0
    for point in points:
        weight = point_bytes(point)
        if not pieces or size + weight > most_bytes:
            pieces.append([])
            size = 0
        pieces[-1].append(point)
        size += weight
    return pieces


class EdgeStore:
    def __init__(
        self,
        root: Path,
        write_turn_bytes: int = WRITE_TURN_BYTES,
        flush_after_objects: int = FLUSH_AFTER_OBJECTS,
        flush_interval_seconds: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        """``write_turn_bytes``: the most of one write the engine's thread takes in one
        turn (``upsert``). A collection is flushed once it took ``flush_after_objects``
        objects written or deleted since its last flush, and once one of them waited
        ``flush_interval_seconds`` (0: that bound off)."""
        self.root = Path(root)
        self._write_turn_bytes = write_turn_bytes
        self._flush_after = flush_after_objects
        self._flush_interval = flush_interval_seconds
        # Touched on the engine's thread only: per collection, the objects written or
        # deleted since its last flush, and when the first of them was (monotonic).
        self._unflushed: dict[str, int] = {}
        self._unflushed_since: dict[str, float] = {}
        # Flushes collections whose oldest unflushed write is flush_interval_seconds old.
        self._flusher: asyncio.Task[None] | None = None
        # Writes handed to the engine in several turns, finishing (close waits for them).
        self._writes: set[asyncio.Task[None]] = set()
        self._dir = self.root / "collections"
        self._executor = FairExecutor(thread_name_prefix="qdrant-edge")
        self._shards: dict[str, qe.EdgeShard] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        # Shards being created (create_collection), not served until whole.
        self._creating: dict[str, qe.EdgeShard] = {}
        # Building the indexes collections lacked at open (_create_missing_indexes).
        self._migration: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._executor.run(fn, *args)

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        lacking = await self._run(self._open)
        if lacking:
            self._migration = asyncio.create_task(self._create_missing_indexes(lacking))
        if self._flush_interval > 0:
            self._flusher = asyncio.create_task(self._flush_aged_writes())

    async def migrated(self) -> None:
        """Waits until the indexes that collections lacked at open are built (operators'
        tools, tests and benchmarks; the service never waits for them)."""
        if self._migration is not None:
            await asyncio.shield(self._migration)

    async def _create_missing_indexes(self, names: list[str]) -> None:
        """Collections made before payload indexes existed get them after open, while the
        service answers: one index per turn on the engine's thread, so a call waits behind
        at most one index build (~1.6 s per 100,000 objects), not all of them, and writes
        never race a build (the thread runs one thing at a time; a point written after a
        build is indexed by the engine). Until an index exists its filters read payloads,
        with the same answers. A failure leaves the collection served that way, not down."""
        for name in names:
            started = time.monotonic()
            created: dict[str, IndexKind] = {}
            try:
                # Each key once, whatever the engine then reports: never a loop.
                while made := await self._run(self._create_an_index, name, set(created)):
                    created |= made
            except Exception:
                log.exception("creating payload indexes failed", extra={"collection": name})
            if created:
                log.info(
                    "payload indexes created",
                    extra={
                        "collection": name,
                        "keys": sorted(created),
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )

    def _create_an_index(self, name: str, tried: set[str]) -> dict[str, IndexKind]:
        shard = self._shards.get(name)
        if shard is None:
            return {}  # deleted meanwhile (one created again since has its indexes)
        made = create_indexes(shard, self._schemas[name], most=1, skip=tried)
        if made:
            self._flush(name, shard, "index")
        return made

    def _open(self) -> list[str]:
        """Opens every collection; the names of those that lack payload indexes."""
        self._dir.mkdir(parents=True, exist_ok=True)
        lacking = []
        for schema_file in sorted(self._dir.glob("*.json")):
            name = schema_file.stem
            schema, shard = self._load_collection(schema_file)
            self._shards[name] = shard
            self._schemas[name] = schema
            if missing(payload_indexes(schema), shard_indexes(shard)):
                lacking.append(name)
        for entry in self._dir.iterdir():
            if entry.is_dir() and entry.name not in self._shards:
                log.warning("removing a shard without schema", extra={"path": str(entry)})
                shutil.rmtree(entry)
            elif entry.name.endswith(".json.tmp"):
                entry.unlink()
        log.info(
            "qdrant-edge opened",
            extra={
                "root": str(self.root),
                "collections": len(self._shards),
                "lacking_indexes": len(lacking),
            },
        )
        return lacking

    def _load_collection(self, schema_file: Path) -> tuple[dict[str, Any], qe.EdgeShard]:
        shard_dir = self._dir / schema_file.stem
        try:
            schema = json.loads(schema_file.read_text(encoding="utf-8"))
            # qdrant-edge raises a bare Exception for anything it cannot read.
            shard = qe.EdgeShard.load(str(shard_dir))
        except Exception as err:
            raise DataDirUnreadable(
                f"cannot open the collection files {schema_file} and {shard_dir} (under "
                f"GENSEARCH_DATA_DIR={self.root.parent}): {err}; restore the data dir from a "
                "backup taken while the service was stopped, or move that collection's "
                "directory and .json file away (docs/operations.md, Backups and restores)"
            ) from None
        return schema, shard

    async def close(self) -> None:
        if self._flusher is not None:
            await cancel_and_wait(self._flusher)  # close flushes every shard
        if self._migration is not None:
            # The rest are built at the next open; one being built finishes (drain).
            await cancel_and_wait(self._migration)
        while self._writes:  # between two turns a write has nothing queued for drain to see
            await asyncio.wait(set(self._writes))
        await self._executor.drain()  # every tenant's calls first: they need the shards
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        for name, shard in list(self._shards.items()):
            try:
                shard.flush()
                shard.close()
            except Exception:
                log.exception("closing shard %s failed", name)
        self._shards.clear()

    # -- collections --------------------------------------------------------------------

    async def create_collection(self, layout: CollectionLayout, schema: dict[str, Any]) -> None:
        """The shard in one turn of the engine's thread, then its payload indexes one a
        turn, then its schema file: other tenants' calls run between them. Each index costs
        more than the last (256 properties took 10-16 s), and in one turn every tenant's
        call waited for all of them. Once handed over, a create runs to its end even if its
        caller goes away meanwhile (shielded, as a write is); the collection is served only
        once it is whole (a shard without its schema file is removed at open)."""
        task = asyncio.create_task(self._create_in_turns(layout, schema))
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        await asyncio.shield(task)

    async def _create_in_turns(self, layout: CollectionLayout, schema: dict[str, Any]) -> None:
        await self._run(self._create_shard, layout)
        try:
            tried: set[str] = set()
            # Each key once, whatever the engine then reports: never a loop.
            while made := await self._run(self._index_new_shard, layout.name, schema, tried):
                tried |= set(made)
            await self._run(self._open_new_shard, layout.name, schema)
        except BaseException:
            await self._run(self._drop_new_shard, layout.name)
            raise

    def _create_shard(self, layout: CollectionLayout) -> None:
        if layout.name in self._shards or layout.name in self._creating:
            raise AlreadyExists(
                f"collection {layout.name!r} already exists", field="collection.name"
            )
        path = self._dir / layout.name
        if path.exists():
            shutil.rmtree(path)
        dense = qe.EdgeVectorParams(size=layout.dimensions, distance=_DISTANCES[layout.distance])
        sparse = (
            {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if layout.sparse else None
        )
        config = qe.EdgeConfig(vectors={DENSE: dense}, sparse_vectors=sparse)
        self._creating[layout.name] = qe.EdgeShard.create(str(path), config)

    def _index_new_shard(
        self, name: str, schema: dict[str, Any], tried: set[str]
    ) -> dict[str, IndexKind]:
        return create_indexes(self._creating[name], schema, most=1, skip=tried)

    def _open_new_shard(self, name: str, schema: dict[str, Any]) -> None:
        # After the indexes: a shard with a schema file has its indexes.
        write_json_atomically(self._dir / f"{name}.json", schema)
        self._shards[name] = self._creating.pop(name)
        self._schemas[name] = schema

    def _drop_new_shard(self, name: str) -> None:
        shard = self._creating.pop(name, None)
        if shard is not None:
            with contextlib.suppress(Exception):
                shard.close()
        shutil.rmtree(self._dir / name, ignore_errors=True)

    async def delete_collection(self, name: str) -> bool:
        return await self._run(self._delete_collection, name)

    def _delete_collection(self, name: str) -> bool:
        shard = self._shards.pop(name, None)
        self._schemas.pop(name, None)
        self._unflushed.pop(name, None)
        self._unflushed_since.pop(name, None)
        if shard is None:
            return False
        with contextlib.suppress(Exception):
            shard.close()
        (self._dir / f"{name}.json").unlink(missing_ok=True)
        fsync_dir(self._dir)
        shutil.rmtree(self._dir / name, ignore_errors=True)
        return True

    async def schemas(self) -> list[dict[str, Any]]:
        return await self._run(lambda: list(self._schemas.values()))

    async def schema(self, name: str) -> dict[str, Any] | None:
        # On the engine's one worker thread, so it is ordered with creates, deletes and
        # writes: a write sent right after this answer lands before any later delete.
        return await self._run(self._schemas.get, name)

    async def indexes(self, name: str) -> dict[str, IndexKind | None]:
        """The payload indexes collection ``name`` has (operators' and tests' view)."""
        return await self._run(lambda: shard_indexes(self._shard(name)))

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is None:
            raise NotFound(f"collection {name!r} not found", field="collection")
        return shard

    # -- points -------------------------------------------------------------------------

    async def upsert(self, name: str, points: list[StoredPoint]) -> None:
        """Writes ``points`` in pieces of at most ``write_turn_bytes``, each one turn of the
        engine's thread, so other tenants' calls run between them (one 15 MB write held
        the thread ~1.3 s). Once handed over, a write runs to its end even if its caller
        goes away meanwhile (shielded): a write is never cut short at a piece's edge. The
        caller's own later calls queue behind it (one tenant's calls keep their order);
        one it sends while the write is in progress may see the pieces written so far."""
        pieces = write_pieces(points, self._write_turn_bytes)
        if len(pieces) <= 1:
            await self._run(self._upsert, name, points)
            await self._flush_if_due(name)
            return
        task = asyncio.create_task(self._upsert_pieces(name, pieces))
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        await asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that went away is not told (nor the log)

    async def _upsert_pieces(self, name: str, pieces: list[list[StoredPoint]]) -> None:
        for piece in pieces:
            await self._run(self._upsert, name, piece)
            await self._flush_if_due(name)

    def _upsert(self, name: str, points: list[StoredPoint]) -> None:
        shard = self._shard(name)
        edge_points = []
        for point in points:
            vectors: dict[str, Any] = {}
            if point.dense is not None:
                vectors[DENSE] = point.dense
            if point.sparse is not None:
                vectors[SPARSE] = qe.SparseVector(point.sparse.indices, point.sparse.values)
            edge_points.append(qe.Point(point.id, vectors, point.payload))
        shard.update(qe.UpdateOperation.upsert_points(edge_points))
        self._wrote(name, len(edge_points))

    async def retrieve(self, name: str, ids: list[str], with_vector: bool) -> list[FoundPoint]:
        return await self._run(self._retrieve, name, ids, with_vector)

    def _retrieve(self, name: str, ids: list[str], with_vector: bool) -> list[FoundPoint]:
        records = self._shard(name).retrieve(
            list(ids), with_payload=True, with_vector=[DENSE] if with_vector else False
        )
        return [FoundPoint.of(r.id, r.payload, 0.0, r.vector) for r in records]

    async def delete_ids(self, name: str, ids: list[str]) -> int:
        deleted = await self._run(self._delete_ids, name, ids)
        await self._flush_if_due(name)
        return deleted

    def _delete_ids(self, name: str, ids: list[str]) -> int:
        shard = self._shard(name)
        existing = shard.retrieve(list(ids), with_payload=False, with_vector=False)
        if existing:
            shard.update(qe.UpdateOperation.delete_points([r.id for r in existing]))
            self._wrote(name, len(existing))
        return len(existing)

    async def delete_matching(self, name: str, where: f.Node) -> int:
        deleted = await self._run(self._delete_matching, name, where)
        await self._flush_if_due(name)
        return deleted

    def _delete_matching(self, name: str, where: f.Node) -> int:
        shard = self._shard(name)
        edge_filter = to_edge_filter(where)
        count = shard.count(qe.CountRequest(exact=True, filter=edge_filter))
        if count:
            assert edge_filter is not None
            shard.update(qe.UpdateOperation.delete_points_by_filter(edge_filter))
            self._wrote(name, int(count))
        return int(count)

    async def count(self, name: str, where: f.Node | None) -> int:
        return await self._run(self._count, name, where)

    def _count(self, name: str, where: f.Node | None) -> int:
        request = qe.CountRequest(exact=True, filter=to_edge_filter(where))
        return int(self._shard(name).count(request))

    async def scroll(
        self,
        name: str,
        offset: str | None,
        limit: int,
        where: f.Node | None = None,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[FoundPoint], str | None]:
        return await self._run(self._scroll, name, offset, limit, where, fields)

    def _scroll(
        self,
        name: str,
        offset: str | None,
        limit: int,
        where: f.Node | None,
        fields: Sequence[str] | None,
    ) -> tuple[list[FoundPoint], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=to_edge_filter(where),
            with_payload=True if fields is None else list(fields),
            with_vector=False,
        )
        records, next_offset = self._shard(name).scroll(request)
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
        query = qe.Query.Nearest(list(vector), using=DENSE)
        return await self._run(self._query, name, query, where, limit, offset, with_vector)

    async def query_sparse(
        self,
        name: str,
        vector: SparseVector,
        where: f.Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]:
        query = qe.Query.Nearest(qe.SparseVector(vector.indices, vector.values), using=SPARSE)
        return await self._run(self._query, name, query, where, limit, offset, with_vector)

    def _query(
        self,
        name: str,
        query: Any,
        where: f.Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]:
        request = qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=query,
            filter=to_edge_filter(where),
            with_payload=True,
            with_vector=[DENSE] if with_vector else False,
        )
        found = self._shard(name).query(request)
        return [FoundPoint.of(p.id, p.payload, p.score, p.vector) for p in found]

    def query_now(self, name: str, vector: list[float], limit: int) -> list[FoundPoint]:
        """A dense query on the calling thread (benchmarks time the bare engine with it)."""
        query = qe.Query.Nearest(list(vector), using=DENSE)
        return self._query(name, query, None, limit, 0, False)

    async def optimize(self, name: str) -> None:
        await self._run(self._optimize, name)

    def _optimize(self, name: str) -> None:
        shard = self._shard(name)
        shard.optimize()
        self._flush(name, shard, "optimize")

    # -- flushes ------------------------------------------------------------------------

    def _wrote(self, name: str, objects: int) -> None:
        """Engine's thread: ``objects`` written or deleted in collection ``name``."""
        self._unflushed[name] = self._unflushed.get(name, 0) + objects
        self._unflushed_since.setdefault(name, time.monotonic())

    async def _flush_if_due(self, name: str) -> None:
        """After a write: a collection past ``flush_after_objects`` unflushed is flushed in
        a turn of its own, the writer's (it waits for it, as an import's end waits for its
        optimize; its tenant's next call comes after it, other tenants' run between). A
        writer that goes away meanwhile leaves it to the next write or to the interval."""
        # Read off the engine's thread: a stale count costs one turn that finds nothing to
        # do, or one write later; _flush_many_writes decides on the thread.
        if self._flush_after and self._unflushed.get(name, 0) >= self._flush_after:
            try:
                await self._run(self._flush_many_writes, name)
            except Exception:
                # The write is in the WAL and answered as done; the next write tries again.
                log.exception("flushing a collection failed", extra={"collection": name})

    def _flush_many_writes(self, name: str) -> None:
        shard = self._shards.get(name)
        if shard is not None and self._unflushed.get(name, 0) >= self._flush_after:
            self._flush(name, shard, "writes")

    async def _flush_aged_writes(self) -> None:
        """Flushes, one collection a turn, those whose oldest unflushed write is
        ``flush_interval_seconds`` old: a write waits at most 1.25 times that (this
        looks every quarter of it). A failure is logged and tried again next time."""
        while True:
            await asyncio.sleep(self._flush_interval / 4)
            if not self._unflushed_since:
                continue  # nothing written: no turn of the engine's thread taken
            cutoff = time.monotonic() - self._flush_interval
            for name in await self._run(self._aged, cutoff):
                try:
                    await self._run(self._flush_aged, name, cutoff)
                except Exception:
                    log.exception("flushing a collection failed", extra={"collection": name})

    def _aged(self, cutoff: float) -> list[str]:
        return [name for name, since in self._unflushed_since.items() if since <= cutoff]

    def _flush_aged(self, name: str, cutoff: float) -> None:
        shard = self._shards.get(name)
        since = self._unflushed_since.get(name)
        if shard is not None and since is not None and since <= cutoff:
            self._flush(name, shard, "interval")

    def _flush(self, name: str, shard: qe.EdgeShard, trigger: str) -> None:
        """Engine's thread: the shard's segments to disk and its WAL truncated up to
        there (qdrant-edge keeps the last closed WAL segment), so a restart after kill -9
        replays only the writes since."""
        shard.flush()
        self._unflushed.pop(name, None)
        self._unflushed_since.pop(name, None)
        ENGINE_FLUSHES.labels(trigger).inc()
