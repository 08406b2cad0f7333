"""The rerank stage of Search: a /v1/rerank endpoint (the loopback fake) and local MMR."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.retrieval.conftest import MakeRetrieval, Retrieval, expect_error, obj, props
from tests.retrieval.conftest import vector_collection as vcol
from tests.support.fake_openai import Behaviour, FakeOpenAI, word_overlap
from tests.support.rpc import error_info, retry_delay

KEY_ENV = "TEST_RERANK_KEY"
KEY = "sk-test-rerank-key-456"

# Keyword search ranks by BM25; the fake reranker by the share of the query's words a
# document holds: "tower" alone matches every document, only one holds all three words.
DOCS = [
    ("tower one", "the tower"),
    ("tower two", "a tower tower tower tower tower"),
    ("tower three", "tower of london bridge"),
    ("tower four", "old tower in paris by the river"),
    ("tower five", "tower tower"),
    ("tower six", "tower"),
]
QUERY = "paris river tower"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, KEY)
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def retrieval(make_retrieval: MakeRetrieval, fake: FakeOpenAI) -> Retrieval:
    providers = {"fake": {"base_url": fake.base_url, "api_key_env": KEY_ENV, "model": "rr-1"}}
    harness = await make_retrieval(
        rerank_providers=providers, rerank_retries=2, allowed_hosts="http://127.0.0.2"
    )
    await harness.stub.CreateCollection(pb.CreateCollectionRequest(collection=vcol("Towers")))
    await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Towers",
            objects=[
                obj({"title": t, "body": b}, vector=[1.0, float(i), 0.0, 0.0])
                for i, (t, b) in enumerate(DOCS)
            ],
        )
    )
    return harness


def search(**rerank: object) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection="Towers",
        keyword=pb.Keyword(text=QUERY),
        limit=2,
        rerank=pb.Rerank(**rerank),  # type: ignore[arg-type]
    )


async def test_a_provider_reranks_the_candidates_and_the_page_keeps_both_scores(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    plain = await retrieval.stub.Search(
        pb.SearchRequest(collection="Towers", keyword=pb.Keyword(text=QUERY), limit=6)
    )
    assert plain.hits[0].properties["title"] == "tower four"
    # This reranker likes London best, whatever BM25 thinks.
    fake.rerank_score = lambda q, d: 1.0 if "london" in d else word_overlap(q, d) / 2
    response = await retrieval.stub.Search(search(provider="fake", candidates=6))
    assert [h.properties["title"] for h in response.hits] == ["tower three", "tower four"]
    assert [h.rerank_score for h in response.hits] == [pytest.approx(1.0), pytest.approx(0.5)]
    by_id = {h.id: h.score for h in plain.hits}
    for hit in response.hits:
        assert hit.score == pytest.approx(by_id[hit.id])  # the retrieval score stays
    [sent] = fake.rerank_requests
    assert sent.json["model"] == "rr-1"
    assert sent.json["query"] == QUERY
    assert sent.json["top_n"] == 2
    assert len(sent.json["documents"]) == 6
    assert sent.headers["Authorization"] == f"Bearer {KEY}"


async def test_offset_pages_through_the_reranked_order(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    first = await retrieval.stub.Search(search(provider="fake", candidates=6))
    request = search(provider="fake", candidates=6)
    request.offset = 1
    second = await retrieval.stub.Search(request)
    assert second.hits[0].id == first.hits[1].id


async def test_a_retry_after_is_waited_for_up_to_the_searchs_deadline(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    # The default cap (a day) leaves only the deadline: 2 s fits, and is waited for.
    fake.enqueue(Behaviour.rate_limited(retry_after="2"))
    response = await retrieval.stub.Search(search(provider="fake", candidates=6))
    assert response.hits[0].properties["title"] == "tower four"
    assert len(fake.rerank_requests) == 2
    # 90 s does not fit the Search's 10 s deadline: nothing sleeps, the caller learns when
    # to come back (before: UNAVAILABLE, RERANK_UNAVAILABLE, no RetryInfo).
    fake.enqueue(Behaviour.rate_limited(retry_after="90"))
    err = await expect_error(
        retrieval.stub.Search(search(provider="fake", candidates=6), timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert error_info(err).reason == "RERANK_RATE_LIMITED"
    assert retry_delay(err) == 90.0
    assert len(fake.rerank_requests) == 3


async def test_a_provider_that_keeps_failing_is_unavailable(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    fake.fail_next(5, Behaviour.error(503))
    err = await expect_error(
        retrieval.stub.Search(search(provider="fake", candidates=6)), grpc.StatusCode.UNAVAILABLE
    )
    assert error_info(err).reason == "RERANK_UNAVAILABLE"
    assert KEY not in (err.details() or "")
    assert err.details() == "rerank provider 'fake' failed (HTTP 503)"
    assert len(fake.rerank_requests) == 3  # rerank_retries=2


async def test_a_malformed_answer_is_unavailable(retrieval: Retrieval, fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour.malformed())
    err = await expect_error(
        retrieval.stub.Search(search(provider="fake")), grpc.StatusCode.UNAVAILABLE
    )
    assert error_info(err).reason == "RERANK_UNAVAILABLE"


async def test_an_answer_nested_too_deep_is_unavailable(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    # 100 KB of "[": json.loads raised RecursionError, and the search failed INTERNAL.
    fake.enqueue(Behaviour.error(200, "[" * 100_000, {"Content-Type": "application/json"}))
    err = await expect_error(
        retrieval.stub.Search(search(provider="fake")), grpc.StatusCode.UNAVAILABLE
    )
    assert error_info(err).reason == "RERANK_UNAVAILABLE"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
async def test_a_score_that_is_not_a_finite_number_is_unavailable(
    retrieval: Retrieval, fake: FakeOpenAI, bad: float
) -> None:
    # JSON's NaN and 1e309 parse as floats; before, they came back as rerank_score and the
    # hits were sorted on them in no defined order.
    fake.rerank_score = lambda query, document: bad
    err = await expect_error(
        retrieval.stub.Search(search(provider="fake")), grpc.StatusCode.UNAVAILABLE
    )
    assert error_info(err).reason == "RERANK_UNAVAILABLE"


async def test_a_host_off_the_allowlist_is_refused_before_any_request(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    err = await expect_error(
        retrieval.stub.Search(search(base_url=fake.base_url)),
        grpc.StatusCode.PERMISSION_DENIED,
        field="rerank.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert fake.rerank_requests == []


async def test_a_callers_endpoint_gets_the_callers_key_only(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    harness = await make_retrieval(
        data_dir=None, allowed_hosts="http://127.0.0.1", rerank_providers={}
    )
    await harness.stub.CreateCollection(pb.CreateCollectionRequest(collection=vcol("Towers")))
    await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Towers",
            objects=[
                obj({"title": t, "body": b}, vector=[1, i, 0, 0]) for i, (t, b) in enumerate(DOCS)
            ],
        )
    )
    response = await harness.stub.Search(
        search(base_url=fake.base_url), metadata=(("x-rerank-api-key", "caller-key"),)
    )
    assert response.hits[0].properties["title"] == "tower four"
    [sent] = fake.rerank_requests
    assert sent.headers["Authorization"] == "Bearer caller-key"
    assert "model" not in sent.json


@pytest.mark.parametrize(
    ("rerank", "field", "code"),
    [
        ({"provider": "nope"}, "rerank.provider", grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"provider": "fake", "candidates": 1},
            "rerank.candidates",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"candidates": 100_000}, "rerank.candidates", grpc.StatusCode.INVALID_ARGUMENT),
        ({"mmr_lambda": 2.0}, "rerank.mmr_lambda", grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"provider": "fake", "mmr_lambda": 0.5},
            "rerank.mmr_lambda",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"properties": ["year"]}, "rerank.properties[0]", grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"provider": "fake", "base_url": "http://127.0.0.2/v1"},
            "rerank.base_url",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
async def test_bad_rerank_blocks_name_their_field(
    retrieval: Retrieval, rerank: dict[str, object], field: str, code: grpc.StatusCode
) -> None:
    err = await expect_error(retrieval.stub.Search(search(**rerank)), code, field=field)
    assert error_info(err).domain == "gensearch"


async def test_candidates_past_their_setting_name_it(retrieval: Retrieval) -> None:
    """A request's and a collection's rerank.candidates past MAX_RERANK_CANDIDATES name the
    bound and the setting (the request's gave neither, the collection's no setting)."""
    collection = vcol("TooMany")
    collection.rerank.CopyFrom(pb.Rerank(candidates=201))
    for call, field in (
        (retrieval.stub.Search(search(candidates=100_000)), "rerank.candidates"),
        (
            retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
            "collection.rerank.candidates",
        ),
    ):
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field=field)
        assert error_info(err).reason == "OUT_OF_RANGE"
        metadata = dict(error_info(err).metadata)
        assert metadata["max"] == "200", metadata
        assert metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_RERANK_CANDIDATES", metadata


@pytest.mark.parametrize(
    "rerank",
    [
        {"provider": "fake", "model": "rr\n1"},
        {"provider": "fake", "model": "m" * 257},
        {"provider": "fake", "model": "   "},
        {"base_url": "http://127.0.0.2:9/v1", "model": "rr\x001"},
    ],
)
async def test_a_rerank_model_of_no_model_names_shape_is_refused_before_any_request(
    retrieval: Retrieval, fake: FakeOpenAI, rerank: dict[str, object]
) -> None:
    # It went upstream as it was and named the client span ("rerank <model>"), whatever
    # its length; the providers' configured models are held to the same shape at start.
    await expect_error(
        retrieval.stub.Search(search(**rerank)), grpc.StatusCode.INVALID_ARGUMENT, "rerank.model"
    )
    collection = vcol("WithModel")
    collection.rerank.CopyFrom(pb.Rerank(**rerank))  # type: ignore[arg-type]
    await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection.rerank.model",
    )
    assert fake.rerank_requests == []


async def test_near_vector_needs_a_rerank_query(retrieval: Retrieval) -> None:
    request = pb.SearchRequest(
        collection="Towers",
        near_vector=pb.NearVector(vector=[1, 0, 0, 0]),
        limit=2,
        rerank=pb.Rerank(provider="fake"),
    )
    await expect_error(
        retrieval.stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field="rerank.query"
    )
    request.rerank.query = QUERY
    response = await retrieval.stub.Search(request)
    assert response.hits[0].properties["title"] == "tower four"


def test_provider_settings_are_checked() -> None:
    from pydantic import ValidationError

    from services.retrieval.settings import RetrievalSettings

    with pytest.raises(ValidationError):
        RetrievalSettings(rerank_providers={"mmr": {"base_url": "http://x/v1"}})
    with pytest.raises(ValidationError):
        RetrievalSettings(rerank_providers={"a": {"base_url": "ftp://x"}})
    with pytest.raises(ValidationError):
        RetrievalSettings(
            rerank_providers={"a": {"base_url": "http://x", "api_key_env": "GENSEARCH_X"}}
        )
    loaded = RetrievalSettings.model_validate(
        {"rerank_providers": json.loads('{"tei": {"base_url": "http://tei:8080/v1"}}')}
    )
    assert loaded.rerank_providers["tei"].base_url == "http://tei:8080/v1"


# -- local MMR --------------------------------------------------------------------------

MMR_DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "The Eiffel Tower is a wrought iron lattice tower located in Paris, France.",
    "The Eiffel Tower, a wrought-iron lattice tower, stands in Paris in France.",
    "Paris is the capital of France and home to the Louvre museum.",
    "Bananas are rich in potassium.",
]


async def test_mmr_demotes_near_duplicates(retrieval: Retrieval) -> None:
    stub = retrieval.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            collection=pb.Collection(name="Sights", properties=props(("text", pb.DATA_TYPE_TEXT)))
        )
    )
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Sights", objects=[obj({"text": t}) for t in MMR_DOCS])
    )
    query = "Eiffel Tower in Paris France"
    plain = await stub.Search(
        pb.SearchRequest(collection="Sights", near_text=pb.NearText(text=query), limit=3)
    )
    plain_texts = [h.properties["text"] for h in plain.hits]
    assert MMR_DOCS[3] not in plain_texts  # the three near-duplicates come first
    diverse = await stub.Search(
        pb.SearchRequest(
            collection="Sights",
            near_text=pb.NearText(text=query),
            limit=3,
            rerank=pb.Rerank(provider="mmr", mmr_lambda=0.5, candidates=5),
        )
    )
    texts = [h.properties["text"] for h in diverse.hits]
    assert texts[0] == plain_texts[0]
    assert MMR_DOCS[3] in texts[:2]  # the different passage moved above a duplicate
    assert all(h.HasField("rerank_score") for h in diverse.hits)
    assert not diverse.hits[0].vector  # vectors were read for MMR, not returned
    # lambda 1 is pure relevance: the retrieval order.
    relevance = await stub.Search(
        pb.SearchRequest(
            collection="Sights",
            near_text=pb.NearText(text=query),
            limit=3,
            rerank=pb.Rerank(mmr_lambda=1.0),
        )
    )
    assert [h.id for h in relevance.hits] == [h.id for h in plain.hits]


async def test_mmr_embeds_hits_of_collections_without_the_local_model(
    retrieval: Retrieval,
) -> None:
    response = await retrieval.stub.Search(search(mmr_lambda=0.7, candidates=6))
    assert len(response.hits) == 2
    assert all(h.HasField("rerank_score") for h in response.hits)


async def test_a_hanging_provider_is_given_up_within_the_rerank_timeout(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    providers = {"fake": {"base_url": fake.base_url}}
    harness = await make_retrieval(rerank_providers=providers, rerank_timeout=0.5)
    await harness.stub.CreateCollection(pb.CreateCollectionRequest(collection=vcol("Towers")))
    await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Towers",
            objects=[obj({"title": t, "body": b}, vector=[1, 0, 0, 0]) for t, b in DOCS],
        )
    )
    fake.enqueue(Behaviour.hang(30))
    err = await expect_error(
        harness.stub.Search(search(provider="fake"), timeout=20), grpc.StatusCode.UNAVAILABLE
    )
    assert "no answer in time" in (err.details() or "")


async def test_each_rerank_call_has_a_span(
    retrieval: Retrieval, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    await retrieval.stub.Search(search(provider="fake"))
    fake.fail_next(3, Behaviour.error(500))
    await expect_error(retrieval.stub.Search(search(provider="fake")), grpc.StatusCode.UNAVAILABLE)
    ok, failed = [s for s in spans.get_finished_spans() if s.name == "rerank rr-1"]
    assert ok.kind == SpanKind.CLIENT
    attrs = dict(ok.attributes or {})
    assert attrs["gen_ai.operation.name"] == "rerank"
    assert attrs["gen_ai.provider.name"] == "fake"
    assert attrs["gensearch.upstream.attempts"] == 1
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "RERANK_UNAVAILABLE"
    assert (failed.attributes or {})["gensearch.upstream.attempts"] == 3
    for span in (ok, failed):
        text = " ".join(str(v) for v in (span.attributes or {}).values())
        assert KEY not in text and "paris" not in text
    await retrieval.stub.Search(search(mmr_lambda=0.5))
    assert any(s.name == "rerank mmr" for s in spans.get_finished_spans())


@pytest.mark.parametrize(
    ("rerank", "field"),
    [
        (pb.Rerank(query="fixed"), "collection.rerank.query"),
        (pb.Rerank(mmr_lambda=1.5), "collection.rerank.mmr_lambda"),
        (pb.Rerank(candidates=-1), "collection.rerank.candidates"),
        # Past MAX_RERANK_CANDIDATES (200): stored before, then every search using the
        # default failed INVALID_ARGUMENT naming the request's rerank.candidates.
        (pb.Rerank(candidates=201), "collection.rerank.candidates"),
        (pb.Rerank(properties=["title", "year"]), "collection.rerank.properties[1]"),
    ],
)
async def test_a_collections_rerank_default_is_checked(
    retrieval: Retrieval, rerank: pb.Rerank, field: str
) -> None:
    collection = vcol("Defaults")
    collection.rerank.CopyFrom(rerank)
    await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
        grpc.StatusCode.INVALID_ARGUMENT,
        field=field,
    )


@pytest.mark.parametrize(
    ("rerank", "field", "code", "reason"),
    [
        # Both used to be accepted, and refused only at the first search using them.
        (
            {"base_url": "http://127.0.0.1:9/v1"},
            "collection.rerank.base_url",
            grpc.StatusCode.PERMISSION_DENIED,
            "URL_NOT_ALLOWED",
        ),
        (
            {"provider": "nope"},
            "collection.rerank.provider",
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_PROVIDER",
        ),
        (
            {"provider": "fake", "base_url": "http://127.0.0.2/v1"},
            "collection.rerank.base_url",
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        (
            {"provider": "fake", "mmr_lambda": 0.5},
            "collection.rerank.mmr_lambda",
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
    ],
)
async def test_a_collections_rerank_endpoint_is_checked_at_creation(
    retrieval: Retrieval,
    rerank: dict[str, object],
    field: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    collection = vcol("Defaults")
    collection.rerank.CopyFrom(pb.Rerank(**rerank))  # type: ignore[arg-type]
    err = await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
        code,
        field=field,
    )
    assert error_info(err).reason == reason
    names = await retrieval.stub.ListCollections(pb.ListCollectionsRequest())
    assert "Defaults" not in [c.name for c in names.collections]


async def test_a_collections_rerank_endpoint_is_checked_again_at_use(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    """The operator may tighten the allowlist after a collection named an endpoint."""
    before = await make_retrieval(allowed_hosts="http://127.0.0.1")
    collection = vcol("Ranked")
    collection.rerank.CopyFrom(pb.Rerank(base_url=fake.base_url))
    await before.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    await before.stop()
    after = await make_retrieval(allowed_hosts="http://127.0.0.2")
    request = pb.SearchRequest(
        collection="Ranked", keyword=pb.Keyword(text=QUERY), use_collection_rerank=True
    )
    err = await expect_error(
        after.stub.Search(request), grpc.StatusCode.PERMISSION_DENIED, field="rerank.base_url"
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert fake.rerank_requests == []


async def test_a_collections_rerank_url_outlives_a_lowered_max_url_chars(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    """GENSEARCH_RETRIEVAL_MAX_URL_CHARS bounds the URLs callers send: lowered below a
    collection's stored default rerank URL (held to the bound of its day), it refused
    every later search using that default. The URL keeps working, whether retrieval
    applies the default or the gateway copies it onto the search; a caller naming a URL
    that long is refused, and the allowlist is still read at every use (the test above)."""
    before = await make_retrieval(allowed_hosts="http://127.0.0.1")
    collection = vcol("Ranked")
    collection.rerank.CopyFrom(pb.Rerank(base_url=fake.base_url))
    await before.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    await before.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Ranked",
            objects=[
                obj({"title": t, "body": b}, vector=[1, i, 0, 0]) for i, (t, b) in enumerate(DOCS)
            ],
        )
    )
    await before.stop()
    assert len(fake.base_url) > 16
    after = await make_retrieval(
        data_dir=before.settings.data_dir, allowed_hosts="http://127.0.0.1", max_url_chars=16
    )
    applied = pb.SearchRequest(
        collection="Ranked", keyword=pb.Keyword(text=QUERY), use_collection_rerank=True
    )
    copied = pb.SearchRequest(
        collection="Ranked",
        keyword=pb.Keyword(text=QUERY),
        rerank=pb.Rerank(base_url=fake.base_url),
    )
    for request in (applied, copied):
        response = await after.stub.Search(request)
        assert response.hits[0].properties["title"] == "tower four"
    assert len(fake.rerank_requests) == 2
    other = pb.SearchRequest(
        collection="Ranked",
        keyword=pb.Keyword(text=QUERY),
        rerank=pb.Rerank(base_url=fake.base_url + "/"),
    )
    err = await expect_error(
        after.stub.Search(other), grpc.StatusCode.INVALID_ARGUMENT, field="rerank.base_url"
    )
    assert error_info(err).reason == "FIELD_TOO_LARGE"
    assert len(fake.rerank_requests) == 2


async def test_a_collections_rerank_default_is_kept(retrieval: Retrieval) -> None:
    collection = vcol("Defaults")
    collection.rerank.CopyFrom(pb.Rerank(provider="fake", candidates=20))
    created = await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=collection)
    )
    assert created.collection.rerank.candidates == 20


def test_answers_in_either_common_shape_are_read() -> None:
    from services.retrieval.rerankers import parse_results

    cohere = {
        "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.2}]
    }
    assert parse_results(cohere, 2, "p") == [(1, 0.9), (0, 0.2)]
    assert parse_results([{"index": 0, "score": 0.3}, {"index": 1, "score": 0.7}], 2, "p") == [
        (1, 0.7),
        (0, 0.3),
    ]
    for bad in (
        {"results": [{"index": 5, "relevance_score": 1}]},
        {"results": "x"},
        [{"index": 0}],
    ):
        with pytest.raises(Exception, match="malformed"):
            parse_results(bad, 2, "p")


async def _ranked_by_default(retrieval: Retrieval, candidates: int) -> None:
    """The collection "Ranked" holding DOCS, reranked by default by the fake over
    ``candidates``."""
    collection = vcol("Ranked")
    collection.rerank.CopyFrom(pb.Rerank(provider="fake", candidates=candidates))
    await retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    await retrieval.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Ranked",
            objects=[
                obj({"title": t, "body": b}, vector=[1.0, float(i), 0.0, 0.0])
                for i, (t, b) in enumerate(DOCS)
            ],
        )
    )


async def test_a_collections_default_candidates_grow_with_the_page(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    """The collection's candidates are a default, raised to offset + limit like
    RERANK_CANDIDATES: a longer page was INVALID_ARGUMENT naming rerank.candidates, a
    field the search never set. A request's own candidates stay as given."""
    await _ranked_by_default(retrieval, candidates=3)
    fake.rerank_score = lambda q, d: word_overlap(q, d)
    request = pb.SearchRequest(
        collection="Ranked",
        keyword=pb.Keyword(text=QUERY),
        limit=2,
        offset=2,
        use_collection_rerank=True,
    )
    ranked = await retrieval.stub.Search(request)
    assert all(h.HasField("rerank_score") for h in ranked.hits)
    [sent] = fake.rerank_requests
    assert len(sent.json["documents"]) == 4
    request.rerank.CopyFrom(pb.Rerank(provider="fake", candidates=3))
    await expect_error(
        retrieval.stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, "rerank.candidates"
    )
    # A page past MAX_RERANK_CANDIDATES (200) is the page's fault, not the default's; the
    # offset is the larger part here, and is named (it was always limit).
    request.ClearField("rerank")
    request.limit, request.offset = 100, 150
    err = await expect_error(
        retrieval.stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, "offset"
    )
    assert error_info(err).reason == "OUT_OF_RANGE"


@pytest.mark.parametrize(
    ("offset", "limit", "field", "tail"),
    [
        (15, 10, "offset", "lower offset, the larger of the two"),
        (25, 0, "offset", "lower offset, the larger of the two"),  # limit 0: the default 10
        (5, 16, "limit", "lower limit, the larger of the two"),
        (11, 11, "offset", "lower offset, as large as limit"),
    ],
)
async def test_a_reranked_page_too_deep_names_the_larger_of_offset_and_limit(
    make_retrieval: MakeRetrieval, offset: int, limit: int, field: str, tail: str
) -> None:
    """offset + limit past MAX_RERANK_CANDIDATES named limit whatever the two were: a
    client paging deep with a small limit was told to shrink the limit. The larger of the
    two is named (offset on a tie), the message says why, the metadata holds both."""
    harness = await make_retrieval(max_rerank_candidates=20)
    await harness.stub.CreateCollection(pb.CreateCollectionRequest(collection=vcol("Towers")))
    request = pb.SearchRequest(
        collection="Towers",
        near_vector=pb.NearVector(vector=[1.0, 0.0, 0.0, 0.0]),
        limit=limit,
        offset=offset,
        rerank=pb.Rerank(query="tower"),
    )
    err = await expect_error(harness.stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
    limit = limit or 10
    assert err.details() == (
        f"offset + limit ({offset} + {limit}) must be at most 20 with a rerank stage "
        f"(GENSEARCH_RETRIEVAL_MAX_RERANK_CANDIDATES): {tail}"
    )
    info = error_info(err)
    assert info.reason == "OUT_OF_RANGE"
    assert dict(info.metadata) == {
        "field": field,
        "offset": str(offset),
        "limit": str(limit),
        "max": "20",
        "setting": "GENSEARCH_RETRIEVAL_MAX_RERANK_CANDIDATES",
    }


async def test_use_collection_rerank_applies_the_collections_default(
    retrieval: Retrieval, fake: FakeOpenAI
) -> None:
    """``use_collection_rerank``: the default reranks a text query (one search, no block
    from the caller), never a near_vector one, and a request's own block wins."""
    await _ranked_by_default(retrieval, candidates=6)
    fake.rerank_score = lambda q, d: 1.0 if "london" in d else word_overlap(q, d) / 2
    request = pb.SearchRequest(collection="Ranked", keyword=pb.Keyword(text=QUERY), limit=2)
    plain = await retrieval.stub.Search(request)
    assert not plain.hits[0].HasField("rerank_score") and not fake.rerank_requests
    request.use_collection_rerank = True
    ranked = await retrieval.stub.Search(request)
    assert [h.properties["title"] for h in ranked.hits] == ["tower three", "tower four"]
    [sent] = fake.rerank_requests
    assert sent.json["query"] == QUERY and len(sent.json["documents"]) == 6
    # No text to rank against: the default stays out of a vector search.
    by_vector = pb.SearchRequest(
        collection="Ranked",
        near_vector=pb.NearVector(vector=[1.0, 0.0, 0.0, 0.0]),
        limit=2,
        use_collection_rerank=True,
    )
    unranked = await retrieval.stub.Search(by_vector)
    assert not unranked.hits[0].HasField("rerank_score")
    assert len(fake.rerank_requests) == 1
    # The request's own block wins over the default (MMR: no provider call).
    request.rerank.CopyFrom(pb.Rerank(mmr_lambda=0.5, candidates=6))
    await retrieval.stub.Search(request)
    assert len(fake.rerank_requests) == 1


async def test_a_redirect_is_not_followed_and_names_the_base_url(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    async with FakeOpenAI(host="127.0.0.2") as elsewhere:
        harness = await make_retrieval(
            data_dir=None, allowed_hosts="http://127.0.0.1", rerank_providers={}
        )
        await harness.stub.CreateCollection(pb.CreateCollectionRequest(collection=vcol("Towers")))
        await harness.stub.UpsertObjects(
            pb.UpsertObjectsRequest(
                collection="Towers",
                objects=[
                    obj({"title": t, "body": b}, vector=[1, i, 0, 0])
                    for i, (t, b) in enumerate(DOCS)
                ],
            )
        )
        fake.enqueue(Behaviour.error(307, headers={"Location": f"{elsewhere.base_url}/rerank"}))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.Search(
                search(base_url=fake.base_url), metadata=(("x-rerank-api-key", "caller-key"),)
            )
        assert elsewhere.requests == []
        assert len(fake.rerank_requests) == 1
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        info = error_info(caught.value)
        assert info.reason == "UPSTREAM_REDIRECT"
        assert info.metadata["field"] == "rerank.base_url"
        assert (caught.value.details() or "").startswith(
            "the rerank endpoint at rerank.base_url answered with a redirect (HTTP 307)"
        )


async def test_a_failing_reranker_is_named_alike_whatever_the_provider_is_called(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    """A caller's URL reranks under the provider name "endpoint", which an operator's
    provider may bear too: both failures read "the rerank endpoint of 'endpoint'" before.
    The message names an operator's provider by its name and a caller's URL by its field;
    the ErrorInfo stays as it was."""
    providers = {"endpoint": {"base_url": fake.base_url, "api_key_env": KEY_ENV}}
    harness = await make_retrieval(
        rerank_providers=providers, rerank_retries=0, allowed_hosts="http://127.0.0.1"
    )
    await harness.stub.CreateCollection(pb.CreateCollectionRequest(collection=vcol("Towers")))
    await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Towers",
            objects=[
                obj({"title": t, "body": b}, vector=[1, i, 0, 0]) for i, (t, b) in enumerate(DOCS)
            ],
        )
    )
    for rerank, said in (
        ({"provider": "endpoint"}, "rerank provider 'endpoint' failed (HTTP 500)"),
        ({"base_url": fake.base_url}, "the rerank endpoint at rerank.base_url failed (HTTP 500)"),
    ):
        fake.enqueue(Behaviour.error(500))
        err = await expect_error(harness.stub.Search(search(**rerank)), grpc.StatusCode.UNAVAILABLE)
        assert err.details() == said
        info = error_info(err)
        assert info.reason == "RERANK_UNAVAILABLE"
        assert dict(info.metadata) == {"provider": "endpoint"}
    fake.enqueue(Behaviour.malformed())
    err = await expect_error(
        harness.stub.Search(search(provider="endpoint")), grpc.StatusCode.UNAVAILABLE
    )
    assert err.details() == "rerank provider 'endpoint' answered with a malformed body"
