"""Search: near_text, near_vector, keyword (BM25) and hybrid (weighted RRF) with filters.

Hybrid fusion runs here rather than in the engine so both storage adapters rank identically:
each side is queried for ``max(offset + limit, hybrid_candidates)`` hits with the filter
applied, and a hit's score is ``alpha / (k + dense_rank) + (1 - alpha) / (k + keyword_rank)``
(ranks from 1; a side that missed the hit adds nothing). Ties (in each side's ranking and in
the fused one) are broken by id so pages are stable and both adapters agree.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import InvalidArgument, MissingField
from services.common.settings import MAX_QUERY_TEXT
from services.common.values import check_chars
from services.retrieval import bm25
from services.retrieval.embedders import Embedders, EmbeddingInputRejected
from services.retrieval.filters import Node
from services.retrieval.schema import Schema, check_vector
from services.retrieval.store import FoundPoint, VectorStore

# Characters of a search's text (keyword, hybrid, near_text): the setting's name, as refusals
# carry it (its default is MAX_QUERY_TEXT).
QUERY_CHARS_SETTING = "GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS"
DEFAULT_ALPHA = 0.5


@dataclass
class SearchResult:
    hits: list[FoundPoint]
    embed_ms: float = 0.0
    query_ms: float = 0.0


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int
    with_vector: bool


def canonical(hits: list[FoundPoint]) -> list[FoundPoint]:
    """Equal scores ordered by id, so ties rank alike on every engine (float32 and float64
    engines differ in the last digits, hence five significant digits)."""
    return sorted(hits, key=lambda h: (-float(f"{h.score:.5g}"), h.id))


def fuse(
    dense: Sequence[FoundPoint], keyword: Sequence[FoundPoint], alpha: float, k: int
) -> list[FoundPoint]:
    """Weighted reciprocal rank fusion of two ranked lists."""
    scores: dict[str, float] = {}
    points: dict[str, FoundPoint] = {}
    for weight, ranked in ((alpha, dense), (1.0 - alpha, keyword)):
        for rank, point in enumerate(ranked, start=1):
            scores[point.id] = scores.get(point.id, 0.0) + weight / (k + rank)
            points.setdefault(point.id, point)
    order = sorted(scores, key=lambda pid: (-scores[pid], pid))
    return [
        FoundPoint(id=pid, payload=points[pid].payload, score=scores[pid], dense=points[pid].dense)
        for pid in order
    ]


class Searcher:
    def __init__(
        self,
        store: VectorStore,
        embedders: Embedders,
        *,
        candidates: int,
        rrf_k: int,
        max_query_chars: int = MAX_QUERY_TEXT,
    ) -> None:
        self._store = store
        self._embedders = embedders
        self._candidates = candidates
        self._rrf_k = rrf_k
        self._max_query_chars = max_query_chars

    def points_read(self, request: pb.SearchRequest, page: Page) -> int:
        """The most points, payloads and all, the engine reads for ``page`` of ``request``:
        a hybrid search queries each side for its candidates (``_hybrid``)."""
        if request.WhichOneof("query") == "hybrid":
            return 2 * max(page.offset + page.limit, self._candidates)
        return page.limit

    def _text(self, value: str, field: str) -> str:
        if not value.strip():
            raise MissingField(f"{field} is required", field=field)
        check_chars(value, field, self._max_query_chars, QUERY_CHARS_SETTING)
        return value

    async def search(
        self,
        schema: Schema,
        request: pb.SearchRequest,
        where: Node | None,
        page: Page,
        time_left: float | None,
    ) -> SearchResult:
        """``time_left``: seconds before the RPC's deadline (None: none), which bounds the
        query's embedding as EMBED_TIMEOUT does."""
        mode = request.WhichOneof("query")
        if mode is None:
            # None of the alternatives set: missing, like DeleteObjects' ids-or-filter.
            raise MissingField(
                "set one query: near_text, near_vector, keyword or hybrid", field="query"
            )
        if mode == "near_vector":
            vector = check_vector(list(request.near_vector.vector), schema, "near_vector.vector")
            return await self._dense(schema, vector, where, page, 0.0)
        if mode == "near_text":
            text = self._text(request.near_text.text, "near_text.text")
            if not schema.embeds:
                raise InvalidArgument(
                    f"collection {schema.name!r} has no vectorizer: use near_vector",
                    field="near_text",
                    reason="NO_VECTORIZER",
                )
            vector, embed_ms = await self._embed(schema, text, "near_text.text", time_left)
            return await self._dense(schema, vector, where, page, embed_ms)
        if mode == "keyword":
            text = self._text(request.keyword.text, "keyword.text")
            _need_keyword_index(schema, "keyword")
            return await self._keyword(schema, text, where, page)
        return await self._hybrid(schema, request.hybrid, where, page, time_left)

    async def _embed(
        self, schema: Schema, text: str, field: str, time_left: float | None
    ) -> tuple[list[float], float]:
        started = time.perf_counter()
        try:
            embedder = self._embedders.for_collection(schema)
            [vector] = await embedder.embed([text], time_left=time_left)
        except EmbeddingInputRejected as err:
            raise err.for_field(field, "the query text") from None
        return vector, (time.perf_counter() - started) * 1000

    async def _dense(
        self, schema: Schema, vector: list[float], where: Node | None, page: Page, embed_ms: float
    ) -> SearchResult:
        started = time.perf_counter()
        hits = await self._store.query_dense(
            schema.store_name, vector, where, page.limit, page.offset, page.with_vector
        )
        query_ms = (time.perf_counter() - started) * 1000
        if schema.distance == "euclid":
            # Qdrant ranks Euclid by ascending distance; our scores are "higher is better".
            for hit in hits:
                hit.score = -hit.score
        return SearchResult(hits=canonical(hits), embed_ms=embed_ms, query_ms=query_ms)

    async def _keyword(
        self, schema: Schema, text: str, where: Node | None, page: Page
    ) -> SearchResult:
        vector = bm25.query_vector(text)
        if vector is None:  # only stop words: nothing can match
            return SearchResult(hits=[])
        started = time.perf_counter()
        hits = await self._store.query_sparse(
            schema.store_name, vector, where, page.limit, page.offset, page.with_vector
        )
        return SearchResult(hits=canonical(hits), query_ms=(time.perf_counter() - started) * 1000)

    async def _hybrid(
        self,
        schema: Schema,
        hybrid: pb.Hybrid,
        where: Node | None,
        page: Page,
        time_left: float | None,
    ) -> SearchResult:
        alpha = hybrid.alpha if hybrid.HasField("alpha") else DEFAULT_ALPHA
        if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise InvalidArgument("hybrid.alpha must be in [0, 1]", field="hybrid.alpha")
        text = self._text(hybrid.text, "hybrid.text")
        given = list(hybrid.vector)
        if alpha > 0.0 and not given and not schema.embeds:
            raise InvalidArgument(
                f"collection {schema.name!r} has no vectorizer: give hybrid.vector",
                field="hybrid.vector",
                reason="NO_VECTORIZER",
            )
        if alpha < 1.0:
            _need_keyword_index(schema, "hybrid")
        vector = check_vector(given, schema, "hybrid.vector") if given else None
        embed_ms = 0.0
        if alpha > 0.0 and vector is None:
            vector, embed_ms = await self._embed(schema, text, "hybrid.text", time_left)
        depth = max(page.offset + page.limit, self._candidates)
        inner = Page(limit=depth, offset=0, with_vector=page.with_vector)
        started = time.perf_counter()
        dense_hits: list[FoundPoint] = []
        keyword_hits: list[FoundPoint] = []
        if alpha > 0.0 and alpha < 1.0:
            assert vector is not None
            dense_res, keyword_res = await asyncio.gather(
                self._dense(schema, vector, where, inner, 0.0),
                self._keyword(schema, text, where, inner),
            )
            dense_hits, keyword_hits = dense_res.hits, keyword_res.hits
        elif alpha > 0.0:
            assert vector is not None
            dense_hits = (await self._dense(schema, vector, where, inner, 0.0)).hits
        else:
            keyword_hits = (await self._keyword(schema, text, where, inner)).hits
        fused = fuse(dense_hits, keyword_hits, alpha, self._rrf_k)
        query_ms = (time.perf_counter() - started) * 1000
        return SearchResult(
            hits=fused[page.offset : page.offset + page.limit], embed_ms=embed_ms, query_ms=query_ms
        )


def _need_keyword_index(schema: Schema, field: str) -> None:
    if not schema.keyword:
        raise InvalidArgument(
            f"collection {schema.name!r} has no keyword index",
            field=field,
            reason="NO_KEYWORD_INDEX",
        )
