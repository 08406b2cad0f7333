"""Collections of chunks: the chunking declaration and GetChunks."""

from __future__ import annotations

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import struct_pb2
from pydantic import SecretStr

from services.common.auth import ROLE_HEADER, TENANT_HEADER, TOKEN_HEADER, USER_HEADER
from tests.retrieval.conftest import MakeRetrieval, Retrieval, expect_error, obj, props
from tests.support.rpc import error_info

CHUNK_PROPS = props(
    ("doc_id", pb.DATA_TYPE_TEXT),
    ("chunk_index", pb.DATA_TYPE_INT),
    ("text", pb.DATA_TYPE_TEXT),
    ("score", pb.DATA_TYPE_NUMBER),
)


def chunked(name: str = "Docs", **chunking: str) -> pb.Collection:
    return pb.Collection(
        name=name,
        properties=CHUNK_PROPS,
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=2),
        chunking=pb.Chunking(**chunking),
    )


def doc(value: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=value)


@pytest.mark.parametrize(
    ("chunking", "field"),
    [
        ({"order_property": "chunk_index"}, "collection.chunking.document_property"),
        ({"document_property": "doc_id"}, "collection.chunking.order_property"),
        (
            {"document_property": "nope", "order_property": "chunk_index"},
            "collection.chunking.document_property",
        ),
        (
            {"document_property": "doc_id", "order_property": "score"},
            "collection.chunking.order_property",
        ),
        (
            {"document_property": "score", "order_property": "chunk_index"},
            "collection.chunking.document_property",
        ),
        (
            {"document_property": "chunk_index", "order_property": "chunk_index"},
            "collection.chunking.order_property",
        ),
    ],
)
async def test_chunking_names_existing_properties_of_suitable_types(
    retrieval: Retrieval, chunking: dict[str, str], field: str
) -> None:
    await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=chunked(**chunking))),
        grpc.StatusCode.INVALID_ARGUMENT,
        field=field,
    )


@pytest.fixture
async def docs(retrieval: Retrieval) -> Retrieval:
    stub = retrieval.stub
    created = await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=chunked(document_property="doc_id", order_property="chunk_index")
        )
    )
    assert created.collection.chunking.order_property == "chunk_index"
    objects = [
        obj({"doc_id": d, "chunk_index": i, "text": f"{d}-{i}"}, vector=[1.0, float(i)])
        for d in ("a", "b")
        for i in (4, 0, 3, 1, 2)  # stored out of order
    ]
    await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Docs", objects=objects))
    return retrieval


@pytest.fixture
async def numbered(retrieval: Retrieval) -> Retrieval:
    """A chunked collection "Numbered" whose documents are ints (no objects)."""
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=pb.Collection(
                name="Numbered",
                properties=props(("doc", pb.DATA_TYPE_INT), ("pos", pb.DATA_TYPE_INT)),
                vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=2),
                chunking=pb.Chunking(document_property="doc", order_property="pos"),
            )
        )
    )
    return retrieval


async def test_ranges_come_back_in_document_order(docs: Retrieval) -> None:
    response = await docs.stub.GetChunks(
        pb.GetChunksRequest(
            collection="Docs",
            ranges=[
                pb.ChunkRange(document=doc("a"), first=1, last=3),
                pb.ChunkRange(document=doc("b")),
                pb.ChunkRange(document=doc("b"), first=3),
                pb.ChunkRange(document=doc("zzz")),
            ],
            return_properties=["text"],
        )
    )
    texts = [[c.properties["text"] for c in r.chunks] for r in response.ranges]
    assert texts == [["a-1", "a-2", "a-3"], [f"b-{i}" for i in range(5)], ["b-3", "b-4"], []]
    # The chunking properties always come back.
    assert response.ranges[0].chunks[0].properties["chunk_index"] == 1
    assert not any(r.truncated for r in response.ranges)


async def test_a_long_document_is_cut_and_says_so(make_retrieval: MakeRetrieval) -> None:
    harness = await make_retrieval(max_chunks_per_range=3)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=chunked(document_property="doc_id", order_property="chunk_index")
        )
    )
    objects = [obj({"doc_id": "a", "chunk_index": i}, vector=[1.0, 0.0]) for i in range(5)]
    await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Docs", objects=objects))
    response = await stub.GetChunks(
        pb.GetChunksRequest(collection="Docs", ranges=[pb.ChunkRange(document=doc("a"))])
    )
    assert len(response.ranges[0].chunks) == 3 and response.ranges[0].truncated


async def test_ranges_past_max_limit_name_the_setting(make_retrieval: MakeRetrieval) -> None:
    """MAX_LIMIT ranges pass; one more is OUT_OF_RANGE with the bound and the setting (it
    gave neither)."""
    harness = await make_retrieval(max_limit=2)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=chunked(document_property="doc_id", order_property="chunk_index")
        )
    )
    ranges = [pb.ChunkRange(document=doc(name)) for name in ("a", "b", "c")]
    await stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=ranges[:2]))
    err = await expect_error(
        stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=ranges)),
        grpc.StatusCode.INVALID_ARGUMENT,
        field="ranges",
    )
    assert error_info(err).reason == "OUT_OF_RANGE"
    assert dict(error_info(err).metadata) == {
        "field": "ranges",
        "max": "2",
        "setting": "GENSEARCH_RETRIEVAL_MAX_LIMIT",
    }


async def test_bad_ranges_name_their_field(docs: Retrieval) -> None:
    stub = docs.stub
    cases = [
        (pb.ChunkRange(document=struct_pb2.Value(number_value=1)), "ranges[0].document"),
        (pb.ChunkRange(document=doc("a"), first=3, last=1), "ranges[0].first"),
    ]
    for chunk_range, field in cases:
        await expect_error(
            stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=[chunk_range])),
            grpc.StatusCode.INVALID_ARGUMENT,
            field=field,
        )
    await expect_error(
        stub.GetChunks(pb.GetChunksRequest(collection="Docs")),
        grpc.StatusCode.INVALID_ARGUMENT,
        field="ranges",
    )


@pytest.mark.parametrize(
    ("bounds", "field"),
    [
        # Used to name filter.all_of.filters[2].condition.value, a field never sent: the
        # bound became a double (2^63) that no integer filter value may be.
        ({"first": 0, "last": 2**63 - 1}, "ranges[1].last"),
        ({"first": -(2**63)}, "ranges[1].first"),
        ({"first": 2**53 + 1}, "ranges[1].first"),
        ({"last": -(2**53) - 1}, "ranges[1].last"),
    ],
)
async def test_bounds_past_exact_integers_are_out_of_range(
    docs: Retrieval, bounds: dict[str, int], field: str
) -> None:
    ranges = [pb.ChunkRange(document=doc("a")), pb.ChunkRange(document=doc("a"), **bounds)]
    err = await expect_error(
        docs.stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=ranges)),
        grpc.StatusCode.INVALID_ARGUMENT,
        field=field,
    )
    assert error_info(err).reason == "OUT_OF_RANGE"
    # The widest bounds allowed read the whole document.
    widest = pb.ChunkRange(document=doc("a"), first=-(2**53), last=2**53)
    response = await docs.stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=[widest]))
    assert len(response.ranges[0].chunks) == 5


async def test_an_int_document_past_int64_names_its_range(numbered: Retrieval) -> None:
    """-2^63 is a double no int property holds: it named
    filter.all_of.filters[0].condition.value, a field the request never had."""
    stub = numbered.stub
    # Past 2^53 the double may not be the document meant (2^53 + 1 arrives as 2^53).
    for value in (-(2.0**63), 2.0**63, 2.0**53 + 2, 2.0**53, -(2.0**60)):
        ranges = [
            pb.ChunkRange(document=struct_pb2.Value(number_value=1)),
            pb.ChunkRange(document=struct_pb2.Value(number_value=value)),
        ]
        err = await expect_error(
            stub.GetChunks(pb.GetChunksRequest(collection="Numbered", ranges=ranges)),
            grpc.StatusCode.INVALID_ARGUMENT,
            field="ranges[1].document",
        )
        assert "past 2^53" in (err.details() or ""), err.details()


async def test_a_collection_without_chunking_is_a_failed_precondition(
    retrieval: Retrieval,
) -> None:
    stub = retrieval.stub
    plain = pb.Collection(
        name="Plain",
        properties=CHUNK_PROPS,
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=2),
    )
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=plain))
    await expect_error(
        stub.GetChunks(
            pb.GetChunksRequest(collection="Plain", ranges=[pb.ChunkRange(document=doc("a"))])
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        field="collection",
    )


async def test_another_tenants_chunks_are_not_found(make_retrieval: MakeRetrieval) -> None:
    token = "chunks-internal-token"
    harness = await make_retrieval(internal_token=SecretStr(token))

    def as_(tenant: str) -> tuple[tuple[str, str], ...]:
        return (
            (TOKEN_HEADER, token),
            (USER_HEADER, "alice"),
            (TENANT_HEADER, tenant),
            (ROLE_HEADER, "admin"),
        )

    collection = chunked(document_property="doc_id", order_property="chunk_index")
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=collection), metadata=as_("acme")
    )
    await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Docs", objects=[obj({"doc_id": "a", "chunk_index": 0}, vector=[1, 0])]
        ),
        metadata=as_("acme"),
    )
    request = pb.GetChunksRequest(collection="Docs", ranges=[pb.ChunkRange(document=doc("a"))])
    mine = await harness.stub.GetChunks(request, metadata=as_("acme"))
    assert len(mine.ranges[0].chunks) == 1
    await expect_error(
        harness.stub.GetChunks(request, metadata=as_("globex")), grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_both_adapters_read_the_same_chunks(
    make_retrieval: MakeRetrieval, adapter: str
) -> None:
    harness = await make_retrieval(adapter)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=chunked(document_property="doc_id", order_property="chunk_index")
        )
    )
    objects = [
        obj({"doc_id": d, "chunk_index": i, "text": f"{d}-{i}"}, vector=[1.0, float(i)])
        for d in ("a", "b")
        for i in (3, 0, 2, 1)
    ]
    await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Docs", objects=objects))
    response = await stub.GetChunks(
        pb.GetChunksRequest(
            collection="Docs",
            ranges=[pb.ChunkRange(document=doc("b"), last=2), pb.ChunkRange(document=doc("a"))],
        )
    )
    texts = [[c.properties["text"] for c in r.chunks] for r in response.ranges]
    assert texts == [["b-0", "b-1", "b-2"], ["a-0", "a-1", "a-2", "a-3"]]


async def test_a_repeated_range_is_refused_naming_the_range_it_repeats(docs: Retrieval) -> None:
    """Each range is its own engine read, and its chunks come back again in the reply: the
    one document named MAX_LIMIT times read it MAX_LIMIT times for one answer. A repeat is
    refused, as a repeated return property is (the gateway asks each window once)."""
    ranges = [
        pb.ChunkRange(document=doc("a"), first=1, last=3),
        pb.ChunkRange(document=doc("b")),
        pb.ChunkRange(document=doc("a"), first=1),  # another range of the same document
        pb.ChunkRange(document=doc("b")),
    ]
    err = await expect_error(
        docs.stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=ranges)),
        grpc.StatusCode.INVALID_ARGUMENT,
        field="ranges[3]",
    )
    assert error_info(err).metadata["first"] == "ranges[1]"
    assert "ranges[3] repeats ranges[1]" in (err.details() or "")
    response = await docs.stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=ranges[:3]))
    assert [len(r.chunks) for r in response.ranges] == [3, 5, 4]


async def test_a_range_repeated_in_other_bytes_is_refused_too(numbered: Retrieval) -> None:
    """The repeat check compared each range's serialized bytes: the same range spelled in
    other bytes (an int document as -0.0 and 0.0, or with a field this service does not
    know, kept as an unknown field) passed, and was read again."""
    stub = numbered.stub
    zero = pb.ChunkRange(document=struct_pb2.Value(number_value=0.0), last=3)
    minus_zero = pb.ChunkRange(document=struct_pb2.Value(number_value=-0.0), last=3)
    # Field 15 (varint 1): unknown to ChunkRange, kept and sent on as it came.
    unknown = pb.ChunkRange.FromString(zero.SerializeToString() + b"\x78\x01")
    for repeat in (minus_zero, unknown):
        ranges = [zero, pb.ChunkRange(document=struct_pb2.Value(number_value=1)), repeat]
        err = await expect_error(
            stub.GetChunks(pb.GetChunksRequest(collection="Numbered", ranges=ranges)),
            grpc.StatusCode.INVALID_ARGUMENT,
            field="ranges[2]",
        )
        assert error_info(err).metadata["first"] == "ranges[0]"


async def test_a_document_longer_than_the_query_text_bound_is_field_too_large(
    make_retrieval: MakeRetrieval,
) -> None:
    """A range's document string is a lookup key as a search's text is: bounded by
    MAX_QUERY_TEXT_CHARS (it had no bound but the 4 MB request: a 3 MB document string went
    to the engine as a filter value)."""
    harness = await make_retrieval(max_query_text_chars=10)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=chunked(document_property="doc_id", order_property="chunk_index")
        )
    )
    ok = pb.ChunkRange(document=doc("a" * 10))
    await stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=[ok]))
    long = pb.ChunkRange(document=doc("a" * 11))
    err = await expect_error(
        stub.GetChunks(pb.GetChunksRequest(collection="Docs", ranges=[ok, long])),
        grpc.StatusCode.INVALID_ARGUMENT,
        field="ranges[1].document",
    )
    assert error_info(err).reason == "FIELD_TOO_LARGE"
    assert error_info(err).metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS"
    assert error_info(err).metadata["max_chars"] == "10"


@pytest.mark.parametrize("stream", [False, True], ids=["UpsertObjects", "ImportObjects"])
async def test_a_stored_document_key_is_one_get_chunks_can_name(
    make_retrieval: MakeRetrieval, stream: bool
) -> None:
    """GetChunks takes a document of at most MAX_QUERY_TEXT_CHARS characters (above), and
    storing took any: a chunk whose document key was longer was stored, and its document
    could never be read with GetChunks. Now storing refuses that chunk (its ObjectError
    names the property and the setting) and keeps the others; any key stored can be named."""
    harness = await make_retrieval(max_query_text_chars=10)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=chunked(document_property="doc_id", order_property="chunk_index")
        )
    )
    objects = [
        obj({"doc_id": "a" * 10, "chunk_index": 0, "text": "fits"}, vector=[1.0, 0.0]),
        obj({"doc_id": "b" * 11, "chunk_index": 0, "text": "too long"}, vector=[0.0, 1.0]),
    ]
    if stream:
        reply = await stub.ImportObjects(
            iter([pb.ImportObjectsRequest(collection="Docs", objects=objects)])
        )
        errors, written = list(reply.errors), reply.imported_count
    else:
        upserted = await stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Docs", objects=objects)
        )
        errors, written = list(upserted.errors), len(upserted.ids)
    assert written == 1
    assert [(e.index, e.field) for e in errors] == [(1, "properties.doc_id")]
    assert "GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS" in errors[0].message
    assert "10 characters" in errors[0].message
    got = await stub.GetChunks(
        pb.GetChunksRequest(collection="Docs", ranges=[pb.ChunkRange(document=doc("a" * 10))])
    )
    assert [c.properties["text"] for c in got.ranges[0].chunks] == ["fits"]
