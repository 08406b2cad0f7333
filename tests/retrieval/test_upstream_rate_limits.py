"""429s and retries of the retrieval service's two OpenAI-compatible upstreams alike: an
embeddings endpoint (a Search's query) and a rerank provider (a reranked Search), both the
real loopback fake (``services/retrieval/upstream.py``; docs/retrieval.md#a-429s-retry-after).

As in generation, a 429 spends none of ``EMBED_RETRIES`` / ``RERANK_RETRIES``: it is retried
after its wait for as long as the request's deadline allows, and ends RESOURCE_EXHAUSTED with
a RetryInfo only when the deadline (or RETRY_AFTER_MAX) cannot hold the wait. 5xx and
connection faults still spend the retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import MakeRetrieval, expect_error, obj, remote_retrieval
from tests.retrieval.conftest import vector_collection as vcol
from tests.support.fake_openai import Behaviour, FakeOpenAI, RecordedRequest
from tests.support.rpc import error_info, retry_delay

KEY_ENV = "TEST_UPSTREAM_KEY"


@dataclass(frozen=True)
class Upstream:
    """One of the two upstreams: how a Search reaches it and what its errors say."""

    name: str
    # The settings of its retries and of its timeout (RetrievalSettings fields and names).
    retries: str
    timeout: str
    timeout_setting: str
    reason: str
    unavailable: str
    # How messages name it, and the request ("longer than this ... may").
    who: str
    what: str
    # ErrorInfo metadata of its rate-limit errors beside retry_after_ms and attempts.
    metadata: dict[str, str]

    async def start(self, make_retrieval: MakeRetrieval, fake: FakeOpenAI, **settings: Any) -> Any:
        if self.name == "embeddings":
            harness = await remote_retrieval(make_retrieval, fake.base_url, KEY_ENV, **settings)
            # Its own vector: nothing is embedded before the Search.
            await harness.stub.UpsertObjects(
                pb.UpsertObjectsRequest(
                    collection="Remote", objects=[obj({"title": "t"}, vector=[1.0] * 16)]
                )
            )
        else:
            harness = await make_retrieval(
                rerank_providers={
                    "fake": {"base_url": fake.base_url, "api_key_env": KEY_ENV, "model": "rr-1"}
                },
                **settings,
            )
            await harness.stub.CreateCollection(
                pb.CreateCollectionRequest(collection=vcol("Towers"))
            )
            await harness.stub.UpsertObjects(
                pb.UpsertObjectsRequest(
                    collection="Towers",
                    objects=[obj({"title": "t", "body": "tower"}, vector=[1.0] * 4)],
                )
            )
        assert self.sent(fake) == []
        return harness.stub

    def search(self, stub: Any, timeout: float | None = None) -> Awaitable[Any]:
        """A Search that calls this upstream once it is reached (the only call to it)."""
        if self.name == "embeddings":
            request = pb.SearchRequest(collection="Remote", near_text=pb.NearText(text="x"))
        else:
            request = pb.SearchRequest(
                collection="Towers",
                keyword=pb.Keyword(text="tower"),
                limit=1,
                rerank=pb.Rerank(provider="fake", candidates=6),
            )
        return stub.Search(request, timeout=timeout)

    def sent(self, fake: FakeOpenAI) -> list[RecordedRequest]:
        path = "/v1/embeddings" if self.name == "embeddings" else "/v1/rerank"
        return [r for r in fake.requests if r.path == path]


EMBEDDINGS = Upstream(
    name="embeddings",
    retries="embed_retries",
    timeout="embed_timeout",
    timeout_setting="GENSEARCH_RETRIEVAL_EMBED_TIMEOUT",
    reason="EMBEDDINGS_RATE_LIMITED",
    unavailable="EMBEDDINGS_UNAVAILABLE",
    who="the embeddings endpoint",
    what="request",
    metadata={},
)
RERANK = Upstream(
    name="rerank",
    retries="rerank_retries",
    timeout="rerank_timeout",
    timeout_setting="GENSEARCH_RETRIEVAL_RERANK_TIMEOUT",
    reason="RERANK_RATE_LIMITED",
    unavailable="RERANK_UNAVAILABLE",
    who="rerank provider 'fake'",
    what="search",
    metadata={"provider": "fake"},
)


@pytest.fixture(params=[EMBEDDINGS, RERANK], ids=lambda upstream: upstream.name)
def upstream(request: pytest.FixtureRequest) -> Upstream:
    value: Upstream = request.param
    return value


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, "sk-test-upstream-key-789")
    async with FakeOpenAI(embedding_dim=16) as server:
        yield server


@pytest.mark.parametrize(
    ("retries", "answers", "sent"),
    [
        # RETRIES = 0: before, the 429 spent the only attempt and the Search failed
        # RESOURCE_EXHAUSTED ("still refused after 1 attempts"), though its wait fitted.
        (0, [Behaviour.rate_limited(retry_after="1")], 2),
        # One retry (RETRIES = 1): before, the 429 spent it and the 503 after it was final
        # (UNAVAILABLE after 2 requests).
        (1, [Behaviour.rate_limited(retry_after="0"), Behaviour.error(503)], 3),
    ],
    ids=["no-retries-configured", "retry-left-to-a-later-5xx"],
)
async def test_a_429_spends_no_retry(
    make_retrieval: MakeRetrieval,
    fake: FakeOpenAI,
    upstream: Upstream,
    retries: int,
    answers: list[Behaviour],
    sent: int,
) -> None:
    stub = await upstream.start(make_retrieval, fake, **{upstream.retries: retries})
    fake.enqueue(*answers)
    response = await upstream.search(stub, timeout=60)
    assert len(response.hits) == 1
    assert len(upstream.sent(fake)) == sent


async def test_a_5xx_still_spends_a_retry(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI, upstream: Upstream
) -> None:
    # RETRIES = 1: the first 503 is retried, the second is final, whatever 429 came
    # between them (before: the 429 ended the request, UNAVAILABLE after 2 requests).
    stub = await upstream.start(make_retrieval, fake, **{upstream.retries: 1})
    fake.enqueue(
        Behaviour.error(503), Behaviour.rate_limited(retry_after="0"), Behaviour.error(503)
    )
    err = await expect_error(upstream.search(stub, timeout=60), grpc.StatusCode.UNAVAILABLE)
    assert error_info(err).reason == upstream.unavailable
    assert "(HTTP 503)" in (err.details() or "")
    assert len(upstream.sent(fake)) == 3
    assert fake.pending == 0


@pytest.mark.parametrize(
    ("retry_after", "deadline"),
    [("1", "call"), (None, "call"), ("1", "none")],
    ids=["retry-after-call-deadline", "no-retry-after-call-deadline", "retry-after-no-deadline"],
)
async def test_a_provider_answering_429_for_ever_ends_at_the_deadline(
    make_retrieval: MakeRetrieval,
    fake: FakeOpenAI,
    upstream: Upstream,
    retry_after: str | None,
    deadline: str,
) -> None:
    # Retried past RETRIES (0 here) until the deadline cannot hold the next wait: the
    # call's own, or without one the request's timeout setting. Before: RESOURCE_EXHAUSTED
    # after 1 attempt, or UNAVAILABLE for a 429 without a Retry-After.
    settings: dict[str, Any] = {upstream.retries: 0}
    if deadline == "none":
        settings[upstream.timeout] = 4.0
    stub = await upstream.start(make_retrieval, fake, **settings)
    fake.fail_next(100_000, Behaviour.rate_limited(retry_after=retry_after))
    err = await expect_error(
        upstream.search(stub, timeout=None if deadline == "none" else 5.0),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    info = error_info(err)
    assert info.reason == upstream.reason, err.details()
    sent = len(upstream.sent(fake))
    assert sent > 1
    assert info.metadata["attempts"] == str(sent)
    for key, value in upstream.metadata.items():
        assert info.metadata[key] == value
    delay = retry_delay(err)
    assert info.metadata["retry_after_ms"] == str(round(delay * 1000))
    details = err.details() or ""
    assert details.startswith(f"{upstream.who} is rate limiting (HTTP 429) after {sent} attempts")
    assert f"(its deadline, {upstream.timeout_setting}" in details
    if retry_after is None:
        # No wait asked for: the backoff the next attempt would have waited at most.
        assert 0 < delay <= 8.0
        assert "ran out of time for another attempt" in details
    else:
        assert delay == 1.0
        assert "asks to wait 1.0 s" in details


async def test_a_retry_after_above_retry_after_max_is_resource_exhausted_at_once(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI, upstream: Upstream
) -> None:
    # A 2 s wait fits the timeout (30 s) but not RETRY_AFTER_MAX (1 s): reported at once
    # with the wait asked for (before, the setting did not exist and the shared policy's
    # 60 s cap let it through).
    stub = await upstream.start(make_retrieval, fake, retry_after_max=1.0)
    fake.enqueue(Behaviour.rate_limited(retry_after="2"))
    err = await expect_error(upstream.search(stub), grpc.StatusCode.RESOURCE_EXHAUSTED)
    info = error_info(err)
    assert info.reason == upstream.reason
    assert dict(info.metadata) == {**upstream.metadata, "retry_after_ms": "2000", "attempts": "1"}
    assert retry_delay(err) == 2.0
    assert err.details() == (
        f"{upstream.who} is rate limiting (HTTP 429) and asks to wait 2.0 s, longer than "
        f"this {upstream.what} may (its deadline, {upstream.timeout_setting}, "
        "GENSEARCH_RETRIEVAL_RETRY_AFTER_MAX)"
    )
    assert len(upstream.sent(fake)) == 1


async def test_a_retry_after_past_the_timeout_is_resource_exhausted_at_once(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI, upstream: Upstream
) -> None:
    # Only the request's deadline (here its timeout setting, the bound of a call with no
    # deadline) bounds the wait: 90 s does not fit 1 s, so nothing sleeps, and the caller
    # learns when to come back (before: UNAVAILABLE, no RetryInfo).
    stub = await upstream.start(make_retrieval, fake, **{upstream.timeout: 1.0})
    fake.enqueue(Behaviour.rate_limited(retry_after="90"))
    err = await expect_error(upstream.search(stub), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error_info(err).reason == upstream.reason
    assert retry_delay(err) == 90.0
    assert len(upstream.sent(fake)) == 1


@pytest.mark.parametrize("deadline", ["call", "none"])
async def test_a_provider_that_never_answers_ends_at_the_callers_deadline(
    make_retrieval: MakeRetrieval, fake: FakeOpenAI, upstream: Upstream, deadline: str
) -> None:
    # The call's deadline cut the exchange (a margin before it, so this status reaches the
    # caller): DEADLINE_EXCEEDED with ErrorInfo. Before, UNAVAILABLE ("failed (no answer
    # in time)"), as if the endpoint were down. Cut by the timeout setting instead (no call
    # deadline), the endpoint is the one that failed: UNAVAILABLE, as before.
    settings: dict[str, Any] = {upstream.retries: 0}
    if deadline == "none":
        settings[upstream.timeout] = 2.0
    stub = await upstream.start(make_retrieval, fake, **settings)
    fake.latency = 3600.0
    if deadline == "none":
        err = await expect_error(upstream.search(stub), grpc.StatusCode.UNAVAILABLE)
        assert error_info(err).reason == upstream.unavailable
        return
    err = await expect_error(upstream.search(stub, timeout=3.0), grpc.StatusCode.DEADLINE_EXCEEDED)
    info = error_info(err)
    assert info.reason == "DEADLINE_EXCEEDED"
    assert 0 < int(info.metadata["timeout_ms"]) < 3600_000
    assert info.metadata["remaining_ms"].isdecimal()
    assert (err.details() or "").startswith(f"{upstream.who} did not answer before the call's")
