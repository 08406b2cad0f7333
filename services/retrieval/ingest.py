"""Writing objects: check each against the schema, embed, make BM25 vectors, store.

Embedding comes first and the write last, so a failing embeddings endpoint leaves nothing of
the batch half written. Invalid objects are reported one by one; the rest of the batch lands.
An object whose text the embeddings endpoint refuses (400, 413, 422: too large or too long
for the model) is invalid too: a refused request is split in halves until the refused
objects stand alone (``_embed_isolating``), each of them gets its ``ObjectError``, and the
rest lands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import ServiceError, object_error
from services.common.property_types import ObjectInvalid
from services.common.values import DEFAULT_MAX_DEPTH
from services.retrieval import bm25
from services.retrieval.embedders import Embedder, Embedders, EmbeddingInputRejected
from services.retrieval.schema import PreparedObject, Schema, prepare_object
from services.retrieval.settings import MAX_ISOLATION_CALLS
from services.retrieval.store import PROPS, StoredPoint, VectorStore
from services.retrieval.value_count import PER_OBJECT_SETTING

# The most embedding calls one batch may spend finding which of its objects an endpoint
# refused (bisection: about 2 x log2(batch) calls per refused object, 20 for one in 1000).
# Past it the whole call is INVALID_ARGUMENT: an endpoint refusing every text (a model it
# does not serve, answered 400) must not be asked once per object. The setting
# GENSEARCH_RETRIEVAL_MAX_ISOLATION_CALLS (default MAX_ISOLATION_CALLS).
ISOLATION_SETTING = "GENSEARCH_RETRIEVAL_MAX_ISOLATION_CALLS"


@dataclass
class BatchResult:
    ids: list[str] = field(default_factory=list)
    errors: list[pb.ObjectError] = field(default_factory=list)


def object_text(props: dict[str, object], names: Sequence[str]) -> str:
    """The text of the listed properties, in schema order (arrays joined element by element)."""
    parts: list[str] = []
    for name in names:
        value = props.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(str(v) for v in value)
    return "\n".join(p for p in parts if p)


async def write_batch(
    schema: Schema,
    objects: Sequence[pb.DataObject],
    store: VectorStore,
    embedders: Embedders,
    *,
    first_index: int = 0,
    too_many_values: Mapping[int, int] | None = None,
    max_values_per_object: int = 0,
    max_value_depth: int = DEFAULT_MAX_DEPTH,
    max_isolation_calls: int = MAX_ISOLATION_CALLS,
    max_document_chars: int | None = None,
    before_write: Callable[[], Awaitable[None]] | None = None,
    check_room: Callable[[list[str]], Awaitable[None]] | None = None,
    time_left: Callable[[], float | None],
) -> BatchResult:
    """``max_document_chars``: the longest key a chunked collection's document property may
    hold (``prepare_object``). ``before_write``: awaited just before the write (after
    embedding, the slow part), so whatever it checks still holds when the points are sent;
    its error fails the batch with nothing of it written. ``check_room``: awaited with the
    ids the batch would write (its valid objects) before they are embedded, so a batch
    refused for room costs no embedding; its error fails the batch the same way.
    ``too_many_values``: the positions in ``objects`` of those holding more than
    ``max_values_per_object`` property values (``value_count.count_batch``), with their
    counts as far as read: each is refused on its own, unread.
    ``time_left``: the seconds left before the RPC's deadline (None: none; the servicer's
    ``context.time_remaining``), asked at each embeddings call, which ends within it
    (``Embedder.embed``)."""
    result = BatchResult()
    ready: list[PreparedObject] = []
    for i, obj in enumerate(objects):
        if too_many_values and i in too_many_values:
            result.errors.append(
                object_error(
                    first_index + i,
                    obj.id,
                    "properties",
                    f"holds more than {max_values_per_object} values ({PER_OBJECT_SETTING}: "
                    "each property's value, list element and nested field counts one); "
                    "it was not written",
                )
            )
            continue
        try:
            ready.append(
                prepare_object(schema, first_index + i, obj, max_value_depth, max_document_chars)
            )
        except ObjectInvalid as err:
            result.errors.append(object_error(first_index + i, obj.id, err.field, err.message))
    sources = schema.source_properties()
    to_embed: list[tuple[PreparedObject, str]] = []
    kept: list[PreparedObject] = []
    for prepared in ready:
        if prepared.vector is None:
            text = object_text(prepared.payload[PROPS], sources)
            if not text:
                result.errors.append(
                    object_error(
                        prepared.index,
                        prepared.id,
                        "properties",
                        "no text to embed in "
                        + ", ".join(sources or ["(no text property)"])
                        + " and no vector given",
                    )
                )
                continue
            to_embed.append((prepared, text))
        kept.append(prepared)
    if kept and check_room is not None:
        await check_room([prepared.id for prepared in kept])
    if to_embed:
        embedder = embedders.for_collection(schema)
        budget = [max_isolation_calls]
        refused: list[tuple[PreparedObject, EmbeddingInputRejected]] = []
        try:
            await _embed_isolating(embedder, to_embed, refused, budget, time_left)
        except EmbeddingInputRejected as err:
            refusal = err.for_field(
                "objects",
                "the texts of this batch",
                f"more of them than {max_isolation_calls} calls ({ISOLATION_SETTING}) could "
                "single out, so nothing was written: shorten the texts, or check the "
                "collection's vectorizer model",
            )
            refusal.metadata.update(max=str(max_isolation_calls), setting=ISOLATION_SETTING)
            raise refusal from None
        except ServiceError as err:
            # The embedder serves Search too, so its errors leave out what was written;
            # here nothing of the batch was (the write comes after the embedding).
            err.message += "; nothing was written"
            raise
        if refused:
            dropped = {id(prepared) for prepared, _ in refused}
            kept = [prepared for prepared in kept if id(prepared) not in dropped]
            for prepared, why in refused:
                result.errors.append(_refused_error(prepared, why, sources))
    if not kept:
        result.errors.sort(key=lambda e: e.index)
        return result
    keyword_fields = schema.text_properties() if schema.keyword else []
    points = await asyncio.to_thread(_points, kept, keyword_fields)
    if before_write is not None:
        await before_write()
    await store.upsert(schema.store_name, points)
    result.ids = [p.id for p in kept]
    result.errors.sort(key=lambda e: e.index)
    return result


async def _embed_isolating(
    embedder: Embedder,
    items: list[tuple[PreparedObject, str]],
    refused: list[tuple[PreparedObject, EmbeddingInputRejected]],
    budget: list[int],
    time_left: Callable[[], float | None],
) -> None:
    """Embeds ``items`` into their objects; the objects whose text the endpoint refuses
    alone go to ``refused``. A refused request of several texts is asked again in halves,
    within ``budget`` calls (past it the refusal is raised)."""
    try:
        vectors = await embedder.embed([text for _, text in items], time_left=time_left())
    except EmbeddingInputRejected as err:
        if len(items) == 1:
            refused.append((items[0][0], err))
            return
        if budget[0] < 2:
            raise
        budget[0] -= 2
        half = len(items) // 2
        await _embed_isolating(embedder, items[:half], refused, budget, time_left)
        await _embed_isolating(embedder, items[half:], refused, budget, time_left)
        return
    for (prepared, _), vector in zip(items, vectors, strict=True):
        prepared.vector = vector


def _refused_error(
    prepared: PreparedObject, err: EmbeddingInputRejected, sources: Sequence[str]
) -> pb.ObjectError:
    """The ObjectError of an object whose text the endpoint refused, naming the property
    that held it (the largest, when several did: a 413 is the likeliest cause)."""
    props = prepared.payload[PROPS]
    sizes = {name: len(object_text(props, [name])) for name in sources}
    held = [name for name, size in sizes.items() if size]
    largest = max(held, key=lambda name: sizes[name]) if held else ""
    return object_error(
        prepared.index,
        prepared.id,
        f"properties.{largest}" if largest else "properties",
        f"the embeddings endpoint refused this object's text ({err.why}), made of "
        + ", ".join(f"{name} ({sizes[name]} characters)" for name in held)
        + "; it was not written: shorten it",
    )


def _points(kept: list[PreparedObject], keyword_fields: list[str]) -> list[StoredPoint]:
    points = []
    for prepared in kept:
        sparse = None
        if keyword_fields:
            sparse = bm25.document_vector(object_text(prepared.payload[PROPS], keyword_fields))
        points.append(
            StoredPoint(
                id=prepared.id, payload=prepared.payload, dense=prepared.vector, sparse=sparse
            )
        )
    return points
