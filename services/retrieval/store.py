"""The ``VectorStore`` port: what the service needs from a vector engine.

Two adapters implement it: ``EdgeStore`` (embedded qdrant-edge, one shard per collection)
and ``ServerStore`` (a Qdrant server through ``AsyncQdrantClient``). Everything that decides
*what* is stored or returned — validation, embedding, BM25 vectors, fusion — lives above the
port, so both adapters give the same answers (the congruence tests hold them to it).

Each collection is one Qdrant collection/shard with a named dense vector ``dense`` and, when
the keyword index is on, a named sparse vector ``bm25`` whose IDF the engine computes.
Payload layout: ``{"p": {<property>: value}, "ts": {<date property>: epoch seconds},
"b": {<bool property>: 0 or 1}, "n": {<text property>: NFKC copy}}`` — user properties under
their own key, so no property name can collide with ours; filters on bools use the numeric
copies, on dates the stored RFC 3339 value itself as the engine's datetime (exact to the
microsecond; ``ts`` is written for rollbacks, read no more), TEXT_MATCH also the NFKC copies
(only of values NFKC changes; never returned).
Every key a filter reads has a payload index (``payload_index.py`` says which; both adapters
make them with the collection, and for collections made before them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.retrieval.filters import Node

DENSE = "dense"
SPARSE = "bm25"
PROPS = "p"
# The default of GENSEARCH_RETRIEVAL_ENGINE_WRITE_TURN_BYTES (settings.py), the most of one
# write qdrant-edge's thread takes in one turn: ~90 ms of it (one 15 MB UpsertObjects held
# it ~1.3 s in one call, every other tenant's calls waiting).
WRITE_TURN_BYTES = 1024 * 1024
# The defaults of GENSEARCH_RETRIEVAL_FLUSH_AFTER_OBJECTS and _FLUSH_INTERVAL_SECONDS: when
# qdrant-edge flushes a collection written to (edge_store.py). 10 000 objects is ~30 MB of
# write-ahead log and ~0.35 s of replay after kill -9 (a flush of 30 000 took ~0.35 s).
FLUSH_AFTER_OBJECTS = 10_000
FLUSH_INTERVAL_SECONDS = 60.0
TIMESTAMPS = "ts"


@dataclass(frozen=True)
class CollectionLayout:
    """What the engine must know about a collection."""

    name: str
    dimensions: int
    distance: str  # "cosine" | "dot" | "euclid"
    sparse: bool


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass
class StoredPoint:
    id: str
    payload: dict[str, Any]
    dense: list[float] | None = None
    sparse: SparseVector | None = None


@dataclass
class FoundPoint:
    id: str
    payload: dict[str, Any]
    score: float = 0.0
    dense: list[float] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, point_id: Any, payload: Any, score: float, vector: Any) -> FoundPoint:
        """A point as either engine returns it (its named vectors a dict, when asked for)."""
        dense = vector.get(DENSE) if isinstance(vector, dict) else None
        return cls(id=str(point_id), payload=payload or {}, score=float(score), dense=dense)


def value_bytes(value: Any) -> int:
    """About the bytes ``value`` (a JSON payload) takes: its strings' lengths, 8 per other
    leaf. An estimate to size work by, cheap next to the engine's own encoding."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + value_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(value_bytes(v) for v in value)
    return 8


def point_bytes(point: StoredPoint) -> int:
    """About the bytes the engine is given for ``point``: payload and vectors."""
    size = 16 + value_bytes(point.payload)
    if point.dense is not None:
        size += 4 * len(point.dense)
    if point.sparse is not None:
        size += 8 * len(point.sparse.indices)
    return size


class VectorStore(Protocol):
    """Async engine operations; adapters raise ``services.common.errors`` errors."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_collection(self, layout: CollectionLayout, schema: dict[str, Any]) -> None:
        """Create the collection and persist ``schema``; AlreadyExists if the name is taken."""

    async def delete_collection(self, name: str) -> bool:
        """Drop the collection and its schema; False when there was none."""

    async def schemas(self) -> list[dict[str, Any]]:
        """Every stored collection schema."""

    async def schema(self, name: str) -> dict[str, Any] | None:
        """The schema stored with collection ``name`` now; None when there is none."""

    async def upsert(self, name: str, points: list[StoredPoint]) -> None: ...

    async def retrieve(self, name: str, ids: list[str], with_vector: bool) -> list[FoundPoint]: ...

    async def delete_ids(self, name: str, ids: list[str]) -> int:
        """Delete these ids; returns how many existed."""

    async def delete_matching(self, name: str, where: Node) -> int:
        """Delete every point matching ``where``; returns how many there were."""

    async def count(self, name: str, where: Node | None) -> int: ...

    async def scroll(
        self,
        name: str,
        offset: str | None,
        limit: int,
        where: Node | None = None,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[FoundPoint], str | None]:
        """The points matching ``where`` (None: every point) in id order, ``limit`` at a
        time, with payloads (only their top-level keys ``fields``, when given) and no
        vectors: the page from ``offset`` (None: the first) and the offset of the next page
        (None: the last)."""

    async def query_dense(
        self,
        name: str,
        vector: list[float],
        where: Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]: ...

    async def query_sparse(
        self,
        name: str,
        vector: SparseVector,
        where: Node | None,
        limit: int,
        offset: int,
        with_vector: bool,
    ) -> list[FoundPoint]: ...

    async def optimize(self, name: str) -> None:
        """Let the engine build its indexes after a bulk load."""
