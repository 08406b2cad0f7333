"""Date filters are exact to the microsecond over the whole range a date may take (years 1
to 9999). They compared a float copy of epoch seconds, whose step passes a microsecond
after 2^33 s (year 2242): two dates a microsecond apart became one number, so EQUAL
matched both and GREATER_THAN neither. They now compare the stored RFC 3339 value itself
as the engine's datetime (microseconds in an int64)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import qdrant_edge as qe
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.property_types import format_date
from services.retrieval.edge_store import create_indexes, to_edge_filter
from services.retrieval.filters import build_filter
from services.retrieval.schema import Schema, prepare_object
from tests.retrieval.conftest import (
    EQ,
    GT,
    GTE,
    LT,
    LTE,
    NE,
    MakeRetrieval,
    cond,
    obj,
    props,
)

MICRO = timedelta(microseconds=1)
COLLECTION = pb.Collection(
    name="Dates",
    properties=props(("date", pb.DATA_TYPE_DATE)),
    vectorizer=pb.Vectorizer(
        kind=pb.VECTORIZER_KIND_NONE, dimensions=2, distance=pb.DISTANCE_COSINE
    ),
)
SCHEMA = Schema(COLLECTION)
# A date and the microsecond after it both fall in years 1..9999.
DATES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999998)
).map(lambda d: d.replace(tzinfo=UTC))


@pytest.fixture(scope="module", params=[False, True], ids=["scanned", "indexed"])
def shard(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[qe.EdgeShard]:
    """A real qdrant-edge shard, with the collection's payload indexes or without (a
    collection made before they existed answers by reading payloads)."""
    path: Path = tmp_path_factory.mktemp("dates") / "shard"
    vectors = {"dense": qe.EdgeVectorParams(size=2, distance=qe.Distance.Cosine)}
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=vectors))
    if request.param:
        assert create_indexes(shard, SCHEMA.to_json())
    yield shard
    shard.close()


def _count(shard: qe.EdgeShard, op: int, value: str) -> int:
    node = build_filter(cond("date", op, value), SCHEMA.types)
    return int(shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(node))))


@settings(max_examples=60, deadline=None)
@given(when=DATES)
def test_dates_a_microsecond_apart_are_told_apart_everywhere(
    shard: qe.EdgeShard, when: datetime
) -> None:
    shard.update(qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[])))
    points = []
    for i, date in enumerate((when, when + MICRO)):
        prepared = prepare_object(SCHEMA, i, obj({"date": format_date(date)}, vector=[1.0, 0.0]))
        points.append(qe.Point(str(uuid.UUID(int=i + 1)), {"dense": [1.0, 0.0]}, prepared.payload))
    shard.update(qe.UpdateOperation.upsert_points(points))
    first, second = format_date(when), format_date(when + MICRO)
    assert datetime.fromisoformat(first) == when  # the stored value round-trips
    assert _count(shard, EQ, first) == 1
    assert _count(shard, EQ, second) == 1
    assert _count(shard, NE, first) == 1
    assert _count(shard, GT, first) == 1
    assert _count(shard, GTE, first) == 2
    assert _count(shard, LT, second) == 1
    assert _count(shard, LTE, first) == 1


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_late_dates_filter_exactly_through_the_api(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    harness = await make_retrieval(adapter)
    stub = harness.stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=COLLECTION))
    dates = [
        "2300-01-01T00:00:00.000001Z",
        "2300-01-01T00:00:00.000002Z",
        "9999-12-31T23:59:59.999998Z",
        "9999-12-31T23:59:59.999999Z",
    ]
    objects = [obj({"date": d}, vector=[1.0, 0.0]) for d in dates]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Dates", objects=objects))
    assert not resp.errors
    for i, date in enumerate(dates):
        counted = await stub.CountObjects(
            pb.CountObjectsRequest(collection="Dates", filter=cond("date", EQ, date))
        )
        assert counted.count == 1, date
        later = await stub.CountObjects(
            pb.CountObjectsRequest(collection="Dates", filter=cond("date", GT, date))
        )
        assert later.count == len(dates) - i - 1, date
