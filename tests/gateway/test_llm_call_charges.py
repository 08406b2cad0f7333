"""Every LLM call actually made counts against the tenant's per-minute quota (issue 13):
the gateway admits one call before each generation call and charges the rest (a fallback
pair's attempts, a JSON schema's corrective retry) when the generation service reports
them, on success and on failure, unary and streamed. Checked against the requests the
loopback fakes received, on a real Redis; a tenant taken past its limit this way is
refused its next call."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from tests.gateway import test_history_budget as budget
from tests.gateway.conftest import (
    ALICE,
    BOB,
    DIM,
    WITH_BODY,
    Stack,
    StackFactory,
    books_ask,
    books_stream_ask,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info, failure_of, retry_delay

BACKUP = [gen_pb.ModelChoice(provider="backup")]


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


class Metered:
    """A stack counting LLM calls in the shared Redis under a prefix of its own, with a
    second provider ("backup") on ``fake2`` and two attempts per pair."""

    def __init__(self, stack: Stack, fake2: FakeOpenAI, redis: RedisProcess, prefix: str):
        self.stack = stack
        self.fake2 = fake2
        self.redis = redis
        self.prefix = prefix

    def received(self) -> int:
        return len(self.stack.fake.chat_requests) + len(self.fake2.chat_requests)

    async def counted(self) -> int:
        """The calls counted in the current window, over every tenant of this stack."""
        direct = connect(self.redis.url, cluster=False, socket_timeout=2, connect_timeout=2)
        try:
            keys = [k async for k in direct.scan_iter(match=f"{self.prefix}:quota:*:llm")]
            counts = [await direct.hget(k, "n") for k in keys]  # type: ignore[misc]
            return sum(int(n or 0) for n in counts)
        finally:
            await direct.aclose()

    async def counted_for(self, tenant: str) -> int:
        """The calls counted for ``tenant`` in the current window (its key as
        ``services.common.quotas`` lays it out)."""
        digest = hashlib.sha256(tenant.encode()).hexdigest()[:20]
        direct = connect(self.redis.url, cluster=False, socket_timeout=2, connect_timeout=2)
        try:
            n = await direct.hget(f"{self.prefix}:quota:{{t:{digest}}}:llm", "n")  # type: ignore[misc]
        finally:
            await direct.aclose()
        return int(n or 0)

    async def fresh_window(self, needed: float = 15.0) -> None:
        """Waits out the last seconds of the quota's minute (on Redis' clock), so that a
        test's calls all fall in one window and the count is theirs alone: those of a
        window with less than ``needed`` seconds left."""
        direct = connect(self.redis.url, cluster=False, socket_timeout=2, connect_timeout=2)
        try:
            seconds, micros = await direct.time()  # type: ignore[misc]
        finally:
            await direct.aclose()
        into = seconds % 60 + micros / 1e6
        if into > 60 - needed:
            await asyncio.sleep(60.2 - into)


@pytest.fixture
async def metered_factory(
    stack_factory: StackFactory, fake2: FakeOpenAI, shared_redis: RedisProcess
) -> Any:
    async def make(limit: int) -> Metered:
        prefix = f"q-{uuid.uuid4().hex[:8]}"
        stack = await stack_factory(
            redis_url=shared_redis.url,
            quota_key_prefix=prefix,
            quota_llm_calls_per_minute=limit,
            extra_providers=[fake_provider(fake2, name="backup", default_model="b-model")],
            generation_settings={"retry_max_attempts": 2},
        )
        await create_books(stack, books=WITH_BODY)
        await create_books(stack, books=WITH_BODY, metadata=BOB)
        metered = Metered(stack, fake2, shared_redis, prefix)
        await metered.fresh_window()
        return metered

    return make


def _schema() -> gen_pb.ResponseFormat:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"title": {"type": "string"}}})
    schema["required"] = ["title"]
    return gen_pb.ResponseFormat(json_schema=schema)


def _ask(**fields: Any) -> gw_pb.AskRequest:
    return books_ask(llm_model="primary", **fields)


async def test_a_fallback_and_a_corrective_retry_are_charged_then_the_tenant_is_refused(
    metered_factory: Any,
) -> None:
    m = await metered_factory(limit=3)
    m.stack.fake.by_model["primary"] = Behaviour.error(503)
    m.fake2.enqueue(
        Behaviour.error(502),
        Behaviour.ok(text='{"title": 7}'),
        Behaviour.ok(text='{"title": "Dune"}'),
    )
    response = await m.stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=1,
            generate=gw_pb.Generate(
                single_prompt="About {title}",
                model="primary",
                fallback=BACKUP,
                response_format=_schema(),
            ),
        ),
        metadata=ALICE,
        timeout=20,
    )
    hit = response.hits[0].generation
    assert json_format.MessageToDict(hit.structured) == {"title": "Dune"}
    assert (hit.provider, hit.fallback_index) == ("backup", 1)
    # The primary once (a 5xx with a next pair moves on at once), the backup's 502 (the
    # last pair: retried), its invalid answer and its correction: one LLM call admitted,
    # four made, four counted, past the limit of 3.
    assert m.received() == 4
    assert await m.counted() == m.received()
    # At its limit the tenant's next LLM call is refused before it is made.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await m.stack.stub.Ask(_ask(), metadata=ALICE, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "QUOTA_EXCEEDED"
    assert dict(info.metadata) == {"quota": "llm_calls_per_minute", "limit": "3"}
    assert 0 < retry_delay(caught.value) <= 60
    assert m.received() == 4
    # Another tenant's minute is its own.
    m.stack.fake.by_model.clear()
    reply = await m.stack.stub.Ask(_ask(), metadata=BOB, timeout=10)
    assert reply.answer and reply.fallback_index == 0


async def test_asks_fallback_calls_are_charged_unary_and_streamed(metered_factory: Any) -> None:
    m = await metered_factory(limit=100)
    m.stack.fake.by_model["primary"] = Behaviour.error(502)
    reply = await m.stack.stub.Ask(_ask(fallback=BACKUP), metadata=ALICE, timeout=20)
    assert (reply.provider, reply.fallback_index) == ("backup", 1)
    # The primary once (not retried: a next pair exists), then the backup.
    assert m.received() == 2
    assert await m.counted() == 2
    events = [
        e
        async for e in m.stack.stub.StreamAsk(
            books_stream_ask(llm_model="primary", fallback=BACKUP),
            metadata=ALICE,
            timeout=20,
        )
    ]
    assert events[-1].answer.fallback_index == 1
    assert m.received() == 4
    assert await m.counted() == m.received()


async def test_the_calls_of_a_failed_answer_are_charged(metered_factory: Any) -> None:
    m = await metered_factory(limit=100)
    m.stack.fake.by_model["primary"] = Behaviour.error(503)
    m.fake2.by_model["b-model"] = Behaviour.error(500)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await m.stack.stub.Ask(_ask(fallback=BACKUP), metadata=ALICE, timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # The primary once, the last pair twice (retried).
    assert m.received() == 3
    assert await m.counted() == m.received()


async def test_summary_folds_are_charged_to_the_turns_tenant(
    stack_factory: StackFactory, shared_redis: RedisProcess, fake2: FakeOpenAI
) -> None:
    """The fold workers are started by whichever turn first needs them; each fold is
    still charged to the tenant of the turn it folds, not to that first caller's."""
    prefix = f"q-{uuid.uuid4().hex[:8]}"
    stack = await stack_factory(
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
        quota_llm_calls_per_minute=1000,
        context_windows={"fake-model": budget.WINDOW},
        answer_reserve_tokens=budget.RESERVE,
    )
    m = Metered(stack, fake2, shared_redis, prefix)
    await m.fresh_window()
    stack.fake.reply = budget.reply
    for who in (ALICE, BOB):
        await create_books(stack, metadata=who)
    for who in (ALICE, BOB):  # Alice's turn starts the workers
        made = await stack.memory.CreateConversation(
            mem_pb.CreateConversationRequest(), metadata=who
        )
        cid = made.conversation.conversation_id
        for n in range(12):
            await stack.memory.CreateInteraction(
                mem_pb.CreateInteractionRequest(
                    conversation_id=cid,
                    input=f"q{n} {budget.FILLER}",
                    response=f"answer {budget.FILLER}",
                ),
                metadata=who,
            )
        await stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books",
                llm_question=f"q12 {budget.FILLER}",
                conversation_id=cid,
                context_size=2,
                rewrite_query=False,
            ),
            metadata=who,
        )
    await stack.gateway.stop(0)  # drains the summary queue: every fold has run
    folds = [r for r in stack.fake.chat_requests if budget.is_fold(r.json)]
    assert folds
    assert await m.counted_for("alice") + await m.counted_for("bob") == m.received()
    # Each tenant: its answer and its own folds (the same conversation shape for both).
    assert await m.counted_for("bob") == await m.counted_for("alice") == m.received() // 2


async def test_generate_through_the_gateway_is_charged_like_its_own_calls(
    metered_factory: Any,
) -> None:
    """GenerationService served on the gateway: a client's Generate and StreamGenerate are
    charged as the gateway's own calls are, and refused at the limit as they are."""
    m = await metered_factory(limit=4)
    generation = gen_grpc.GenerationServiceStub(m.stack.channel)
    hello = [gen_pb.Message(role=gen_pb.ROLE_USER, content="hello")]
    m.stack.fake.by_model["primary"] = Behaviour.error(503)
    m.fake2.enqueue(Behaviour.error(502))
    reply = await generation.Generate(
        gen_pb.GenerateRequest(messages=hello, model="primary", fallback=BACKUP),
        metadata=ALICE,
        timeout=20,
    )
    # The primary once (a 5xx with a next pair moves on at once), the backup twice (its
    # 502 retried, as the last pair's): three calls, three counted.
    assert (reply.provider, reply.upstream_calls) == ("backup", 3)
    assert m.received() == await m.counted() == 3
    m.stack.fake.by_model.clear()
    stream = generation.StreamGenerate(
        gen_pb.StreamGenerateRequest(messages=hello), metadata=ALICE, timeout=20
    )
    assert "".join([c.delta async for c in stream]) == "hello"
    assert m.received() == await m.counted() == 4
    # At its limit: the gateway's Generate refuses with what a generative search's hit says.
    search = await m.stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=1,
            generate=gw_pb.Generate(single_prompt="About {title}"),
        ),
        metadata=ALICE,
        timeout=10,
    )
    refused = search.hits[0].generation.error
    for call in (
        generation.Generate(gen_pb.GenerateRequest(messages=hello), metadata=ALICE, timeout=10),
        generation.StreamGenerate(
            gen_pb.StreamGenerateRequest(messages=hello), metadata=ALICE, timeout=10
        ),
    ):
        failed = await failure_of(call)
        info = error_info(failed)
        assert (
            (failed.code().name, info.reason)
            == (refused.status, refused.reason)
            == ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        )
        assert dict(info.metadata) == {"quota": "llm_calls_per_minute", "limit": "4"}
        assert 0 < retry_delay(failed) <= 60
    assert m.received() == 4
    # Another tenant's minute is its own.
    other = await generation.Generate(
        gen_pb.GenerateRequest(messages=hello), metadata=BOB, timeout=10
    )
    assert other.text == "hello"
    assert await m.counted_for("bob") == 1
