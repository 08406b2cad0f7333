"""The OpenAI-compatible vectorizer against a real loopback HTTP server.

Here the fake is the operator's endpoint: the operator pairs the test's key variable with
its base URL (``embedding_key_urls``). Callers' URLs and the allowlist: ``test_egress.py``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from services.retrieval.settings import RetrievalSettings
from tests.retrieval.conftest import (
    ARTICLE_PROPS,
    MakeRetrieval,
    Retrieval,
    expect_error,
    obj,
    remote_collection,
    remote_retrieval,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info, retry_delay

KEY_ENV = "TEST_EMBED_KEY"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, "sk-test-embedding-key-123")
    async with FakeOpenAI(embedding_dim=16, api_key="sk-test-embedding-key-123") as server:
        yield server


def remote(base_url: str, key_env: str = KEY_ENV) -> pb.Collection:
    return remote_collection(base_url, key_env)


@pytest.fixture
async def retrieval(make_retrieval: MakeRetrieval, fake: FakeOpenAI) -> Retrieval:
    # The operator's endpoint: the test's key variable goes to the fake, and only there.
    return await make_retrieval(embedding_key_urls={KEY_ENV: fake.base_url})


@pytest.fixture
async def stub(retrieval: Retrieval, fake: FakeOpenAI) -> Any:
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=remote(fake.base_url))
    )
    return retrieval.stub


@pytest.mark.parametrize("key_env", ["GENSEARCH_INTERNAL_TOKEN", "GENSEARCH_API_KEYS", "HOME"])
async def test_a_collection_cannot_name_a_variable_the_operator_did_not_pair_with_its_url(
    retrieval: Retrieval, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, key_env: str
) -> None:
    # The service would send that variable's value to the collection's URL as a bearer token.
    monkeypatch.setenv(key_env, "internal-secret-value")
    err = await expect_error(
        retrieval.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=remote(fake.base_url, key_env))
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.api_key_env",
    )
    assert error_info(err).reason == "KEY_NOT_ALLOWED"
    assert fake.requests == []


@pytest.mark.parametrize("key_env", ["GENSEARCH_INTERNAL_TOKEN", "gensearch_api_keys", "A B"])
def test_the_operator_cannot_pair_a_service_variable_with_an_endpoint(key_env: str) -> None:
    with pytest.raises(ValidationError) as err:
        RetrievalSettings(embedding_key_urls={key_env: "https://api.example.com/v1"})
    assert "cannot hold an embeddings key" in str(err.value)


async def test_embeds_objects_and_queries(stub: Any, fake: FakeOpenAI) -> None:
    titles = ["red apples", "green pears", "blue berries"]
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Remote", objects=[obj({"title": t, "body": "ignored"}) for t in titles]
        )
    )
    assert len(resp.ids) == 3 and not resp.errors
    sent = [r for r in fake.requests if r.path.endswith("/embeddings")]
    assert sent[0].json["input"] == titles  # one batched request, source property only
    assert sent[0].json["model"] == "text-embedding-3-small"
    assert sent[0].headers["Authorization"] == "Bearer sk-test-embedding-key-123"
    # The fake's vectors are a hash of the text: the exact text comes out on top.
    res = await stub.Search(
        pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="green pears"))
    )
    assert res.hits[0].properties["title"] == "green pears"
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert res.embed_ms > 0
    res = await stub.Search(
        pb.SearchRequest(collection="Remote", hybrid=pb.Hybrid(text="blue berries"))
    )
    assert res.hits[0].properties["title"] == "blue berries"


async def test_a_key_read_with_a_newline_around_it_is_sent_without(
    stub: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Kubernetes Secret made from a file holds its last newline. Generation strips its
    # provider keys; retrieval sent this one as read, and no HTTP header can carry it:
    # every UpsertObjects was UNAVAILABLE ("malformed body") for ever.
    monkeypatch.setenv(KEY_ENV, " sk-test-embedding-key-123\n")
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "red apples"})])
    )
    assert len(resp.ids) == 1 and not resp.errors
    sent = [r for r in fake.requests if r.path.endswith("/embeddings")]
    assert [r.headers["Authorization"] for r in sent] == ["Bearer sk-test-embedding-key-123"]


async def test_failing_endpoint_is_unavailable_and_writes_nothing(
    stub: Any, fake: FakeOpenAI
) -> None:
    fake.fail_next(10, Behaviour.error(500))
    err = await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert "sk-test" not in (err.details() or "")
    assert (err.details() or "").endswith("(HTTP 500); nothing was written")
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0
    err = await expect_error(
        stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="x"))),
        grpc.StatusCode.UNAVAILABLE,
    )
    # A read says what failed, not that nothing was written: it writes nothing anyway.
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert err.details() == "the embeddings endpoint failed (HTTP 500)"
    fake.clear_queue()

    # A transient 503 is retried and the write lands.
    fake.enqueue(Behaviour.error(503))
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "y"})])
    )
    assert len(resp.ids) == 1

    # A refused key is not retried; still UNAVAILABLE, never INTERNAL.
    fake.enqueue(Behaviour.unauthorized())
    await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "z"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )


async def test_a_body_nested_too_deep_is_unavailable_not_internal(
    stub: Any, fake: FakeOpenAI
) -> None:
    # 100 KB of "[": the SDK's json.loads raised RecursionError, and the write failed INTERNAL.
    fake.enqueue(Behaviour.error(200, "[" * 100_000, {"Content-Type": "application/json"}))
    err = await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0


async def test_an_answer_past_max_response_bytes_is_unavailable_and_not_read_whole(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    # Before: the SDK read an embeddings body whole, however large (a collection's own
    # endpoint could answer gigabytes into the retrieval service every tenant shares).
    retrieval = await remote_retrieval(
        make_retrieval, fake.base_url, KEY_ENV, max_response_bytes=4096
    )
    objects = [obj({"title": f"t{i}"}) for i in range(20)]  # 20 x 16 floats: > 4 KB of JSON
    err = await expect_error(
        retrieval.stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Remote", objects=objects)),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert "larger than 4096 bytes" in (err.details() or "")
    assert len(fake.requests) == 1  # not retried
    # One object's answer fits.
    await retrieval.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=objects[:1])
    )


async def test_unreachable_endpoint(make_retrieval: MakeRetrieval) -> None:
    retrieval = await make_retrieval(allowed_hosts="http://127.0.0.1")
    collection = pb.Collection(
        name="Gone",
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(
            kind=pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
            base_url="http://127.0.0.1:9/v1",
            dimensions=4,
        ),
    )
    await retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    await expect_error(
        retrieval.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Gone", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )


async def test_retry_after_is_honoured(stub: Any, fake: FakeOpenAI) -> None:
    # The same policy as the LLM calls: the server's Retry-After, not our backoff.
    fake.enqueue(Behaviour.rate_limited(retry_after="1"))
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "late"})])
    )
    assert len(resp.ids) == 1
    sent = [r for r in fake.requests if r.path.endswith("/embeddings")]
    assert len(sent) == 2
    assert sent[1].received_at - sent[0].received_at >= 0.95


# A Search or a write whose gRPC deadline (3 s) is shorter than the wait a 429 asks for
# (20 s) and than EMBED_TIMEOUT (30 s, the default). Before, only EMBED_TIMEOUT bounded the
# embeddings request: the 20 s wait was started, and the caller got the bare
# DEADLINE_EXCEEDED of its deadline instead of when to come back.
SHORT_DEADLINE = 3.0
LONG_WAIT = "20"


def _asked_once(fake: FakeOpenAI) -> None:
    assert len([r for r in fake.requests if r.path.endswith("/embeddings")]) == 1


@pytest.mark.parametrize(
    "query",
    [
        {"near_text": pb.NearText(text="x")},
        {"hybrid": pb.Hybrid(text="x", alpha=0.5)},
        # The reranked path (MMR: no provider needed) embeds the query the same way.
        {
            "near_text": pb.NearText(text="x"),
            "rerank": pb.Rerank(provider="mmr", mmr_lambda=0.5, candidates=10),
        },
    ],
    ids=["near_text", "hybrid", "reranked"],
)
async def test_a_search_whose_deadline_cannot_cover_the_wait_is_rate_limited_at_once(
    stub: Any, fake: FakeOpenAI, query: dict[str, Any]
) -> None:
    fake.enqueue(Behaviour.rate_limited(retry_after=LONG_WAIT))
    err = await expect_error(
        stub.Search(pb.SearchRequest(collection="Remote", **query), timeout=SHORT_DEADLINE),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    info = error_info(err)
    assert info.reason == "EMBEDDINGS_RATE_LIMITED", err.details()
    assert info.metadata["retry_after_ms"] == "20000"
    assert retry_delay(err) == 20.0
    assert "its deadline" in (err.details() or "")
    _asked_once(fake)


async def test_an_upsert_whose_deadline_cannot_cover_the_wait_is_rate_limited_at_once(
    stub: Any, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.rate_limited(retry_after=LONG_WAIT))
    err = await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})]),
            timeout=SHORT_DEADLINE,
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert error_info(err).reason == "EMBEDDINGS_RATE_LIMITED", err.details()
    assert retry_delay(err) == 20.0
    assert (err.details() or "").endswith("; nothing was written")
    _asked_once(fake)
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0


async def test_an_import_whose_deadline_cannot_cover_the_wait_is_rate_limited_at_once(
    stub: Any, fake: FakeOpenAI
) -> None:
    # The first message is embedded at once; the second gets the 429.
    fake.enqueue(Behaviour.ok(), Behaviour.rate_limited(retry_after=LONG_WAIT))

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Remote", objects=[obj({"title": "first"})])
        yield pb.ImportObjectsRequest(objects=[obj({"title": "second"})])

    err = await expect_error(
        stub.ImportObjects(stream(), timeout=SHORT_DEADLINE), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    info = error_info(err)
    assert info.reason == "EMBEDDINGS_RATE_LIMITED", err.details()
    assert info.metadata["retry_after_ms"] == "20000"
    assert retry_delay(err) == 20.0
    assert len([r for r in fake.requests if r.path.endswith("/embeddings")]) == 2
    # The first message's object is stored, as the error says.
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 1


async def test_an_import_cut_by_its_deadline_names_what_the_call_had_on_arrival(
    stub: Any, fake: FakeOpenAI
) -> None:
    # The second message's embeddings request begins after the client's 0.5 s pause and
    # never answers: ended before the call's 4 s deadline, DEADLINE_EXCEEDED whose
    # timeout_ms is what the call had when it arrived, as the chassis' own cut says
    # (call_deadline.ended_early). Before, it was what was left when that request began
    # (at most 3.5 s): the same status and reason, with another meaning.
    # The request ends call_deadline.upstream_margin (0.4 s) before the deadline, the
    # chassis' cut 0.2 s before it, and the request's status must leave first. The margins
    # were min(0.25 s, 10 % of the request's time left) and min(0.2 s, 5 %): 0.05-0.1 s
    # apart, which a loaded machine missed (the chassis' message came instead).
    fake.enqueue(Behaviour.ok(), Behaviour.hang())

    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Remote", objects=[obj({"title": "first"})])
        await asyncio.sleep(0.5)
        yield pb.ImportObjectsRequest(objects=[obj({"title": "second"})])

    err = await expect_error(
        stub.ImportObjects(stream(), timeout=4.0), grpc.StatusCode.DEADLINE_EXCEEDED
    )
    info = error_info(err)
    assert info.reason == "DEADLINE_EXCEEDED"
    assert (err.details() or "").startswith(
        "the embeddings endpoint did not answer before the call's deadline"
    )
    # gRPC rounds the timeout it sends up a little: not above 4000 ms.
    assert 3700 < int(info.metadata["timeout_ms"]) < 4500, dict(info.metadata)
    assert int(info.metadata["remaining_ms"]) < 1000, dict(info.metadata)


async def test_a_wait_the_deadline_covers_is_still_waited_for(stub: Any, fake: FakeOpenAI) -> None:
    # 1 s asked, 60 s of deadline (room for a loaded machine): waited for, then answered.
    fake.enqueue(Behaviour.rate_limited(retry_after="1"))
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "late"})]),
        timeout=60,
    )
    assert len(resp.ids) == 1
    fake.enqueue(Behaviour.rate_limited(retry_after="1"))
    found = await stub.Search(
        pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="late")), timeout=60
    )
    assert len(found.hits) == 1
    assert len([r for r in fake.requests if r.path.endswith("/embeddings")]) == 4


@pytest.mark.slow
async def test_a_retry_after_above_a_minute_is_waited_for_when_the_timeout_allows(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    # The case of the report: the shared policy's 60 s cap failed a request asked to wait
    # longer with time left. Waits 61 s.
    stub = (
        await remote_retrieval(make_retrieval, fake.base_url, KEY_ENV, embed_timeout=120.0)
    ).stub
    fake.enqueue(Behaviour.rate_limited(retry_after="61"))
    resp = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "late"})]),
        timeout=180,
    )
    assert len(resp.ids) == 1
    assert len([r for r in fake.requests if r.path.endswith("/embeddings")]) == 2


def test_retry_after_max_defaults_to_a_day() -> None:
    assert RetrievalSettings().retry_after_max == 86400.0
    with pytest.raises(ValidationError):
        RetrievalSettings(retry_after_max=-1)


async def test_a_hanging_endpoint_fails_within_the_timeout(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    harness = await remote_retrieval(make_retrieval, fake.base_url, KEY_ENV, embed_timeout=0.5)
    fake.enqueue(Behaviour.hang())
    started = time.perf_counter()
    err = await expect_error(
        harness.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    # Ended by the 0.5 s embed timeout, not the endpoint (which never answers); the bound
    # was 2 s, little room for a loaded machine: the client sets no deadline here.
    assert time.perf_counter() - started < 20
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"


async def test_each_embeddings_call_has_a_span(
    stub: Any, fake: FakeOpenAI, spans: InMemorySpanExporter
) -> None:
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Remote", objects=[obj({"title": "red apples and pears"})]
        )
    )
    fake.fail_next(3, Behaviour.error(500))
    await expect_error(
        stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="pears"))),
        grpc.StatusCode.UNAVAILABLE,
    )
    ok, failed = [
        s for s in spans.get_finished_spans() if s.name == "embeddings text-embedding-3-small"
    ]
    assert ok.kind == SpanKind.CLIENT
    attrs = dict(ok.attributes or {})
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.request.model"] == "text-embedding-3-small"
    assert attrs["gen_ai.usage.input_tokens"] == 4  # the fake counts words
    assert attrs["gensearch.upstream.attempts"] == 1
    assert ok.status.status_code == StatusCode.UNSET
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "EMBEDDINGS_UNAVAILABLE"
    assert (failed.attributes or {})["gensearch.upstream.attempts"] == 3
    # Each retry is an event of the call's span: the attempt that failed, why, the wait.
    retries = [
        dict(e.attributes or {}) for e in failed.events if e.name == "gensearch.upstream.retry"
    ]
    assert [(r["gensearch.upstream.attempt"], r["gensearch.upstream.cause"]) for r in retries] == [
        (1, "HTTP 500"),
        (2, "HTTP 500"),
    ]
    assert not [e for e in ok.events if e.name == "gensearch.upstream.retry"]
    for span in (ok, failed):
        text = " ".join(str(v) for v in (span.attributes or {}).values())
        assert "sk-test" not in text
        assert "apples" not in text and "pears" not in text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_a_vector_holding_nan_or_infinity_is_unavailable_and_writes_nothing(
    stub: Any, fake: FakeOpenAI, bad: float
) -> None:
    # Before, the vector was stored (never found again) and a query searched with it
    # (no hits, no error), silently.
    fake.embedding_override = lambda text: [bad] + [0.25] * 15
    err = await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert (err.details() or "").endswith("NaN or infinity; nothing was written")
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0
    err = await expect_error(
        stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="x"))),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert "written" not in (err.details() or "")


async def test_cosine_vectors_of_the_endpoint_are_normalised_like_a_callers(
    stub: Any, fake: FakeOpenAI
) -> None:
    # QA: the endpoint's vectors skipped check_vector's float64 normalisation: [1e20] * 16
    # (finite, so accepted) overflowed the engine's float32 length and was stored as all
    # zeros, and an all-zero vector was stored, scoring 0 against everything.
    fake.embedding_override = lambda text: [1e20] * 16
    written = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})])
    )
    got = await stub.GetObject(
        pb.GetObjectRequest(collection="Remote", id=written.ids[0], include_vector=True)
    )
    assert list(got.object.vector) == pytest.approx([0.25] * 16)
    fake.embedding_override = lambda text: [1e200] * 16  # a double: float64 overflows too
    res = await stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="x")))
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-4)
    fake.embedding_override = lambda text: [0.0] * 16
    err = await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "y"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 1
    err = await expect_error(
        stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="x"))),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"


@pytest.mark.parametrize(
    "model",
    ["m" * 257, "text-embedding\n3-small", "model\x00", "   "],
    ids=["long", "nl", "nul", "spaces"],
)
async def test_a_vectorizer_model_of_no_model_names_shape_is_refused_at_creation(
    retrieval: Retrieval, fake: FakeOpenAI, model: str
) -> None:
    """It goes upstream in every embeddings body and into each call's span name, as a
    rerank or generative model does; those are held to the model-name shape, and this one
    was stored as sent."""
    collection = remote(fake.base_url)
    collection.vectorizer.model = model
    await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=collection)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection.vectorizer.model",
    )
    listed = await retrieval.stub.ListCollections(pb.ListCollectionsRequest())
    assert not listed.collections and fake.requests == []


@pytest.mark.parametrize("distance", [pb.DISTANCE_DOT, pb.DISTANCE_EUCLID])
async def test_an_endpoint_vector_too_long_for_float32_scores_is_unavailable(
    retrieval: Retrieval, fake: FakeOpenAI, distance: int
) -> None:
    # As a caller's (schema.check_vector): in a dot or Euclid collection [1e20] * 16 was
    # stored, and every score with it overflowed float32, so it was never found again.
    collection = remote(fake.base_url)
    collection.vectorizer.distance = distance
    stub = retrieval.stub
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    fake.embedding_override = lambda text: [1e20] * 16
    err = await expect_error(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    assert "2^62" in err.details()
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0
    err = await expect_error(
        stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="x"))),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert error_info(err).reason == "EMBEDDINGS_UNAVAILABLE"
    fake.embedding_override = lambda text: [2.0**59] * 16  # length 2^61: within
    written = await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "y"})])
    )
    assert not written.errors
    res = await stub.Search(pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="y")))
    assert [h.id for h in res.hits] == list(written.ids)
    assert math.isfinite(res.hits[0].score)


def _embedding_calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/embeddings"))


@pytest.mark.parametrize(
    ("status", "code"), [(413, "context_length_exceeded"), (400, None), (422, "sk-12345-key")]
)
async def test_an_object_whose_text_the_endpoint_refuses_is_its_own_error(
    stub: Any, fake: FakeOpenAI, status: int, code: Any
) -> None:
    # A 4xx that is the input's fault (a 5 MB text too large for the model) was UNAVAILABLE /
    # EMBEDDINGS_UNAVAILABLE for the whole call: a retry that could never succeed.
    fake.max_embedding_chars, fake.oversize_status, fake.oversize_code = 1000, status, code
    huge = "secret-text " * 500
    objects = [obj({"title": "red apples"}), obj({"title": huge}), obj({"title": "green pears"})]
    resp = await stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Remote", objects=objects))
    assert len(resp.ids) == 2
    [error] = resp.errors
    assert (error.index, error.field) == (1, "properties.title")
    assert f"HTTP {status}" in error.message and "6000 characters" in error.message
    assert ("code context_length_exceeded" in error.message) == (code is not None and status == 413)
    for secret in ("sk-", "secret-text", "Bearer"):
        assert secret not in error.message
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 2
    # Not retried: the whole batch, then its halves, then the refused half's halves.
    assert _embedding_calls(fake) == 5

    # A query text: the whole call, naming the field, and asked once.
    for request, field in [
        (pb.SearchRequest(collection="Remote", near_text=pb.NearText(text=huge)), "near_text.text"),
        (pb.SearchRequest(collection="Remote", hybrid=pb.Hybrid(text=huge)), "hybrid.text"),
    ]:
        before = _embedding_calls(fake)
        err = await expect_error(stub.Search(request), grpc.StatusCode.INVALID_ARGUMENT, field)
        info = error_info(err)
        assert info.reason == "EMBEDDING_INPUT_REJECTED"
        assert info.metadata["http_status"] == str(status)
        assert info.metadata["collection"] == "Remote"
        for secret in ("sk-", "secret-text", "Bearer"):
            assert secret not in (err.details() or "")
        assert _embedding_calls(fake) == before + 1

    # In an import stream too: the object's error, and the stream goes on.
    async def stream() -> AsyncIterator[pb.ImportObjectsRequest]:
        yield pb.ImportObjectsRequest(collection="Remote", objects=[obj({"title": huge})])
        yield pb.ImportObjectsRequest(objects=[obj({"title": "blue berries"})])

    answer = await stub.ImportObjects(stream())
    assert (answer.received_count, answer.imported_count) == (2, 1)
    assert [(e.index, e.field) for e in answer.errors] == [(0, "properties.title")]


async def test_an_endpoint_refusing_every_text_is_not_asked_once_per_object(
    stub: Any, fake: FakeOpenAI
) -> None:
    # Every text refused (a model the endpoint does not serve may answer 400 so): the
    # search for the refused objects stops at its budget, and the call names objects.
    fake.max_embedding_chars, fake.oversize_status = 3, 400
    objects = [obj({"title": f"title {i}"}) for i in range(200)]
    err = await expect_error(
        stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Remote", objects=objects)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "objects",
    )
    assert error_info(err).reason == "EMBEDDING_INPUT_REJECTED"
    assert _embedding_calls(fake) <= 66
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0
    # 401 (the key), 5xx, 429 stay UNAVAILABLE: test_failing_endpoint_is_unavailable_...


async def test_an_upsert_does_not_land_in_a_collection_created_while_it_embedded(
    stub: Any, fake: FakeOpenAI, retrieval: Retrieval
) -> None:
    # The collection was looked up by name before embedding and written by name after: one
    # deleted and created again under that name in between got the objects.
    fake.latency = 1.0
    call = asyncio.ensure_future(
        stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Remote", objects=[obj({"title": "late"})]),
            timeout=30,
        )
    )
    await fake.wait_for_requests(1)
    await stub.DeleteCollection(pb.DeleteCollectionRequest(name="Remote"))
    await stub.CreateCollection(pb.CreateCollectionRequest(collection=remote(fake.base_url)))
    err = await expect_error(call, grpc.StatusCode.NOT_FOUND, "collection")
    assert "deleted after this call started" in (err.details() or "")
    fake.latency = 0.0
    assert (await stub.CountObjects(pb.CountObjectsRequest(collection="Remote"))).count == 0


async def test_the_isolation_budget_is_a_setting_the_refusal_names(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI
) -> None:
    # GENSEARCH_RETRIEVAL_MAX_ISOLATION_CALLS (was a fixed 64, named by no refusal).
    retrieval = await make_retrieval(
        embedding_key_urls={KEY_ENV: fake.base_url}, max_isolation_calls=5
    )
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=remote(fake.base_url))
    )
    fake.max_embedding_chars, fake.oversize_status = 3, 400
    objects = [obj({"title": f"title {i}"}) for i in range(200)]
    err = await expect_error(
        retrieval.stub.UpsertObjects(pb.UpsertObjectsRequest(collection="Remote", objects=objects)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "objects",
    )
    info = error_info(err)
    assert info.reason == "EMBEDDING_INPUT_REJECTED"
    assert (info.metadata["max"], info.metadata["setting"]) == (
        "5",
        "GENSEARCH_RETRIEVAL_MAX_ISOLATION_CALLS",
    )
    assert _embedding_calls(fake) <= 7
