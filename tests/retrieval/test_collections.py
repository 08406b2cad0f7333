"""CreateCollection, GetCollection, ListCollections, DeleteCollection and their errors."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import (
    ARTICLE_PROPS,
    MakeRetrieval,
    Retrieval,
    expect_error,
    props,
    vector_collection,
)
from tests.support.rpc import error_info
from tests.support.wire import add_unknown_field


async def test_create_get_list_delete(retrieval: Retrieval) -> None:
    stub = retrieval.stub
    collection = vector_collection(
        "Articles",
        description="news",
        generative=pb.GenerativeConfig(
            provider="openai",
            model="gpt-4o-mini",
            temperature=0.2,
            max_tokens=256,
            system_prompt="Be brief.",
            user_instructions="Answer from the context.",
            context_fields=["title", "body"],
        ),
    )
    created = (
        await stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    ).collection
    assert created.name == "Articles"
    assert created.keyword_index is True  # unset means on
    assert created.vectorizer.distance == pb.DISTANCE_COSINE
    assert created.create_time.seconds > 0
    assert created.generative.temperature == 0.2
    got = await stub.GetCollection(pb.GetCollectionRequest(name="Articles"))
    assert got.collection == created
    assert got.object_count == 0
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["Articles"]
    deleted = await stub.DeleteCollection(pb.DeleteCollectionRequest(name="Articles"))
    # Which collection of the name it removed (the gateway's cache fence reads it).
    assert deleted.create_time == created.create_time
    await expect_error(
        stub.GetCollection(pb.GetCollectionRequest(name="Articles")),
        grpc.StatusCode.NOT_FOUND,
        "name",
    )
    # The name is free again.
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))


async def test_local_vectorizer_defaults(retrieval: Retrieval) -> None:
    created = (
        await retrieval.stub.CreateCollection(
            pb.CreateCollectionRequest(
                collection=pb.Collection(name="Docs", properties=ARTICLE_PROPS)
            )
        )
    ).collection
    assert created.vectorizer.kind == pb.VECTORIZER_KIND_LOCAL
    assert created.vectorizer.dimensions == 384
    assert created.vectorizer.model == "all-MiniLM-L6-v2"


async def test_list_pages(retrieval: Retrieval) -> None:
    stub = retrieval.stub
    names = [f"C{i:02d}" for i in range(7)]
    for name in reversed(names):
        await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection(name)))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListCollections(pb.ListCollectionsRequest(page_size=3, page_token=token))
        seen += [c.name for c in page.collections]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    err = await expect_error(
        stub.ListCollections(pb.ListCollectionsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    )
    assert error_info(err).reason == "INVALID_PAGE_SIZE"  # as memory's lists say it
    await expect_error(
        stub.ListCollections(pb.ListCollectionsRequest(page_token="garbage!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_page_token_not_issued_by_the_service_is_refused(retrieval: Retrieval) -> None:
    # They were read as some cursor: a 3 MB one was decoded whole, stray characters were
    # skipped, bytes that are no name became U+FFFD (after every name: an empty page).
    stub = retrieval.stub
    for name in ("Apple", "Banana", "Cherry"):
        await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection(name)))
    first = await stub.ListCollections(pb.ListCollectionsRequest(page_size=1))
    issued = first.next_page_token
    assert issued
    forged = [
        _token(b"c1:"),  # no name
        _token(b"c1:\xc3\x28"),  # not UTF-8
        _token(b"c1:\xff"),
        _token(b"c1:Apple\x00"),  # no collection name
        _token(b"c1:" + b"A" * 64),  # longer than any collection name
        _token(b"c1:" + b"A" * 3_000_000),
        _token(b"c2:Apple"),  # another version
        issued + "!!",  # stray characters
        issued[:2] + "!" + issued[2:],
        issued + "==",  # padding
        issued.replace("-", "+").replace("_", "/") if "-" in issued or "_" in issued else "+",
        " " + issued,
        "é",
    ]
    for token in forged:
        err = await expect_error(
            stub.ListCollections(pb.ListCollectionsRequest(page_token=token)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        )
        assert error_info(err).reason == "INVALID_PAGE_TOKEN", token[:40]
    rest = await stub.ListCollections(pb.ListCollectionsRequest(page_token=issued))
    assert [c.name for c in rest.collections] == ["Banana", "Cherry"]
    # A well-formed cursor the service never issued only picks where the list starts.
    made = await stub.ListCollections(pb.ListCollectionsRequest(page_token=_token(b"c1:B")))
    assert [c.name for c in made.collections] == ["Banana", "Cherry"]


async def test_collection_errors(retrieval: Retrieval) -> None:
    stub = retrieval.stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("Taken")))
    await expect_error(
        stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("Taken"))),
        grpc.StatusCode.ALREADY_EXISTS,
        "collection.name",
    )
    invalid = [
        (vector_collection(""), "collection.name"),
        (vector_collection("1abc"), "collection.name"),
        (vector_collection("has space"), "collection.name"),
        (vector_collection("x" * 64), "collection.name"),
        (vector_collection("../etc"), "collection.name"),
        (
            pb.Collection(name="P", properties=props(("bad-name", pb.DATA_TYPE_TEXT))),
            "collection.properties[0].name",
        ),
        (
            pb.Collection(
                name="P", properties=props(("a", pb.DATA_TYPE_TEXT), ("a", pb.DATA_TYPE_INT))
            ),
            "collection.properties[1].name",
        ),
        (
            pb.Collection(name="P", properties=[pb.Property(name="a")]),
            "collection.properties[0].data_type",
        ),
        (
            pb.Collection(name="P", vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE)),
            "collection.vectorizer.dimensions",
        ),
        (
            pb.Collection(
                name="P",
                vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_OPENAI_COMPATIBLE, dimensions=8),
            ),
            "collection.vectorizer.base_url",
        ),
        (
            pb.Collection(name="P", vectorizer=pb.Vectorizer(dimensions=100)),
            "collection.vectorizer.dimensions",
        ),
        (
            pb.Collection(name="P", vectorizer=pb.Vectorizer(model="some-other-model")),
            "collection.vectorizer.model",
        ),
        (
            pb.Collection(
                name="P",
                properties=ARTICLE_PROPS,
                vectorizer=pb.Vectorizer(source_properties=["year"]),
            ),
            "collection.vectorizer.source_properties[0]",
        ),
        (
            vector_collection("P", generative=pb.GenerativeConfig(temperature=3.0)),
            "collection.generative.temperature",
        ),
        (
            vector_collection("P", generative=pb.GenerativeConfig(context_fields=["nope"])),
            "collection.generative.context_fields[0]",
        ),
        (
            vector_collection(
                "P",
                generative=pb.GenerativeConfig(
                    fallback=[pb.GenerativeModel(provider="openai"), pb.GenerativeModel()]
                ),
            ),
            "collection.generative.fallback[1].provider",
        ),
        (
            vector_collection(
                "P",
                generative=pb.GenerativeConfig(
                    # One past the gateway's default MAX_FALLBACKS (4): before, 8 were
                    # stored, then refused at every use.
                    fallback=[pb.GenerativeModel(provider="openai")] * 5
                ),
            ),
            "collection.generative.fallback",
        ),
        (
            vector_collection("P", generative=pb.GenerativeConfig(model="m\nx")),
            "collection.generative.model",
        ),
        # The primary provider as its fallback siblings are: stored as sent before (any
        # length; spaces alone silently meant the default provider at use).
        (
            vector_collection("P", generative=pb.GenerativeConfig(provider="p" * 257)),
            "collection.generative.provider",
        ),
        (
            vector_collection("P", generative=pb.GenerativeConfig(provider="   ")),
            "collection.generative.provider",
        ),
        # Spaces alone: stored, then taken for "the default model" on every search.
        (
            vector_collection("P", generative=pb.GenerativeConfig(model="   ")),
            "collection.generative.model",
        ),
        (
            vector_collection(
                "P",
                generative=pb.GenerativeConfig(
                    fallback=[pb.GenerativeModel(provider="openai", model=" ")]
                ),
            ),
            "collection.generative.fallback[0].model",
        ),
        (
            vector_collection(
                "P",
                generative=pb.GenerativeConfig(
                    fallback=[pb.GenerativeModel(provider="openai", model="m" * 257)]
                ),
            ),
            "collection.generative.fallback[0].model",
        ),
    ]
    for collection, field in invalid:
        await expect_error(
            stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    await expect_error(
        stub.CreateCollection(pb.CreateCollectionRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection",
    )
    for call, field in [
        (stub.GetCollection(pb.GetCollectionRequest(name="Missing")), "name"),
        (stub.DeleteCollection(pb.DeleteCollectionRequest(name="Missing")), "name"),
        (stub.CountObjects(pb.CountObjectsRequest(collection="Missing")), "collection"),
        (stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Missing")), "collection"),
    ]:
        await expect_error(call, grpc.StatusCode.NOT_FOUND, field)
    await expect_error(
        stub.GetCollection(pb.GetCollectionRequest(name="bad name")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name",
    )
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["Taken"]


async def test_a_fallback_chain_is_bounded_by_the_gateways_default(retrieval: Retrieval) -> None:
    """A collection's chain holds at most what the gateway takes by default
    (GENSEARCH_GATEWAY_MAX_FALLBACKS, 4): before, 8 pairs were stored and every search
    using them was FAILED_PRECONDITION."""
    from services.gateway.settings import GatewaySettings

    limit = GatewaySettings.model_fields["max_fallbacks"].default
    chain = [pb.GenerativeModel(provider="openai", model=f"m{i}") for i in range(limit + 1)]
    err = await expect_error(
        retrieval.stub.CreateCollection(
            pb.CreateCollectionRequest(
                collection=vector_collection("Long", generative=pb.GenerativeConfig(fallback=chain))
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection.generative.fallback",
    )
    info = error_info(err)
    assert (info.reason, info.metadata["max"]) == ("OUT_OF_RANGE", str(limit))
    assert "GENSEARCH_GATEWAY_MAX_FALLBACKS" in (err.details() or "")
    created = await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=vector_collection(
                "Fits", generative=pb.GenerativeConfig(fallback=chain[:limit])
            )
        )
    )
    assert len(created.collection.generative.fallback) == limit


async def test_a_fallback_pair_repeating_the_primary_or_an_earlier_pair_is_refused(
    retrieval: Retrieval,
) -> None:
    """Before, such a chain was stored, then refused (DUPLICATE_FALLBACK) at every use."""
    openai = pb.GenerativeModel(provider="openai", model="m1")
    cases = [
        (pb.GenerativeConfig(provider="OpenAI ", model="m1", fallback=[openai]), 0, "primary"),
        (
            pb.GenerativeConfig(fallback=[openai, pb.GenerativeModel(provider="x"), openai]),
            2,
            "collection.generative.fallback[0]",
        ),
    ]
    for n, (generative, index, repeats) in enumerate(cases):
        field = f"collection.generative.fallback[{index}]"
        err = await expect_error(
            retrieval.stub.CreateCollection(
                pb.CreateCollectionRequest(
                    collection=vector_collection(f"Repeats{n}", generative=generative)
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
        info = error_info(err)
        assert (info.reason, info.metadata["field"], info.metadata["repeats"]) == (
            "DUPLICATE_FALLBACK",
            field,
            repeats,
        )
    # Another model of the same provider is another endpoint.
    other = pb.GenerativeConfig(
        provider="openai", model="m1", fallback=[pb.GenerativeModel(provider="openai", model="m2")]
    )
    created = await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Distinct", generative=other))
    )
    assert len(created.collection.generative.fallback) == 1


async def test_a_blank_system_prompt_or_instructions_is_refused(retrieval: Retrieval) -> None:
    """Before, "  \n" was stored and then used as the collection's system prompt."""
    for name in ("system_prompt", "user_instructions"):
        await expect_error(
            retrieval.stub.CreateCollection(
                pb.CreateCollectionRequest(
                    collection=vector_collection(
                        f"Blank_{name}", generative=pb.GenerativeConfig(**{name: "  \n"})
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"collection.generative.{name}",
        )


async def test_a_data_type_the_enum_does_not_have_is_named_as_such(retrieval: Retrieval) -> None:
    # DataType 99 was "collection.properties[0].data_type is required", as if unset.
    for data_type, says in ((99, "data_type 99 is not a DataType"), (0, "data_type is required")):
        collection = pb.Collection(
            name="P", properties=[pb.Property(name="a", data_type=data_type)]
        )
        err = await expect_error(
            retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "collection.properties[0].data_type",
        )
        assert says in (err.details() or ""), err.details()


async def test_listing_reads_the_engine_at_most_every_half_second(retrieval: Retrieval) -> None:
    """Each ListCollections read every schema on the engine (on a Qdrant server one call per
    collection of every tenant) whatever the last read: a reader listing in a loop made the
    engine do it for each call. Now at most every MISS_RELOAD_SECONDS; this replica's own
    creates and deletes show at once."""
    from services.retrieval.catalog import MISS_RELOAD_SECONDS

    stub = retrieval.stub
    store = retrieval.store
    reads = 0
    schemas = store.schemas

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await schemas()

    store.schemas = counted  # type: ignore[method-assign]
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("A")))
    await asyncio.sleep(MISS_RELOAD_SECONDS)
    started = reads
    for _ in range(20):
        listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["A"]
    assert reads - started <= 2
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("B")))
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["A", "B"]
    await stub.DeleteCollection(pb.DeleteCollectionRequest(name="A"))
    listed = await stub.ListCollections(pb.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["B"]


async def test_unknown_fields_of_a_collection_are_not_kept(make_retrieval: MakeRetrieval) -> None:
    """A collection carrying fields its type does not declare (at the top and inside a
    property) kept them in the cached schema: CreateCollection and GetCollection answered
    100 KB the stored schema never held, and after a restart (or from another replica) the
    same collection came back without them. They are dropped when it is created: every
    answer is the stored one."""
    first = await make_retrieval()
    collection = vector_collection("Padded")
    add_unknown_field(collection, 1000, b"x" * 100_000)
    add_unknown_field(collection.properties[0], 1000, b"y" * 1000)
    created = (
        await first.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    ).collection
    got = (await first.stub.GetCollection(pb.GetCollectionRequest(name="Padded"))).collection
    await first.stop()
    again = await make_retrieval()  # the same data directory, read from disk
    stored = (await again.stub.GetCollection(pb.GetCollectionRequest(name="Padded"))).collection
    assert created == got == stored
    assert created.ByteSize() == stored.ByteSize() < 10_000


_PROVIDER = ("max_provider_chars", "GENSEARCH_RETRIEVAL_MAX_PROVIDER_CHARS", "max")
_RERANK = ("max_rerank_default_chars", "GENSEARCH_RETRIEVAL_MAX_RERANK_DEFAULT_CHARS", "max")
_MODEL = ("max_model_chars", "GENSEARCH_RETRIEVAL_MAX_MODEL_CHARS", "max_chars")
_URL = ("max_url_chars", "GENSEARCH_RETRIEVAL_MAX_URL_CHARS", "max_chars")


@pytest.mark.parametrize(
    ("setting", "field", "collection"),
    [
        (
            _PROVIDER,
            "collection.generative.provider",
            lambda n: vector_collection("P", generative=pb.GenerativeConfig(provider="p" * n)),
        ),
        (
            _PROVIDER,
            "collection.generative.fallback[0].provider",
            lambda n: vector_collection(
                "P",
                generative=pb.GenerativeConfig(fallback=[pb.GenerativeModel(provider="p" * n)]),
            ),
        ),
        (
            _RERANK,
            "collection.rerank.provider",
            lambda n: vector_collection("P", rerank=pb.Rerank(provider="p" * n)),
        ),
        (
            _RERANK,
            "collection.rerank.model",
            lambda n: vector_collection("P", rerank=pb.Rerank(provider="mmr", model="m" * n)),
        ),
        (
            _RERANK,
            "collection.rerank.base_url",
            lambda n: vector_collection(
                "P", rerank=pb.Rerank(provider="mmr", base_url="https://a.example/" + "x" * n)
            ),
        ),
        (
            _MODEL,
            "collection.generative.model",
            lambda n: vector_collection("P", generative=pb.GenerativeConfig(model="m" * n)),
        ),
        (
            _MODEL,
            "collection.generative.fallback[0].model",
            lambda n: vector_collection(
                "P",
                generative=pb.GenerativeConfig(
                    fallback=[pb.GenerativeModel(provider="openai", model="m" * n)]
                ),
            ),
        ),
        (
            _MODEL,
            "collection.rerank.model",
            lambda n: vector_collection("P", rerank=pb.Rerank(provider="mmr", model="m" * n)),
        ),
        (
            _URL,
            "collection.rerank.base_url",
            lambda n: vector_collection(
                "P", rerank=pb.Rerank(base_url="https://a.example/" + "x" * (n - 18))
            ),
        ),
        (
            _URL,
            "collection.vectorizer.base_url",
            lambda n: pb.Collection(
                name="P",
                vectorizer=pb.Vectorizer(
                    kind=pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
                    base_url="https://a.example/" + "x" * (n - 18),
                    model="m",
                    dimensions=4,
                ),
            ),
        ),
    ],
)
async def test_provider_rerank_default_and_model_bounds_are_settings_the_refusal_names(
    make_retrieval: MakeRetrieval,
    setting: tuple[str, str, str],
    field: str,
    collection: Callable[[int], pb.Collection],
) -> None:
    """A generative provider's length, a default rerank's provider, model and base_url
    lengths and a model name's are settings (were a fixed 256, 2048 and 256, refused with
    no reason nor bound)."""
    name, variable, bound = setting
    # The rerank default's own bound stays above the model's.
    retrieval = await make_retrieval(**{"max_rerank_default_chars": 2048, name: 30})
    err = await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection(31))),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )
    info = error_info(err)
    assert info.reason == "FIELD_TOO_LARGE"
    assert (info.metadata[bound], info.metadata["setting"]) == ("30", variable)
    assert variable in (err.details() or "")
