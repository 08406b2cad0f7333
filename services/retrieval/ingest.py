"""Writing objects: check each against the schema, embed, make BM25 vectors, store.

Embedding comes first and the write last, so a failing embeddings endpoint leaves nothing of
the batch half written. Invalid objects are reported one by one; the rest of the batch lands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.values import DEFAULT_MAX_DEPTH
from services.retrieval import bm25
from services.retrieval.embedders import Embedders
from services.retrieval.schema import ObjectInvalid, PreparedObject, Schema, prepare_object
from services.retrieval.store import PROPS, StoredPoint, VectorStore


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
    max_value_depth: int = DEFAULT_MAX_DEPTH,
    before_write: Callable[[], Awaitable[None]] | None = None,
) -> BatchResult:
    """``before_write``: awaited just before the write (after embedding, the slow part),
    so whatever it checks still holds when the points are sent; its error fails the batch
    with nothing of it written."""
    result = BatchResult()
    ready: list[PreparedObject] = []
    for i, obj in enumerate(objects):
        try:
            ready.append(prepare_object(schema, first_index + i, obj, max_value_depth))
        except ObjectInvalid as err:
            result.errors.append(
                pb.ObjectError(
                    index=first_index + i, id=obj.id, field=err.field, message=err.message
                )
            )
    sources = schema.source_properties()
    to_embed: list[tuple[PreparedObject, str]] = []
    kept: list[PreparedObject] = []
    for prepared in ready:
        if prepared.vector is None:
            text = object_text(prepared.payload[PROPS], sources)
            if not text:
                result.errors.append(
                    pb.ObjectError(
                        index=prepared.index,
                        id=prepared.id,
                        field="properties",
                        message="no text to embed in "
                        + ", ".join(sources or ["(no text property)"])
                        + " and no vector given",
                    )
                )
                continue
            to_embed.append((prepared, text))
        kept.append(prepared)
    if to_embed:
        vectors = await embedders.for_collection(schema).embed([text for _, text in to_embed])
        for (prepared, _), vector in zip(to_embed, vectors, strict=True):
            prepared.vector = vector
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
