"""Fan-out through the gateway at defaults, and what each hit reports of the provider's
limits: attempts and time waited, per hit (unary and streaming), on Ask, and on a hit that
failed because the deadline could not cover the wait."""

from __future__ import annotations

from typing import Any

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2

from tests.gateway.conftest import ALICE, DIM, StackFactory, create_books, fake_provider
from tests.support.fake_openai import Behaviour, FakeOpenAI


def _near(limit: int, **generate: object) -> dict[str, Any]:
    return {
        "collection": "Books",
        "near_vector": ret_pb.NearVector(vector=[0.5] * DIM),
        "limit": limit,
        "generate": gw_pb.Generate(**generate),  # type: ignore[arg-type]
    }


def _books(count: int) -> list[dict[str, Any]]:
    return [{"title": f"Book {i}", "body": "x", "year": 2000, "tags": []} for i in range(count)]


def _waited(result: gw_pb.GenerationResult) -> float:
    return result.wait_time.ToNanoseconds() / 1e9


async def test_every_hit_runs_at_once_by_default(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # 40 hits: more than the old gateway default (32) and the old provider default (16).
    stack = await stack_factory(provider=fake_provider(fake, max_concurrency=None))
    await create_books(stack, books=_books(40))
    fake.latency = 3.0  # long enough that every admitted call overlaps the others
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(**_near(40, single_prompt="{title}")), metadata=ALICE
    )
    assert all(h.generation.result for h in response.hits)
    assert all(h.generation.attempts == 1 for h in response.hits)
    assert fake.max_concurrent == 40


async def test_an_operator_cap_still_holds(stack_factory: StackFactory, fake: FakeOpenAI) -> None:
    stack = await stack_factory(
        provider=fake_provider(fake, max_concurrency=None), default_max_concurrency=4
    )
    await create_books(stack, books=_books(10))
    fake.latency = 0.3
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(**_near(10, single_prompt="{title}")), metadata=ALICE
    )
    assert all(h.generation.result for h in response.hits)
    assert fake.max_concurrent == 4


async def test_rate_limited_hits_all_succeed_and_report_attempts_and_wait(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # The provider declares nothing; it answers 429 past 3 calls a second. The stack's
    # generation service allows one attempt per call (retry_max_attempts=1): a 429 is
    # retried all the same while the deadline allows.
    stack = await stack_factory(provider=fake_provider(fake, max_concurrency=None))
    await create_books(stack, books=_books(8))
    fake.rate_limit, fake.rate_window = 3, 1.0
    unary = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(**_near(8, single_prompt="{title}")),
        metadata=ALICE,
        timeout=60,
    )
    results = [h.generation for h in unary.hits]
    assert all(r.result and not r.HasField("error") for r in results)
    assert any(r.attempts > 1 for r in results)
    assert all(_waited(r) > 0 for r in results if r.attempts > 1)

    fake.reset_stats()
    streamed: list[gw_pb.GenerationResult] = []
    async for event in stack.stub.StreamGenerativeSearch(
        gw_pb.StreamGenerativeSearchRequest(**_near(8, single_prompt="{title}")),
        metadata=ALICE,
        timeout=60,
    ):
        if event.HasField("hit_result"):
            streamed.append(event.hit_result.generation)
    assert len(streamed) == 8
    assert all(r.result and not r.HasField("error") for r in streamed)
    assert sum(r.attempts - 1 for r in streamed) == fake.rate_limited > 0
    assert all(_waited(r) > 0 for r in streamed if r.attempts > 1)


async def test_ask_reports_attempts_and_wait(stack_factory: StackFactory, fake: FakeOpenAI) -> None:
    stack = await stack_factory(provider=fake_provider(fake, max_concurrency=None))
    await create_books(stack)
    fake.enqueue(Behaviour.rate_limited(retry_after=None, retry_after_ms="200"))
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Which book?",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        ),
        metadata=ALICE,
        timeout=30,
    )
    assert answer.answer
    assert answer.attempts == 2
    assert answer.wait_time.ToNanoseconds() > 0


async def test_a_hit_the_deadline_cannot_wait_for_fails_alone_and_says_why(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # 12 a minute, half of it at once: 6 start, the next could start in ~5 s; the hits
    # have 3 s (room for a loaded machine: the 6 finish in it, the 2 cannot wait so long).
    provider = fake_provider(fake, max_concurrency=None, requests_per_minute=12, rate_burst=0.5)
    stack = await stack_factory(provider=provider)
    await create_books(stack, books=_books(8))
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            **_near(8, single_prompt="{title}", timeout=duration_pb2.Duration(seconds=3))
        ),
        metadata=ALICE,
        timeout=30,
    )
    results = [h.generation for h in response.hits]
    ok = [r for r in results if not r.HasField("error")]
    failed = [r for r in results if r.HasField("error")]
    assert len(ok) == 6 and len(failed) == 2, [r.error for r in failed]
    for result in failed:
        assert result.error.status == "RESOURCE_EXHAUSTED"
        assert result.error.reason == "PROVIDER_LIMIT_WAIT"
        assert "deadline" in result.error.message
        assert result.attempts == 0  # never sent upstream
    assert len(fake.chat_requests) == 6
