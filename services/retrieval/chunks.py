"""GetChunks: the chunks of one document between two positions, in document order.

A collection that declares ``chunking`` stores documents as chunks: ``document_property``
says which document a chunk belongs to, ``order_property`` its position. A range is turned
into our own filter (document equal, position within bounds), checked against the schema
like any filter, and read from the engine by scrolling; the engine's order is arbitrary, so
the chunks are sorted by position here.
"""

from __future__ import annotations

import asyncio
import math

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import struct_pb2

from services.common.errors import FailedPrecondition, InvalidArgument, MissingField, out_of_range
from services.common.values import (
    MAX_EXACT_INTEGER,
    check_chars,
    past_exact_integer,
    past_exact_integer_message,
)
from services.retrieval.filters import Node, build_filter
from services.retrieval.schema import Schema
from services.retrieval.search import QUERY_CHARS_SETTING
from services.retrieval.store import PROPS, FoundPoint, VectorStore

# The largest position a range may name: filters hold numbers as doubles (JSON numbers),
# which keep every integer up to 2^53 exact and no more.
MAX_POSITION = MAX_EXACT_INTEGER


def check_ranges(
    schema: Schema, request: pb.GetChunksRequest, max_ranges: int, max_document_chars: int
) -> pb.Chunking:
    """The request's ranges, checked; ``max_document_chars`` bounds a text document's id
    (MAX_QUERY_TEXT_CHARS: like a search's text it is a caller's key to look up, and had no
    bound of its own but the 4 MB request, all of it sent to the engine as a filter)."""
    chunking = schema.chunking
    if chunking is None:
        raise FailedPrecondition(
            f"collection {schema.name!r} declares no chunking (collection.chunking)",
            field="collection",
            reason="NO_CHUNKING",
        )
    if not request.ranges:
        raise MissingField("ranges is required", field="ranges")
    if len(request.ranges) > max_ranges:
        raise out_of_range(
            f"ranges holds {len(request.ranges)} entries, more than the limit of {max_ranges}",
            field="ranges",
            bound=max_ranges,
            setting="GENSEARCH_RETRIEVAL_MAX_LIMIT",
        )
    document_type = schema.types[chunking.document_property]
    # Each range is its own engine read and its chunks come back again in the reply: the
    # one document named MAX_LIMIT times was read MAX_LIMIT times for one answer.
    # Keyed by what the range reads, not its bytes: the same range spelled in other bytes
    # (an int document as -0.0, a field this service does not know) is a repeat too.
    seen: dict[tuple[object, ...], int] = {}
    for i, item in enumerate(request.ranges):
        where = f"ranges[{i}]"
        kind = item.document.WhichOneof("kind")
        if document_type == pb.DATA_TYPE_TEXT:
            ok = kind == "string_value" and bool(item.document.string_value)
            if ok:
                check_chars(
                    item.document.string_value,
                    f"{where}.document",
                    max_document_chars,
                    QUERY_CHARS_SETTING,
                )
        else:
            value = item.document.number_value
            ok = kind == "number_value" and math.isfinite(value) and value == int(value)
            if ok and past_exact_integer(value):
                # As every int property holds it (property_types.coerce_value, filters._scalar):
                # -2^63 itself was let through here, then named a filter field the request
                # never had; 2^53 + 1 arrived as 2^53 and read another document's chunks.
                raise InvalidArgument(
                    past_exact_integer_message(f"{where}.document"),
                    field=f"{where}.document",
                    reason="WRONG_TYPE",
                )
        if not ok:
            wanted = "a non-empty string" if document_type == pb.DATA_TYPE_TEXT else "an integer"
            raise InvalidArgument(
                f"{where}.document must be {wanted} (the type of {chunking.document_property!r})",
                field=f"{where}.document",
            )
        for bound in ("first", "last"):
            if item.HasField(bound) and abs(getattr(item, bound)) > MAX_POSITION:
                raise InvalidArgument(
                    f"{where}.{bound} must be within -{MAX_POSITION}..{MAX_POSITION} "
                    "(2^53, the largest integer a position is held exactly as)",
                    field=f"{where}.{bound}",
                    reason="OUT_OF_RANGE",
                )
        if item.HasField("first") and item.HasField("last") and item.first > item.last:
            raise InvalidArgument(
                f"{where}.first must not be greater than {where}.last", field=f"{where}.first"
            )
        document = (
            item.document.string_value
            if document_type == pb.DATA_TYPE_TEXT
            else int(item.document.number_value)
        )
        key = (
            document,
            item.first if item.HasField("first") else None,
            item.last if item.HasField("last") else None,
        )
        first = seen.setdefault(key, i)
        if first != i:
            raise InvalidArgument(
                f"{where} repeats ranges[{first}] (the same document and positions): give "
                "each range once",
                field=where,
                metadata={"first": f"ranges[{first}]"},
            )
    return chunking


def range_filter(chunking: pb.Chunking, item: pb.ChunkRange) -> pb.Filter:
    conditions = [
        pb.Filter(
            condition=pb.Condition(
                property=chunking.document_property,
                operator=pb.OPERATOR_EQUAL,
                value=item.document,
            )
        )
    ]
    bounds = (("first", pb.OPERATOR_GREATER_THAN_EQUAL), ("last", pb.OPERATOR_LESS_THAN_EQUAL))
    for name, operator in bounds:
        if item.HasField(name):
            conditions.append(
                pb.Filter(
                    condition=pb.Condition(
                        property=chunking.order_property,
                        operator=operator,
                        value=struct_pb2.Value(number_value=getattr(item, name)),
                    )
                )
            )
    return pb.Filter(all_of=pb.FilterGroup(filters=conditions))


async def read_ranges(
    store: VectorStore,
    schema: Schema,
    chunking: pb.Chunking,
    ranges: list[pb.ChunkRange],
    *,
    max_chunks: int,
    max_value_depth: int,
    max_value_chars: int,
) -> list[tuple[list[FoundPoint], bool]]:
    """Each range's chunks sorted by position, at most ``max_chunks`` (the first ones), and
    whether more matched."""
    wheres: list[Node] = [
        build_filter(
            range_filter(chunking, item),
            schema.types,
            max_value_depth=max_value_depth,
            max_value_chars=max_value_chars,
        )
        for item in ranges
    ]
    found = await asyncio.gather(
        *(store.scroll(schema.store_name, None, max_chunks + 1, where) for where in wheres)
    )
    order = chunking.order_property
    out: list[tuple[list[FoundPoint], bool]] = []
    for points, _ in found:
        points.sort(key=lambda p: (_position(p, order), p.id))
        out.append((points[:max_chunks], len(points) > max_chunks))
    return out


def _position(point: FoundPoint, order: str) -> float:
    value = point.payload.get(PROPS, {}).get(order)
    return float(value) if isinstance(value, int | float) else math.inf
