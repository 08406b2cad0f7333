"""UpsertObjects, ImportObjects, GetObject, BatchGetObjects, DeleteObjects, CountObjects and
their errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.retrieval.schema import Schema
from services.retrieval.store import PROPS, StoredPoint
from services.retrieval.value_count import count_values
from tests.retrieval.conftest import (
    Retrieval,
    cond,
    expect_error,
    obj,
    vector_collection,
)
from tests.retrieval.data import DIMS, article_objects, articles
from tests.support.rpc import error_info

V = [0.1] * DIMS


@pytest.fixture
async def stub(retrieval: Retrieval) -> Any:
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    return retrieval.stub


async def count(stub: Any, flt: pb.Filter | None = None) -> int:
    request = pb.CountObjectsRequest(collection="Articles", filter=flt)
    return (await stub.CountObjects(request)).count


async def test_upsert_get_replace(stub: Any) -> None:
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=article_objects())
    )
    assert resp.ids == [a["id"] for a in articles()]
    assert await count(stub) == 12
    first = articles()[0]
    got = (await stub.GetObject(pb.GetObjectRequest(collection="Articles", id=first["id"]))).object
    assert got.id == first["id"]
    assert dict(got.properties)["title"] == first["props"]["title"]
    assert list(got.properties["tags"]) == first["props"]["tags"]
    assert got.properties["year"] == first["props"]["year"]
    assert not got.vector
    with_vector = await stub.GetObject(
        pb.GetObjectRequest(collection="Articles", id=first["id"].upper(), include_vector=True)
    )
    assert list(with_vector.object.vector) == pytest.approx(first["vector"], abs=1e-6)
    # Same id again: replaced, not duplicated.
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Articles", objects=[obj({"title": "new"}, id=first["id"], vector=V)]
        )
    )
    assert await count(stub) == 12
    got = (await stub.GetObject(pb.GetObjectRequest(collection="Articles", id=first["id"]))).object
    assert dict(got.properties) == {"title": "new"}


async def test_ids_generated_and_dates_normalized(stub: Any) -> None:
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Articles",
            objects=[obj({"date": "2024-05-01T14:30:00+02:00", "year": 2024.0}, vector=V)],
        )
    )
    [new_id] = resp.ids
    assert uuid.UUID(new_id).version == 4
    got = (await stub.GetObject(pb.GetObjectRequest(collection="Articles", id=new_id))).object
    assert got.properties["date"] == "2024-05-01T12:30:00Z"


# RFC 3339 date-times (section 5.6) and what each is stored as (UTC, "Z").
RFC3339_DATES = {
    "2024-05-01T12:00:00Z": "2024-05-01T12:00:00Z",
    "2024-05-01t12:00:00z": "2024-05-01T12:00:00Z",  # RFC 3339 allows lower case
    "2024-05-01T12:00:00.5Z": "2024-05-01T12:00:00.500000Z",
    "2024-05-01T12:00:00.123456789+02:00": "2024-05-01T10:00:00.123456Z",
    "2024-05-01T12:00:00-00:00": "2024-05-01T12:00:00Z",
    "2024-05-01T00:30:00+23:59": "2024-04-30T00:31:00Z",
}
# What datetime.fromisoformat reads but RFC 3339 does not have: ISO 8601 week dates,
# compact and reduced forms, "," fractions, other offset spellings.
NOT_RFC3339_DATES = [
    "2024-W18-3T12:00:00Z",
    "2024W183T12:00:00Z",
    "20240501T120000Z",
    "2024-05-01T1200Z",
    "2024-05-01T12:00Z",
    "2024-05-01T12Z",
    "2024-05-01T12:00:00,5Z",
    "2024-05-01T12:00:00.Z",
    "2024-05-01T12:00:00+0200",
    "2024-05-01T12:00:00+02",
    "2024-05-01T12:00:00+02:00:30",
    "2024-05-01T12:00:00+01:60",
    "2024-05-01T12:00:00 Z",
    "2024-05-01T12:00:00Z\n",
    "2024-122T12:00:00Z",  # ordinal date
    "20240501",
    "2024-W18-3",
    "2024-05-01",
]


async def test_rfc3339_dates_are_stored_in_utc(stub: Any) -> None:
    objects = [obj({"date": value}, vector=V) for value in RFC3339_DATES]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Articles", objects=objects))
    assert not resp.errors
    got = await stub.BatchGetObjects(pb.BatchGetObjectsRequest(collection="Articles", ids=resp.ids))
    stored = {o.id: o.properties["date"] for o in got.objects}
    assert [stored[i] for i in resp.ids] == list(RFC3339_DATES.values())


async def test_dates_in_other_iso_8601_forms_are_refused(stub: Any) -> None:
    # fromisoformat read them all (a week date was stored as its calendar date).
    objects = [obj({"date": value}, vector=V) for value in NOT_RFC3339_DATES]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Articles", objects=objects))
    assert not resp.ids
    assert [(e.index, e.field) for e in resp.errors] == [
        (i, "properties.date") for i in range(len(NOT_RFC3339_DATES))
    ]
    assert all("RFC 3339" in e.message for e in resp.errors)
    for value in NOT_RFC3339_DATES:
        flt = cond("date", pb.OPERATOR_LESS_THAN, value)
        await expect_error(
            stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.condition.value",
        )


async def test_invalid_objects_reported_rest_lands(stub: Any) -> None:
    good = articles()[:2]
    objects = [
        obj(good[0]["props"], id=good[0]["id"], vector=good[0]["vector"]),
        obj({"colour": "red"}, vector=V),  # unknown property
        obj({"year": "2020"}, vector=V),  # wrong type
        obj({"year": 2020.5}, vector=V),  # not an integer
        obj({"tags": ["a", 1]}, vector=V),  # not all strings
        obj({"date": "May 1st"}, vector=V),
        # fromisoformat reads up to the NUL only: the rest must not be dropped unseen.
        obj({"date": "2024-05-01T12:00:00Z\x00; and more"}, vector=V),
        # In year 0 in UTC, where dates are stored: failed the whole batch with INTERNAL.
        obj({"date": "0001-01-01T00:00:00+01:00"}, vector=V),
        obj({"published": "yes"}, vector=V),
        obj({"title": "x"}, id="not-a-uuid", vector=V),
        obj({"title": "x"}, vector=[1.0, 2.0]),  # dimension mismatch
        obj({"title": "x"}),  # no vector, no vectorizer
        obj(good[1]["props"], id=good[1]["id"], vector=good[1]["vector"]),
    ]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Articles", objects=objects))
    assert resp.ids == [good[0]["id"], good[1]["id"]]
    assert [(e.index, e.field) for e in resp.errors] == [
        (1, "properties.colour"),
        (2, "properties.year"),
        (3, "properties.year"),
        (4, "properties.tags[1]"),  # the element that is not text, not the list
        (5, "properties.date"),
        (6, "properties.date"),
        (7, "properties.date"),
        (8, "properties.published"),
        (9, "id"),
        (10, "vector"),
        (11, "vector"),
    ]
    assert all(e.message for e in resp.errors)
    assert "year 1" in resp.errors[6].message
    # Not "expected text array, got a list": a list it is, its element 1 is not text.
    assert resp.errors[3].message == "expected text, got the number 1.0"
    assert resp.errors[8].id == "not-a-uuid"
    assert await count(stub) == 2


async def test_oversized_batch_writes_nothing(make_retrieval: Any) -> None:
    harness = await make_retrieval(max_batch_size=5)
    stub = harness.stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    err = await expect_error(
        stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=article_objects()[:6])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "objects",
    )
    assert "5" in (err.details() or "")
    bound = {"max": "5", "setting": "GENSEARCH_RETRIEVAL_MAX_BATCH_SIZE"}
    assert bound.items() <= dict(error_info(err).metadata).items()
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 0
    err = await expect_error(
        stub.DeleteObjects(
            pb.DeleteObjectsRequest(collection="A", ids=[str(uuid.uuid4()) for _ in range(6)])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ids",
    )
    assert bound.items() <= dict(error_info(err).metadata).items()

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=article_objects()[:4])
        yield pb.ImportObjectsRequest(objects=article_objects()[4:10])  # 6 > 5

    err = await expect_error(
        stub.ImportObjects(stream()), grpc.StatusCode.INVALID_ARGUMENT, "objects"
    )
    # The first message landed, and the error says so.
    assert error_info(err).metadata["imported_count"] == "4"
    assert bound.items() <= dict(error_info(err).metadata).items()
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 4


async def test_a_failed_import_says_which_objects_earlier_messages_rejected(
    make_retrieval: Any,
) -> None:
    # The ObjectErrors of earlier messages die with the answer: the status said how many
    # objects were lost (received - imported), never which.
    stub = (await make_retrieval(max_batch_size=50)).stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    good = article_objects()
    wrong = obj({"title": "x"}, vector=[1.0])  # wrong dimensions

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=[good[0], wrong, good[1], wrong])
        yield pb.ImportObjectsRequest(objects=[wrong, good[2]])
        yield pb.ImportObjectsRequest(objects=good[:1] * 51)  # over max_batch_size

    err = await expect_error(
        stub.ImportObjects(stream()), grpc.StatusCode.INVALID_ARGUMENT, "objects"
    )
    info = error_info(err)
    assert (info.metadata["received_count"], info.metadata["imported_count"]) == ("6", "3")
    assert info.metadata["rejected_indexes"] == "1,3,4"

    async def many_rejected() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=[wrong] * 50)
        yield pb.ImportObjectsRequest(objects=[wrong] * 50)
        yield pb.ImportObjectsRequest(objects=good[:1] * 51)

    err = await expect_error(
        stub.ImportObjects(many_rejected()), grpc.StatusCode.INVALID_ARGUMENT, "objects"
    )
    listed = error_info(err).metadata["rejected_indexes"]
    assert listed.startswith("0,1,2,") and listed.endswith(",…") and len(listed) <= 256


async def test_an_import_lists_at_most_max_import_errors_rejections(make_retrieval: Any) -> None:
    # A stream has no length limit: every rejection listed grew the answer past a client's
    # 4 MiB receive limit. The first ones are listed; the count covers all of them.
    stub = (await make_retrieval(max_batch_size=50, max_import_errors=3)).stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    good = article_objects()
    wrong = obj({"title": "x"}, vector=[1.0])  # wrong dimensions

    async def stream(*batches: list[pb.DataObject]) -> AsyncIterator[pb.ImportObjectsRequest]:
        for batch in batches:
            yield pb.ImportObjectsRequest(collection="A", objects=batch)

    answer = await stub.ImportObjects(stream([wrong, good[0], wrong], [wrong, wrong, good[1]]))
    assert (answer.received_count, answer.imported_count) == (6, 2)
    assert [e.index for e in answer.errors] == [0, 2, 3]
    assert answer.errors_truncated
    answer = await stub.ImportObjects(stream([good[2], wrong], [wrong]))
    assert [e.index for e in answer.errors] == [1, 2] and not answer.errors_truncated

    async def then_too_large() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=[wrong] * 5)
        yield pb.ImportObjectsRequest(objects=good[:1] * 51)

    err = await expect_error(
        stub.ImportObjects(then_too_large()), grpc.StatusCode.INVALID_ARGUMENT, "objects"
    )
    # Only the listed ones are known by index; the value says there are more.
    assert error_info(err).metadata["rejected_indexes"] == "0,1,2,…"


async def test_a_rejected_objects_long_id_or_key_is_cut_in_its_error(make_retrieval: Any) -> None:
    """An ObjectError echoed the object's id (no UUID) and unknown property key whole: a
    stream of messages each holding one object with a 100 KB id kept 100 KB per rejection
    and answered more than the send limit, RESOURCE_EXHAUSTED, so the client lost the
    counts of what its stream imported (the good object was stored). Cut to 256
    characters, as a status's metadata is."""
    retrieval = await make_retrieval(max_message_bytes=256 * 1024)
    stub = retrieval.stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    long_id = "x" * 100_000

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=article_objects()[:1])
        for _ in range(4):
            yield pb.ImportObjectsRequest(objects=[obj({"title": "t"}, id=long_id, vector=V)])
        yield pb.ImportObjectsRequest(objects=[obj({"k" * 100_000: 1}, vector=V)])

    answer = await stub.ImportObjects(stream())
    assert (answer.received_count, answer.imported_count) == (6, 1)
    assert [e.field for e in answer.errors[:4]] == ["id"] * 4
    for error in answer.errors[:4]:
        assert error.id.startswith("xxx") and error.id.endswith("…") and len(error.id) == 256
    key_error = answer.errors[4]
    assert key_error.field.startswith("properties.kkk") and len(key_error.field) == 256
    # The same cut in UpsertObjects' answer.
    upserted = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="A", objects=[obj({"title": "t"}, id=long_id, vector=V)])
    )
    assert len(upserted.errors[0].id) == 256


def _too_deep() -> bytes:
    """An import message nested past protobuf's parsing limit (100 message levels)."""
    message = pb.ImportObjectsRequest()
    value = message.objects.add().properties.fields["tags"]
    for _ in range(60):
        value = value.list_value.values.add()
    value.string_value = "x"
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("third", "reason"),
    [(b"\xff\xff\xff\xff\x0f", "MALFORMED_REQUEST"), (_too_deep(), "NESTING_TOO_DEEP")],
)
async def test_an_unparsable_import_message_says_what_was_imported(
    retrieval: Retrieval, stub: Any, third: bytes, reason: str
) -> None:
    """A message protobuf cannot parse fails in the stream, before the servicer's loop:
    its status used to carry only ``message_type``, though earlier messages were stored."""
    objects = article_objects()
    messages = [
        pb.ImportObjectsRequest(collection="Articles", objects=objects[:2]).SerializeToString(),
        pb.ImportObjectsRequest(objects=objects[2:5]).SerializeToString(),
        third,
    ]
    send = retrieval.channel.stream_unary(
        "/gensearch.retrieval.v1.RetrievalService/ImportObjects",
        response_deserializer=pb.ImportObjectsResponse.FromString,
    )
    err = await expect_error(send(iter(messages)), grpc.StatusCode.INVALID_ARGUMENT)
    info = error_info(err)
    assert info.reason == reason
    assert info.metadata["imported_count"] == "5"
    assert info.metadata["received_count"] == "5"
    assert info.metadata["message_type"] == "gensearch.retrieval.v1.ImportObjectsRequest"
    assert "message 2; 5 objects imported before it" in (err.details() or "")
    assert await count(stub) == 5


async def test_import_stream(stub: Any) -> None:
    objects = article_objects()

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Articles", objects=objects[:5])
        yield pb.ImportObjectsRequest(objects=[obj({"nope": 1}, vector=V), *objects[5:8]])
        yield pb.ImportObjectsRequest(collection="Articles", objects=objects[8:])

    resp = await stub.ImportObjects(stream())
    assert resp.received_count == 13
    assert resp.imported_count == 12
    assert [(e.index, e.field) for e in resp.errors] == [(5, "properties.nope")]
    assert await count(stub) == 12

    async def no_name() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(objects=objects[:1])

    await expect_error(
        stub.ImportObjects(no_name()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection",
    )

    async def nothing() -> AsyncIterator[pb.ImportObjectsRequest]:
        return
        yield  # an async generator that sends no message at all

    # A stream of no message forgot its collection as a first message without one does:
    # the same reason, MISSING_FIELD (it was the generic INVALID_ARGUMENT), and the counts.
    for forgot in (no_name(), nothing()):
        err = await expect_error(
            stub.ImportObjects(forgot), grpc.StatusCode.INVALID_ARGUMENT, "collection"
        )
        info = error_info(err)
        assert info.reason == "MISSING_FIELD", info
        assert info.metadata["imported_count"] == "0", info

    async def other_name() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Articles", objects=objects[:1])
        yield pb.ImportObjectsRequest(collection="Other", objects=objects[1:2])

    await expect_error(
        stub.ImportObjects(other_name()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection",
    )

    async def missing() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Missing", objects=objects[:1])

    await expect_error(
        stub.ImportObjects(missing()),
        grpc.StatusCode.NOT_FOUND,
        "collection",
    )


async def test_delete_by_ids_and_filter(stub: Any) -> None:
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=article_objects())
    )
    ids = [a["id"] for a in articles()]
    resp = await stub.DeleteObjects(
        pb.DeleteObjectsRequest(collection="Articles", ids=[ids[0], ids[1], str(uuid.uuid4())])
    )
    assert resp.deleted_count == 2
    await expect_error(
        stub.GetObject(pb.GetObjectRequest(collection="Articles", id=ids[0])),
        grpc.StatusCode.NOT_FOUND,
        "id",
    )
    science = cond("tags", pb.OPERATOR_EQUAL, "science")
    expected = sum(1 for a in articles()[2:] if "science" in a["props"]["tags"])
    assert await count(stub, science) == expected
    resp = await stub.DeleteObjects(pb.DeleteObjectsRequest(collection="Articles", filter=science))
    assert resp.deleted_count == expected
    assert await count(stub, science) == 0
    assert await count(stub) == 10 - expected


async def test_object_request_errors(stub: Any) -> None:
    s = stub
    cases = [
        (s.GetObject(pb.GetObjectRequest(collection="Articles", id="nope")), "id"),
        (s.GetObject(pb.GetObjectRequest(collection="Articles")), "id"),
        (s.DeleteObjects(pb.DeleteObjectsRequest(collection="Articles")), "ids"),
        (
            s.DeleteObjects(
                pb.DeleteObjectsRequest(collection="Articles", ids=[str(uuid.uuid4()), "x"])
            ),
            "ids[1]",
        ),
        (
            s.DeleteObjects(
                pb.DeleteObjectsRequest(
                    collection="Articles",
                    ids=[str(uuid.uuid4())],
                    filter=cond("year", pb.OPERATOR_EQUAL, 1),
                )
            ),
            "filter",
        ),
        (s.UpsertObjects(pb.UpsertObjectsRequest(collection="")), "collection"),
    ]
    for call, field in cases:
        await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field)
    await expect_error(
        s.GetObject(pb.GetObjectRequest(collection="Articles", id=str(uuid.uuid4()))),
        grpc.StatusCode.NOT_FOUND,
        "id",
    )


async def test_batch_get_objects_answers_found_and_missing_ids(stub: Any) -> None:
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=article_objects())
    )
    first, third = articles()[0], articles()[2]
    missing = str(uuid.uuid4())
    request = pb.BatchGetObjectsRequest(
        collection="Articles",
        # Any spelling of a UUID; an id given twice is read once.
        ids=[third["id"], missing.upper(), first["id"].upper(), third["id"]],
    )
    got = await stub.BatchGetObjects(request)
    assert [o.id for o in got.objects] == [third["id"], first["id"]]
    assert list(got.missing_ids) == [missing]
    assert dict(got.objects[1].properties)["title"] == first["props"]["title"]
    assert not any(o.vector for o in got.objects)
    request.include_vector = True
    with_vectors = await stub.BatchGetObjects(request)
    assert list(with_vectors.objects[1].vector) == pytest.approx(first["vector"], abs=1e-6)
    none_there = await stub.BatchGetObjects(
        pb.BatchGetObjectsRequest(collection="Articles", ids=[missing])
    )
    assert not none_there.objects and list(none_there.missing_ids) == [missing]


async def test_batch_get_objects_errors(make_retrieval: Any) -> None:
    harness = await make_retrieval(max_get_ids=3)
    s = harness.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    ids = [str(uuid.uuid4()) for _ in range(4)]
    for request, field in (
        (pb.BatchGetObjectsRequest(collection="A"), "ids"),
        (pb.BatchGetObjectsRequest(collection="A", ids=[ids[0], "nope"]), "ids[1]"),
    ):
        await expect_error(s.BatchGetObjects(request), grpc.StatusCode.INVALID_ARGUMENT, field)
    too_many = await expect_error(
        s.BatchGetObjects(pb.BatchGetObjectsRequest(collection="A", ids=ids)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ids",
    )
    assert error_info(too_many).reason == "OUT_OF_RANGE"
    assert dict(error_info(too_many).metadata) == {
        "field": "ids",
        "max": "3",
        "setting": "GENSEARCH_RETRIEVAL_MAX_GET_IDS",
    }
    await expect_error(
        s.BatchGetObjects(pb.BatchGetObjectsRequest(collection="B", ids=ids[:1])),
        grpc.StatusCode.NOT_FOUND,
        "collection",
    )


@pytest.mark.parametrize("adapter", ["edge", "server"])
@pytest.mark.parametrize("recreate", [True, False])
async def test_an_import_stream_stays_bound_to_the_collection_it_started_with(
    make_retrieval: Any, adapter: str, recreate: bool
) -> None:
    # The stream followed the name: a collection deleted and created again under it while
    # the stream was open received the stream's later messages.
    stub = (await make_retrieval(adapter)).stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    good = article_objects()
    first_landed = asyncio.Event()
    go_on = asyncio.Event()

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=good[:3])
        first_landed.set()
        await go_on.wait()
        yield pb.ImportObjectsRequest(objects=good[3:5])

    call = asyncio.ensure_future(stub.ImportObjects(stream(), timeout=30))
    await first_landed.wait()
    for _ in range(200):  # until the first message is stored
        if (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 3:
            break
        await asyncio.sleep(0.02)
    await stub.DeleteCollection(pb.DeleteCollectionRequest(name="A"))
    if recreate:
        await stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection("A", DIMS))
        )
    go_on.set()
    err = await expect_error(call, grpc.StatusCode.NOT_FOUND, "collection")
    info = error_info(err)
    assert (info.metadata["received_count"], info.metadata["imported_count"]) == ("3", "3")
    assert "'A'" in (err.details() or "")
    if recreate:
        # The new collection got nothing of the old stream.
        assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 0
        # A stream started now writes into it.
        answer = await stub.ImportObjects(
            iter([pb.ImportObjectsRequest(collection="A", objects=good[:2])])
        )
        assert answer.imported_count == 2


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_an_id_twice_in_one_batch_is_written_in_order(
    make_retrieval: Any, adapter: str
) -> None:
    """As docs/retrieval.md says: each object is an upsert, in order, so the last one with
    an id wins; both are listed and counted as imported, the collection holds one."""
    harness = await make_retrieval(adapter)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    same = str(uuid.uuid4())
    objects = [
        obj({"title": "first"}, id=same, vector=V),
        obj({"title": "second"}, id=same.upper(), vector=V),
    ]
    upserted = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=objects)
    )
    assert list(upserted.ids) == [same, same]

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Articles", objects=objects[::-1])

    imported = await stub.ImportObjects(stream())
    assert (imported.received_count, imported.imported_count) == (2, 2)
    assert await count(stub) == 1
    got = await stub.GetObject(pb.GetObjectRequest(collection="Articles", id=same))
    assert got.object.properties["title"] == "first"


async def test_an_abandoned_import_keeps_the_messages_written_before(stub: Any) -> None:
    """A client that cancels its stream half-way keeps what earlier messages wrote (each
    message is written as it arrives): they are not rolled back."""
    sent: asyncio.Queue[pb.ImportObjectsRequest | None] = asyncio.Queue()

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        while (message := await sent.get()) is not None:
            yield message

    objects = article_objects()
    call = stub.ImportObjects(stream())
    await sent.put(pb.ImportObjectsRequest(collection="Articles", objects=objects[:3]))
    await sent.put(pb.ImportObjectsRequest(objects=objects[3:5]))
    for _ in range(200):
        if await count(stub) == 5:
            break
        await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await count(stub) == 5


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_a_collection_holds_at_most_max_objects_per_collection(
    make_retrieval: Any, adapter: str
) -> None:
    # Only collections per tenant and objects per message were bounded, and an import
    # stream has no message limit: one writer could fill the disk every tenant shares.
    stub = (await make_retrieval(adapter, max_objects_per_collection=5)).stub
    for name in ("A", "B", "C"):
        await stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection(name, DIMS))
        )
    objects = article_objects()
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=objects[:4]))
    assert len(resp.ids) == 4
    err = await expect_error(
        stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=objects[4:6])),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "objects",
    )
    info = error_info(err)
    assert info.reason == "COLLECTION_FULL"
    assert {
        "limit": "5",
        "setting": "GENSEARCH_RETRIEVAL_MAX_OBJECTS_PER_COLLECTION",
        "collection": "A",
    }.items() <= dict(info.metadata).items()
    # Nothing of the refused batch was written.
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 4
    # Up to the limit it lands; replacing stored objects adds none, so it lands at the
    # limit too, unless the batch also holds a new one.
    await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=objects[4:5]))
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=objects[:5]))
    assert len(resp.ids) == 5
    await expect_error(
        stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=objects[:6])),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "objects",
    )
    # Invalid objects take no room: the valid ones that fit land, the invalid ones are
    # their ObjectErrors, as ever.
    wrong = obj({"title": "x"}, vector=[1.0])  # wrong dimensions
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="B", objects=[wrong, *objects[:5], wrong])
    )
    assert (len(resp.ids), [e.index for e in resp.errors]) == (5, [0, 6])
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="B"))).count == 5

    # An import stream stops at the message that would overfill, its counts saying what
    # earlier messages imported; nothing of that message is written.
    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="C", objects=[objects[0], wrong, objects[1]])
        yield pb.ImportObjectsRequest(objects=objects[2:4])
        yield pb.ImportObjectsRequest(objects=objects[4:6])  # 4 + 2 > 5
        yield pb.ImportObjectsRequest(objects=objects[6:7])

    err = await expect_error(
        stub.ImportObjects(stream()), grpc.StatusCode.RESOURCE_EXHAUSTED, "objects"
    )
    info = error_info(err)
    assert info.reason == "COLLECTION_FULL"
    assert info.metadata["collection"] == "C"
    assert (info.metadata["received_count"], info.metadata["imported_count"]) == ("5", "4")
    assert info.metadata["rejected_indexes"] == "1"
    assert "message 2" in (err.details() or "")
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="C"))).count == 4


async def test_an_int_past_2_53_is_refused_not_rounded(retrieval: Retrieval, stub: Any) -> None:
    """Properties travel as a Struct's doubles: 2^60 + 1 arrived as 2^60 and was stored
    rounded with an OK. From 2^53 on the double may not be the integer meant (2^53 + 1
    arrives as 2^53): refused, in a property and in a filter's int value; the safe
    integers, within ±(2^53 - 1), are exact and kept."""
    objects = [
        obj({"year": 2**60 + 1}, vector=V),
        obj({"year": -(2**53) - 2}, vector=V),
        obj({"year": 2.0**63}, vector=V),  # past int64 too: the same refusal
        obj({"year": 2**53 + 1}, vector=V),  # arrives as 2^53
        obj({"year": 2**53 - 1}, vector=V),
        obj({"year": -(2**53) + 1}, vector=V),
    ]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Articles", objects=objects))
    assert [(e.index, e.field) for e in resp.errors] == [(i, "properties.year") for i in range(4)]
    assert all("past 2^53 - 1" in e.message and "Struct" in e.message for e in resp.errors)
    got = await stub.BatchGetObjects(pb.BatchGetObjectsRequest(collection="Articles", ids=resp.ids))
    assert sorted(o.properties["year"] for o in got.objects) == [-(2**53) + 1, 2**53 - 1]
    assert await count(stub) == 2
    for value in (2**53, [2020, -(2**60)]):
        op = pb.OPERATOR_CONTAINS_ANY if isinstance(value, list) else pb.OPERATOR_EQUAL
        field = "filter.condition.value" + ("[1]" if isinstance(value, list) else "")
        err = await expect_error(
            stub.CountObjects(
                pb.CountObjectsRequest(collection="Articles", filter=cond("year", op, value))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
        assert error_info(err).reason == "WRONG_TYPE"
        assert "past 2^53" in (err.details() or "")
    # A value stored before the refusal (written here straight to the engine) still reads.
    name = Schema(
        (await stub.GetCollection(pb.GetCollectionRequest(name="Articles"))).collection
    ).store_name
    (point, *_), _ = await retrieval.store.scroll(name, None, 10)
    vector = (await retrieval.store.retrieve(name, [point.id], True))[0].dense
    await retrieval.store.upsert(
        name, [StoredPoint(point.id, {**point.payload, PROPS: {"year": 2**60 + 1}}, vector)]
    )
    read = await stub.GetObject(pb.GetObjectRequest(collection="Articles", id=point.id))
    assert read.object.properties["year"] == float(2**60)
    found = await stub.Search(
        pb.SearchRequest(collection="Articles", near_vector=pb.NearVector(vector=V), limit=5)
    )
    assert float(2**60) in [h.properties["year"] for h in found.hits]


def tagged(n_tags: int, i: int = 0, **extra: Any) -> pb.DataObject:
    """An object of 1 + 1 + ``n_tags`` values: its title, its tags list and each tag."""
    return obj(
        {"title": f"t{i}", "tags": [f"tag{k}" for k in range(n_tags)], **extra},
        id=str(uuid.UUID(int=0x7000 + i)),
        vector=V,
    )


def test_what_counts_as_a_value() -> None:
    # Each property's value, each list element, each nested struct field; a null is one.
    props = obj({"tags": ["a", "b"], "meta": {"x": 1, "y": [None]}}).properties
    assert count_values(props, 100) == 7
    assert count_values(obj({}).properties, 100) == 0
    # Past the bound it stops, with some count past it.
    assert count_values(props, 3) > 3


async def test_an_object_past_max_values_per_object_gets_its_own_error(
    make_retrieval: Any,
) -> None:
    # Each value is checked on the loop every tenant shares (~2 us apiece): an object of a
    # million tags held the replica. It is refused on its own; the rest of the batch lands.
    stub = (await make_retrieval(max_values_per_object=100, max_values_per_batch=1000)).stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    objects = [tagged(98, 0), tagged(99, 1), tagged(10, 2)]  # 100, 101, 12 values
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=objects))
    assert list(resp.ids) == [objects[0].id, objects[2].id]
    assert [(e.index, e.id, e.field) for e in resp.errors] == [(1, objects[1].id, "properties")]
    assert "GENSEARCH_RETRIEVAL_MAX_VALUES_PER_OBJECT" in resp.errors[0].message
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 2

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=[tagged(5, 3)])
        yield pb.ImportObjectsRequest(objects=[tagged(500, 4), tagged(5, 5)])

    answer = await stub.ImportObjects(stream())
    assert (answer.received_count, answer.imported_count) == (3, 2)
    assert [(e.index, e.field) for e in answer.errors] == [(1, "properties")]


async def test_a_batch_past_max_values_per_batch_writes_nothing(make_retrieval: Any) -> None:
    # 1,000 objects of 2,000 tags fit the request byte bound and held every tenant's calls
    # for seconds while checked. Refused whole, before any object is checked: the first
    # object's NaN is not what the status names.
    stub = (await make_retrieval(max_values_per_object=100, max_values_per_batch=1000)).stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A", DIMS)))
    over = [tagged(98, 0, year=float("nan"))] + [tagged(98, i) for i in range(1, 10)]
    # 101 (a NaN is a value too) + 9 x 100 = 1001 values
    err = await expect_error(
        stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=over)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "objects",
    )
    info = error_info(err)
    assert info.reason == "BATCH_TOO_LARGE"
    bound = {"max": "1000", "setting": "GENSEARCH_RETRIEVAL_MAX_VALUES_PER_BATCH"}
    assert bound.items() <= dict(info.metadata).items()
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 0
    # Exactly the bound is taken (each object at its own bound too).
    at_bound = [tagged(98, i) for i in range(10)]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=at_bound))
    assert len(resp.ids) == 10 and not resp.errors
    # An object past its own bound counts toward the batch too (as far as it was read).
    many_over = [tagged(5000, 20 + i) for i in range(10)]
    await expect_error(
        stub.UpsertObjects(pb.UpsertObjectsRequest(collection="A", objects=many_over)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "objects",
    )

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="A", objects=[tagged(5, 30), tagged(5, 31)])
        yield pb.ImportObjectsRequest(objects=[tagged(98, 40 + i) for i in range(11)])

    err = await expect_error(
        stub.ImportObjects(stream()), grpc.StatusCode.INVALID_ARGUMENT, "objects"
    )
    info = error_info(err)
    assert info.reason == "BATCH_TOO_LARGE"
    assert bound.items() <= dict(info.metadata).items()
    # The first message landed, and the error says so.
    assert (info.metadata["received_count"], info.metadata["imported_count"]) == ("2", "2")
    assert "message 1" in (err.details() or "")
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count == 12
