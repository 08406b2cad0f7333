"""Chunk-aware context: hits widened into passages of their documents before generation.

A collection that declares ``chunking`` (which property names a chunk's document, which
gives its position) lets ``Ask`` and ``GenerativeSearch`` replace each hit by a passage:
the hit's chunk with ``neighbors`` chunks on each side, or its whole document. How:

1. one ``GetChunks`` call to retrieval (tenant-scoped like every call) fetches, per hit,
   the chunks of its window;
2. the token budget (``max_tokens``, estimated like the Ask prompt guard) is filled nearest
   first: every hit's own chunk always stays, then the chunks closest to a hit, so what is
   left out is what lies farthest from any hit;
3. the kept chunks of one document merge into passages: two chunks next to each other in
   the document join when a hit's window holds both, so overlapping or touching windows
   become one passage and a gap left by the budget splits them;
4. passages are ordered by their best hit's rank; inside, chunks keep document order and
   their texts are joined (the overlap the importer repeats between neighbours is removed).

The prompt numbers passages, not hits: ``[n]`` names the n-th passage, the citation's ``id``
is its best-ranked hit and ``hit_ids`` every hit it holds. A hit without the chunking
properties, or placed past ``MAX_POSITION``, is its own passage (a whole collection without
chunking: FAILED_PRECONDITION); such a chunk is never another hit's neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.common.errors import FailedPrecondition, InvalidArgument, out_of_range
from services.common.tokens import estimate_tokens
from services.common.values import MAX_EXACT_INTEGER
from services.gateway.catalog import CollectionInfo
from services.gateway.clients import Caller, RetrievalClient
from services.gateway.prompting import ContextHit
from services.gateway.settings import GatewaySettings
from services.gateway.templates import is_empty, to_text

FIELD = "expand_context"
# Longest overlap looked for between two neighbouring chunks' texts (characters). Not a
# setting: it refuses nothing, it bounds the work of joining two chunks.
MAX_OVERLAP = 2000
MIN_OVERLAP = 8
# The widest position GetChunks takes (retrieval holds positions as doubles, exact to
# 2^53); a hit placed past it is its own passage, never a range retrieval refuses under a
# field (ranges[i].first) our caller never sent.
MAX_POSITION = MAX_EXACT_INTEGER


@dataclass
class Passage:
    # The best (lowest) rank of its hits: its place in the prompt.
    rank: int
    hit_ids: list[str]
    chunks: list[ret_pb.Hit]
    document: Any = None
    first: int = 0
    last: int = 0
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Expansion:
    """Passages in prompt order, and which passage holds each hit."""

    passages: list[Passage]
    of_hit: dict[str, int]

    def context_hits(self) -> list[ContextHit]:
        return [ContextHit(p.hit_ids[0], p.properties) for p in self.passages]

    def hit_ids(self, number: int) -> list[str]:
        """The hits of passage ``number`` (1-based, as cited)."""
        return list(self.passages[number - 1].hit_ids)

    def hit_properties(self, hit_id: str) -> Mapping[str, Any] | None:
        index = self.of_hit.get(hit_id)
        return None if index is None else self.passages[index].properties

    def protos(self, count: int | None = None) -> list[gw_pb.ContextPassage]:
        out = []
        for number, passage in enumerate(self.passages[:count], start=1):
            message = gw_pb.ContextPassage(
                number=number,
                hit_ids=passage.hit_ids,
                chunk_ids=[c.id for c in passage.chunks],
                first=passage.first,
                last=passage.last,
            )
            if passage.document is not None:
                message.document.CopyFrom(_value(passage.document))
            out.append(message)
        return out


def check(expansion: gw_pb.ContextExpansion, settings: GatewaySettings) -> int:
    """The checked block's token budget (fields named ``expand_context.*``)."""
    s = settings
    if not 0 <= expansion.neighbors <= s.max_expansion_neighbors:
        raise out_of_range(
            f"{FIELD}.neighbors must be in 0..{s.max_expansion_neighbors}",
            field=f"{FIELD}.neighbors",
            bound=s.max_expansion_neighbors,
            setting="GENSEARCH_GATEWAY_MAX_EXPANSION_NEIGHBORS",
        )
    # Each field's own range before what the block lacks: ``{max_tokens: -1}`` alone was
    # refused as a missing ``neighbors``, the bad value not named.
    if expansion.HasField("max_tokens") and not (
        1 <= expansion.max_tokens <= s.max_expansion_tokens
    ):
        raise out_of_range(
            f"{FIELD}.max_tokens must be in 1..{s.max_expansion_tokens}",
            field=f"{FIELD}.max_tokens",
            bound=s.max_expansion_tokens,
            setting="GENSEARCH_GATEWAY_MAX_EXPANSION_TOKENS",
        )
    if expansion.neighbors == 0 and not expansion.whole_document:
        raise InvalidArgument(
            f"{FIELD}: set neighbors (chunks on each side of a hit) or whole_document",
            field=f"{FIELD}.neighbors",
        )
    if expansion.neighbors and expansion.whole_document:
        raise InvalidArgument(
            f"{FIELD}: give neighbors or whole_document, not both",
            field=f"{FIELD}.whole_document",
        )
    return expansion.max_tokens if expansion.HasField("max_tokens") else s.expansion_tokens


def budget_for(request: Any, info: CollectionInfo, settings: GatewaySettings) -> int | None:
    """The token budget of a request's ``expand_context`` (checked, against a collection
    that declares chunking), or None when it asks for none."""
    if not request.HasField("expand_context"):
        return None
    budget = check(request.expand_context, settings)
    chunking_of(info)
    return budget


def annotate(citations: Sequence[gw_pb.Citation], expansion: Expansion) -> None:
    """Each citation lists every hit of the passage it cites."""
    for citation in citations:
        citation.hit_ids.extend(expansion.hit_ids(citation.number))


def chunking_of(info: CollectionInfo) -> ret_pb.Chunking:
    if not info.collection.HasField("chunking"):
        raise FailedPrecondition(
            f"{FIELD}: collection {info.collection.name!r} declares no chunking "
            "(collection.chunking names its document and order properties)",
            field=FIELD,
            reason="NO_CHUNKING",
        )
    return info.collection.chunking


@dataclass
class _Window:
    rank: int
    hit_id: str
    position: float
    low: float
    high: float

    def holds(self, position: float) -> bool:
        return self.low <= position <= self.high


async def expand(
    hits: Sequence[ret_pb.Hit],
    info: CollectionInfo,
    expansion: gw_pb.ContextExpansion,
    *,
    budget: int,
    text_fields: Sequence[str],
    retrieval: RetrievalClient,
    caller: Caller,
    timeout: float | None,
) -> Expansion:
    """``hits`` (in rank order) as passages; ``text_fields`` are the properties whose
    text counts against ``budget``."""
    chunking = chunking_of(info)
    doc_prop, order_prop = chunking.document_property, chunking.order_property
    located: list[tuple[int, ret_pb.Hit, Any, float]] = []
    alone: list[tuple[int, ret_pb.Hit]] = []
    for rank, hit in enumerate(hits):
        props = hit.properties.fields
        document = _plain(props[doc_prop]) if doc_prop in props else None
        position = _placed(hit, order_prop)
        if is_empty(document) or position is None:
            alone.append((rank, hit))
        else:
            located.append((rank, hit, document, position))

    k = expansion.neighbors
    # One range per distinct window (hits of one document share a whole-document range).
    request = ret_pb.GetChunksRequest(collection=info.collection.name)
    range_of: dict[tuple[str, int | None, int | None], int] = {}
    hit_ranges: list[int] = []  # per located hit, the index of its range in the request
    for _, _, document, position in located:
        first, last = _bounds(position, k, expansion.whole_document)
        range_key = (_key(document), first, last)
        if range_key not in range_of:
            range_of[range_key] = len(request.ranges)
            item = request.ranges.add(document=_value(document))
            if first is not None and last is not None:
                item.first, item.last = first, last
        hit_ranges.append(range_of[range_key])
    fetched: list[ret_pb.ChunkList] = []
    if located:
        fetched = list((await retrieval.get_chunks(request, caller, timeout)).ranges)

    # Per document: every chunk seen (by id) and the windows of its hits.
    docs: dict[str, tuple[Any, dict[str, ret_pb.Hit], list[_Window]]] = {}
    for (rank, hit, document, position), index in zip(located, hit_ranges, strict=True):
        chunk_list = fetched[index]
        _, chunks, windows = docs.setdefault(_key(document), (document, {}, []))
        for chunk in chunk_list.chunks:
            # A whole document's range has no bounds, so it also brings the document's
            # chunks stored without a position (the order property is not required): they
            # have no place among its chunks (their order and passage bounds were infinite,
            # and an Ask or GenerativeSearch failed INTERNAL), so they stay out, as from any
            # window of neighbours.
            if _placed(chunk, order_prop) is not None:
                chunks.setdefault(chunk.id, chunk)
        chunks.setdefault(hit.id, hit)
        low, high = (
            (-math.inf, math.inf) if expansion.whole_document else (position - k, position + k)
        )
        windows.append(_Window(rank, hit.id, position, low, high))

    kept = _fill(docs, order_prop, text_fields, budget)
    passages: list[Passage] = [
        Passage(rank=rank, hit_ids=[hit.id], chunks=[hit], properties=_props(hit))
        for rank, hit in alone
    ]
    for key, (document, chunks, windows) in docs.items():
        ordered = sorted(chunks.values(), key=lambda c: (_position(c, order_prop), c.id))
        passages.extend(_runs(document, ordered, kept[key], windows, order_prop))
    passages.sort(key=lambda p: p.rank)
    of_hit = {hit_id: i for i, p in enumerate(passages) for hit_id in p.hit_ids}
    return Expansion(passages, of_hit)


def _fill(
    docs: Mapping[str, tuple[Any, dict[str, ret_pb.Hit], list[_Window]]],
    order_prop: str,
    text_fields: Sequence[str],
    budget: int,
) -> dict[str, set[str]]:
    """Ids of the chunks kept per document: every hit's chunk, then the nearest to a hit
    while the budget lasts."""
    kept: dict[str, set[str]] = {key: set() for key in docs}
    used = 0
    candidates: list[tuple[float, int, float, str, str, int]] = []
    for key, (_, chunks, windows) in docs.items():
        hit_ids = {w.hit_id for w in windows}
        for chunk in chunks.values():
            cost = _cost(chunk, text_fields)
            if chunk.id in hit_ids:
                kept[key].add(chunk.id)
                used += cost
                continue
            position = _position(chunk, order_prop)
            near = [(abs(position - w.position), w.rank) for w in windows if w.holds(position)]
            if near:
                distance, rank = min(near)
                candidates.append((distance, rank, position, key, chunk.id, cost))
    for _, _, _, key, chunk_id, cost in sorted(candidates):
        if used + cost > budget:
            break
        kept[key].add(chunk_id)
        used += cost
    return kept


def _runs(
    document: Any,
    ordered: list[ret_pb.Hit],
    kept: set[str],
    windows: list[_Window],
    order_prop: str,
) -> list[Passage]:
    """Kept chunks in document order, cut wherever a chunk was left out or no window
    spans two neighbours."""
    runs: list[list[ret_pb.Hit]] = []
    previous: ret_pb.Hit | None = None
    for chunk in ordered:
        if chunk.id not in kept:
            previous = None
            continue
        position = _position(chunk, order_prop)
        joined = previous is not None and any(
            w.holds(position) and w.holds(_position(previous, order_prop)) for w in windows
        )
        if joined:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
        previous = chunk
    out = []
    for run in runs:
        ids = {c.id for c in run}
        inside = sorted((w for w in windows if w.hit_id in ids), key=lambda w: w.rank)
        if not inside:
            continue  # cannot happen: every run grows from a hit's window
        out.append(
            Passage(
                rank=inside[0].rank,
                hit_ids=list(dict.fromkeys(w.hit_id for w in inside)),
                chunks=run,
                document=document,
                first=int(_position(run[0], order_prop)),
                last=int(_position(run[-1], order_prop)),
                properties=merge([_props(c) for c in run]),
            )
        )
    return out


def merge(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One passage's properties from its chunks (document order): texts joined without
    the overlap neighbours share, a value all chunks share once, else the first chunk's."""
    out: dict[str, Any] = {}
    names = list(dict.fromkeys(name for chunk in chunks for name in chunk))
    for name in names:
        values = [c[name] for c in chunks if not is_empty(c.get(name))]
        if not values:
            continue
        if all(v == values[0] for v in values):
            out[name] = values[0]
        elif all(isinstance(v, str) for v in values):
            text = values[0]
            for value in values[1:]:
                text = join_overlapping(text, value)
            out[name] = text
        elif all(isinstance(v, list) for v in values):
            out[name] = list(dict.fromkeys(to_text(x) for v in values for x in v))
        else:
            out[name] = values[0]
    return out


def join_overlapping(left: str, right: str) -> str:
    """``left`` then ``right`` without the longest stretch ``right`` repeats from the end
    of ``left`` (at least MIN_OVERLAP characters, so chance matches do not count)."""
    for size in range(min(len(left), len(right), MAX_OVERLAP), MIN_OVERLAP - 1, -1):
        if left.endswith(right[:size]):
            return left + right[size:]
    return f"{left}\n{right}"


def _cost(chunk: ret_pb.Hit, text_fields: Sequence[str]) -> int:
    props = chunk.properties.fields
    names = list(dict.fromkeys(text_fields)) or list(props)  # a repeated name costs once
    return estimate_tokens(" ".join(to_text(_plain(props[n])) for n in names if n in props))


def _props(hit: ret_pb.Hit) -> dict[str, Any]:
    return json_format.MessageToDict(hit.properties)


def _plain(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


def _value(plain: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(plain, value)
    return value


def _bounds(position: float, k: int, whole: bool) -> tuple[int | None, int | None]:
    if whole:
        return None, None
    return max(int(position) - k, -MAX_POSITION), min(int(position) + k, MAX_POSITION)


def _key(document: Any) -> str:
    return to_text(document)


def _placed(chunk: ret_pb.Hit, order_prop: str) -> float | None:
    """``chunk``'s position when it has one GetChunks can take: a number within
    ±``MAX_POSITION`` (``not <=``: NaN and infinities are no position either)."""
    value = chunk.properties.fields.get(order_prop)
    if value is None or value.WhichOneof("kind") != "number_value":
        return None
    return value.number_value if abs(value.number_value) <= MAX_POSITION else None


def _position(chunk: ret_pb.Hit, order_prop: str) -> float:
    value = chunk.properties.fields.get(order_prop)
    return value.number_value if value is not None else math.inf
