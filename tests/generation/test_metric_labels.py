"""Nothing a caller or a provider chooses grows the generation service's metric series
without bound: upstream HTTP statuses fall into a fixed set of outcomes, and provider names,
base URLs, models, keys and unknown methods make no series of their own (docs/operations.md
lists each label's values)."""

from __future__ import annotations

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from prometheus_client import REGISTRY

from services.generation.metrics import OUTCOMES
from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.metrics import call_unserved_methods, marked_series
from tests.support.rpc import failure_of

# In every caller-chosen value below, so a label holding one is found whatever its name.
MARK = "cardinality-probe"
# Statuses no provider should answer, and some it may: 429 is left out (retried for as
# long as the deadline allows, whatever the attempts).
STATUSES = [*range(400, 429, 3), *range(430, 600, 7), 600, 701, 999]


def _values(metric: str, label: str, provider: str = "fake") -> set[str]:
    return {
        sample.labels[label]
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == metric and sample.labels.get("provider") == provider
    }


async def test_upstream_statuses_count_under_a_fixed_set_of_outcomes(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """Old code: one ``outcome`` (and retried ``cause``) per status, up to 900 per
    provider; now the named statuses, ``4xx`` / ``5xx`` and ``other``."""
    service = await start_service([fake_provider(fake, max_concurrency=None)], retry_max_attempts=2)
    for status in STATUSES:
        model = f"{MARK}-{status}"
        fake.by_model[model] = Behaviour.error(status)
        err = await failure_of(
            service.stub.Generate(
                pb.GenerateRequest(model=model, messages=[user("hi")]), timeout=10
            )
        )
        assert err.code() != grpc.StatusCode.OK
    outcomes = _values("gensearch_llm_requests_total", "outcome")
    causes = _values("gensearch_llm_retries_total", "cause")
    assert outcomes <= OUTCOMES, sorted(outcomes - OUTCOMES)
    assert causes <= OUTCOMES, sorted(causes - OUTCOMES)
    # The statuses named keep their own series; the rest are counted, by class.
    assert {"400", "403", "409", "4xx", "500", "5xx", "other"} <= outcomes
    assert {"409", "500", "5xx", "other"} <= causes
    assert marked_series(MARK) == []


async def test_callers_names_urls_models_and_keys_make_no_series(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """Provider names a caller sends are refused before any call; a caller's base URL
    counts under the provider it names; models and keys are no label."""
    service = await start_service(
        [fake_provider(fake, max_concurrency=None)], allowed_hosts="http://127.0.0.1"
    )
    for i in range(20):
        err = await failure_of(
            service.stub.Generate(
                pb.GenerateRequest(provider=f"{MARK}-{i}", messages=[user("hi")]), timeout=10
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = await service.stub.Generate(
            pb.GenerateRequest(
                model=f"{MARK}-model-{i}",
                base_url=fake.base_url + "/" * (i % 3),
                messages=[user("hi")],
            ),
            metadata=(("x-fake-api-key", f"{MARK}-key-{i}"),),
            timeout=10,
        )
        assert reply.text == "hi"
        # A base URL the fake does not serve: a 404 from another endpoint, still "fake".
        await failure_of(
            service.stub.Generate(
                pb.GenerateRequest(
                    base_url=f"http://127.0.0.1:{fake.port}/{MARK}-{i}", messages=[user("hi")]
                ),
                timeout=10,
            )
        )
    assert marked_series(MARK) == []
    providers = {
        sample.labels["provider"]
        for family in REGISTRY.collect()
        if family.name.startswith("gensearch_llm_")
        for sample in family.samples
    }
    assert not any(MARK in name for name in providers)
    assert _values("gensearch_llm_requests_total", "outcome") <= OUTCOMES


@pytest.mark.parametrize("service_name", ["gensearch.generation.v1.GenerationService", MARK])
async def test_unknown_methods_make_no_series(
    service_name: str, fake: FakeOpenAI, start_service: StartService
) -> None:
    """Only registered methods are counted: a call to any other is UNIMPLEMENTED by gRPC
    before the chassis, whatever name the caller makes up."""
    service = await start_service([fake_provider(fake)])
    await call_unserved_methods(service.channel, service_name, MARK, 20)
    assert marked_series(MARK) == []


async def test_a_callers_base_url_leaves_the_providers_published_limit_alone(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """A request's base_url is called with limiters of its own, under the provider's name:
    their adaptive limit is not the provider's. Old code: one 429 at the caller's URL
    published a limit of 1 for the provider while its own endpoint still took 8."""
    service = await start_service(
        [fake_provider(fake, max_concurrency=8)], allowed_hosts="http://127.0.0.1"
    )

    def published() -> float | None:
        return REGISTRY.get_sample_value("gensearch_llm_concurrency_limit", {"provider": "fake"})

    await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert published() == 8
    fake.enqueue(Behaviour.error(429))  # retried, then answered
    reply = await service.stub.Generate(
        pb.GenerateRequest(base_url=fake.base_url, messages=[user("hi")]), timeout=10
    )
    assert reply.text == "hi" and reply.attempts == 2
    assert published() == 8
