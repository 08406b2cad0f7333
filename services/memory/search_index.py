"""The index behind SearchInteractions: interactions in a Qdrant collection of their own.

The engine, the BM25 vectors, the local embedder and rank fusion are the retrieval
service's, used as libraries (``services.retrieval.{edge_store,server_store,bm25,
embedders,search}``): the embedded qdrant-edge engine under ``<data_dir>/memory-index``,
or a Qdrant server (``search_qdrant_url``) in the collection ``search_collection``.

Each interaction is two points, its input and its response (ids derived from the
interaction id, so indexing again overwrites), each with a BM25 sparse vector and, in
hybrid mode, a MiniLM vector. Payload: ``t`` tenant, ``u`` user, ``c`` conversation, ``i``
interaction, ``k`` which text. Every query is filtered by tenant and user (and the
conversation when given): the engine never even ranks another owner's turns. ``t``, ``u``,
``c`` and ``i`` have payload indexes (``t`` the tenant index), made by the store with the
collection or, for one made before, on open (``services/retrieval/payload_index.py``). Redis stays
the truth: the caller re-checks every hit there (``indexer.py``).

The collection and the model are opened on first use, so the service starts as fast as
without search.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.memory.store import Owner
from services.retrieval import bm25
from services.retrieval.embedders import LocalEmbedder
from services.retrieval.filters import Bool, Match, Node
from services.retrieval.payload_index import INTERACTIONS_KIND
from services.retrieval.search import fuse
from services.retrieval.store import CollectionLayout, FoundPoint, StoredPoint, VectorStore

log = logging.getLogger("gensearch.memory.search")

# Point ids: uuid5(this, "<interaction id>:<kind>").
_POINTS = uuid.UUID("6f1c2a4e-3b7d-5e9f-8a1b-2c3d4e5f6a7b")
_KINDS = ("input", "response")
# Its payload indexes follow from it (payload_index.py).
_SCHEMA_KIND = INTERACTIONS_KIND
# Without vectors the collection still declares a dense vector (the port's layout needs
# one); points simply carry none.
_NO_DENSE = 1
RRF_K = 60
HYBRID_ALPHA = 0.5


@dataclass(frozen=True)
class IndexHit:
    interaction_id: str
    score: float


# What an operator looks at when the index does not answer (``InteractionIndex.where``).
SERVER_WHERE = "GENSEARCH_MEMORY_SEARCH_QDRANT_URL"


def embedded_where(root: Path) -> str:
    """The embedded engine's files and the setting that places them: its Qdrant URL setting
    is empty then, and naming it sent an operator to a server that does not exist."""
    return f"the embedded index in {root}, under GENSEARCH_DATA_DIR"


class InteractionIndex:
    def __init__(
        self,
        store: VectorStore,
        embedder: LocalEmbedder | None,
        collection: str,
        *,
        where: str = SERVER_WHERE,
    ):
        """``where``: the setting (or the files) to check when the index does not answer,
        named by the indexer's outage warning."""
        self.where = where
        self._store = store
        self._embedder = embedder
        self._collection = collection
        self._opened = False
        self._open_lock = asyncio.Lock()

    @property
    def semantic(self) -> bool:
        return self._embedder is not None

    async def _ready(self) -> None:
        if self._opened:
            return
        async with self._open_lock:
            if self._opened:
                return
            await self._store.open()
            dims = await self._embedder.dimensions() if self._embedder else _NO_DENSE
            schema = {"kind": _SCHEMA_KIND, "name": self._collection, "dimensions": dims}
            # Ours by kind as well as name: on a Qdrant server shared with retrieval, a
            # collection a caller named like ours is not this index (nor is it rebuilt).
            existing = [
                s
                for s in await self._store.schemas()
                if s.get("kind") == _SCHEMA_KIND and s.get("name") == self._collection
            ]
            if existing and existing[0] != schema:
                # Derived data made with another model or mode: start it again.
                log.warning(
                    "search index made with other settings: rebuilt empty",
                    extra={"old": existing[0], "new": schema},
                )
                await self._store.delete_collection(self._collection)
                existing = []
            if not existing:
                layout = CollectionLayout(self._collection, dims, "cosine", sparse=True)
                with contextlib.suppress(AlreadyExists):  # another replica made it first
                    await self._store.create_collection(layout, schema)
            self._opened = True

    async def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        await self._store.close()

    async def add(self, owner: Owner, interaction: pb.Interaction) -> None:
        await self._ready()
        iid = interaction.interaction_id
        texts = [
            (kind, text)
            for kind, text in zip(_KINDS, (interaction.input, interaction.response), strict=True)
            if text.strip()
        ]
        if not texts:
            return
        sparse = await asyncio.to_thread(lambda: [bm25.document_vector(t) for _, t in texts])
        dense: Sequence[list[float] | None] = [None] * len(texts)
        if self._embedder is not None:
            dense = await self._embedder.embed([t for _, t in texts])
        payload: dict[str, Any] = {
            "t": owner.tenant,
            "u": owner.user,
            "c": interaction.conversation_id,
            "i": iid,
        }
        points = [
            StoredPoint(
                id=point_id(iid, kind),
                payload={**payload, "k": kind},
                dense=vector,
                sparse=words,
            )
            for (kind, _), vector, words in zip(texts, dense, sparse, strict=True)
        ]
        await self._store.upsert(self._collection, points)

    async def indexed(self, iids: list[str]) -> set[str]:
        """Which of ``iids`` have entries (by their input's or response's point id)."""
        await self._ready()
        ids = {point_id(iid, kind): iid for iid in iids for kind in _KINDS}
        found = await self._store.retrieve(self._collection, list(ids), False)
        return {ids[point.id] for point in found if point.id in ids}

    async def remove_interaction(self, owner: Owner, iid: str) -> None:
        await self._ready()
        where = Bool(must=(*_owned(owner), Match("i", iid)))
        await self._store.delete_matching(self._collection, where)

    async def remove_conversation(self, owner: Owner, cid: str) -> None:
        await self._ready()
        where = Bool(must=(*_owned(owner), Match("c", cid)))
        await self._store.delete_matching(self._collection, where)

    async def scroll(self, offset: str | None, limit: int) -> tuple[list[FoundPoint], str | None]:
        """Every entry of every owner, a page at a time (the sweep)."""
        await self._ready()
        return await self._store.scroll(self._collection, offset, limit)

    async def remove_entries(self, ids: list[str]) -> None:
        await self._ready()
        await self._store.delete_ids(self._collection, ids)

    async def count(self, owner: Owner, iid: str | None = None) -> int:
        """The owner's entries (of one interaction when given): two per indexed turn."""
        await self._ready()
        conditions = _owned(owner) if iid is None else (*_owned(owner), Match("i", iid))
        return await self._store.count(self._collection, Bool(must=conditions))

    async def search(
        self, owner: Owner, query: str, cid: str, mode: int, candidates: int
    ) -> list[IndexHit]:
        """The owner's interactions best matching ``query``, best first, each once."""
        mode = self.resolve_mode(mode)
        await self._ready()
        conditions: tuple[Node, ...] = _owned(owner)
        if cid:
            conditions = (*conditions, Match("c", cid))
        where = Bool(must=conditions)
        # Two points per interaction: twice the candidates still give `candidates` turns.
        limit = candidates * 2
        dense: list[FoundPoint] = []
        keyword: list[FoundPoint] = []
        if mode in (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_SEMANTIC):
            assert self._embedder is not None
            vector = (await self._embedder.embed([query]))[0]
            dense = await self._store.query_dense(self._collection, vector, where, limit, 0, False)
        if mode in (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_KEYWORD):
            words = await asyncio.to_thread(bm25.query_vector, query)
            if words is not None:
                keyword = await self._store.query_sparse(
                    self._collection, words, where, limit, 0, False
                )
        if mode == pb.SEARCH_MODE_HYBRID:
            ranked = fuse(dense, keyword, HYBRID_ALPHA, RRF_K)
        else:
            ranked = dense or keyword
        hits: list[IndexHit] = []
        seen: set[str] = set()
        for point in ranked:
            iid = str(point.payload.get("i", ""))
            # Belt and braces: the filter already keeps every other owner out.
            if point.payload.get("t") != owner.tenant or point.payload.get("u") != owner.user:
                continue
            if iid and iid not in seen:
                seen.add(iid)
                hits.append(IndexHit(iid, point.score))
        return hits[:candidates]

    def resolve_mode(self, mode: int) -> int:
        if mode == pb.SEARCH_MODE_UNSPECIFIED:
            return pb.SEARCH_MODE_HYBRID if self.semantic else pb.SEARCH_MODE_KEYWORD
        if mode in (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_SEMANTIC) and not self.semantic:
            raise FailedPrecondition(
                "this memory service indexes keywords only (search_index=keyword); "
                "use SEARCH_MODE_KEYWORD",
                field="mode",
                reason="SEARCH_MODE_UNAVAILABLE",
            )
        if mode not in pb.SearchMode.values():
            raise InvalidArgument(
                f"mode {mode} is not a SearchMode", field="mode", reason="INVALID_MODE"
            )
        return mode


def point_id(iid: str, kind: str) -> str:
    return str(uuid.uuid5(_POINTS, f"{iid}:{kind}"))


def _owned(owner: Owner) -> tuple[Node, ...]:
    return (Match("t", owner.tenant), Match("u", owner.user))


def make_index(
    *,
    mode: str,
    data_dir: Path,
    qdrant_url: str,
    qdrant_api_key: str,
    collection: str,
    model_path: str,
    embed_threads: int,
) -> InteractionIndex | None:
    """The index the settings ask for, or None when search is off."""
    if mode == "off":
        return None
    store: VectorStore
    where = SERVER_WHERE
    url = qdrant_url.strip()
    if not url:
        from services.retrieval.edge_store import EdgeStore

        store = EdgeStore(data_dir / "memory-index")
        where = embedded_where(store.root)
    else:
        from services.retrieval.server_client import qdrant_server_client
        from services.retrieval.server_store import ServerStore

        store = ServerStore(
            qdrant_server_client(url, qdrant_api_key or None, None),
            variables="GENSEARCH_MEMORY_SEARCH_QDRANT_URL, GENSEARCH_MEMORY_SEARCH_QDRANT_API_KEY",
        )
    embedder = None
    if mode == "hybrid":
        embedder = LocalEmbedder(Path(model_path) if model_path else None, threads=embed_threads)
    return InteractionIndex(store, embedder, collection, where=where)
