"""Generation replicas share the fan-out: client-side round-robin over every address of
the target (``ipv4:a,b`` here; ``dns:///name:port`` in a cluster)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY

from services.common.server import GrpcServer
from services.common.shutdown_cut import MARGIN_SHARE, margin
from services.devlaunch.redis_server import RedisProcess
from services.gateway.clients import generation as generation_client
from services.gateway.clients.generation import MIN_CALL_SECONDS
from services.generation.__main__ import build_server as build_generation
from services.generation.settings import GenerationSettings
from tests.gateway.conftest import ALICE, DIM, TOKEN, StackFactory, create_books, fake_provider
from tests.gateway.test_llm_call_charges import Metered
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info, failure_of

# The stopping replica's grace period: its calls are ended a tenth of it before its end.
# 2 s left 0.2 s for the cut status to reach the gateway before gRPC (its own thread, not
# the loaded event loop) cancelled the call, which then was not sent again; 5 s leaves 0.5.
GRACE = 5.0


async def _replica(fake: FakeOpenAI) -> GrpcServer:
    server = await build_generation(
        GenerationSettings(
            providers=[fake_provider(fake)],
            default_provider="fake",
            metrics_port=None,
            internal_token=TOKEN,
        ),
        port=0,
    )
    await server.start()
    return server


@pytest.fixture
async def replicas() -> AsyncIterator[list[tuple[GrpcServer, FakeOpenAI]]]:
    started: list[tuple[GrpcServer, FakeOpenAI]] = []
    for _ in range(2):
        fake = await FakeOpenAI().start()
        started.append((await _replica(fake), fake))
    yield started
    for server, fake in started:
        await server.stop(0)
        await fake.stop()


def _request(limit: int) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=limit,
        generate=gw_pb.Generate(single_prompt="{title}"),
    )


async def test_calls_spread_over_generation_replicas(
    stack_factory: StackFactory, replicas: list[tuple[GrpcServer, FakeOpenAI]]
) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in replicas)
    stack = await stack_factory(generation=False, generation_addr=target)
    await create_books(stack)
    for _ in range(4):
        response = await stack.stub.GenerativeSearch(_request(4), metadata=ALICE)
        assert all(h.generation.result for h in response.hits)
    counts = [len(fake.chat_requests) for _, fake in replicas]
    assert sum(counts) == 16
    assert min(counts) >= 4, counts  # round-robin: both replicas got a fair share

    # One replica gone: the other takes every call.
    await replicas[0][0].stop(0)
    for _, fake in replicas:
        fake.reset_stats()
    for _ in range(2):
        response = await stack.stub.GenerativeSearch(_request(4), metadata=ALICE)
        statuses = {h.generation.error.status or "OK" for h in response.hits}
        # Calls already routed to the dying replica may fail once; later ones must not.
    assert statuses == {"OK"}
    assert len(replicas[1][1].chat_requests) >= 4


async def test_dns_target(stack_factory: StackFactory, fake: FakeOpenAI) -> None:
    server = await _replica(fake)
    try:
        stack = await stack_factory(
            generation=False, generation_addr=f"dns:///localhost:{server.port}"
        )
        await create_books(stack)
        response = await stack.stub.GenerativeSearch(_request(2), metadata=ALICE)
        assert all(h.generation.result for h in response.hits)
    finally:
        await server.stop(0)


async def test_a_hit_whose_replica_shuts_down_is_answered_by_another(
    stack_factory: StackFactory, replicas: list[tuple[GrpcServer, FakeOpenAI]]
) -> None:
    """The replica running a hit's generation stops (a rolling update) and, its grace
    period ending, ends the call UNAVAILABLE / SHUTTING_DOWN: nothing was generated for the
    caller, so the gateway sends it once more, to the other replica, and the hit is
    answered. Before, the hit failed with SHUTTING_DOWN (test failed before)."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in replicas)
    stack = await stack_factory(generation=False, generation_addr=target)
    await create_books(stack)
    for _, fake in replicas:
        fake.enqueue(Behaviour.hang())
    call = stack.stub.GenerativeSearch(_request(1), metadata=ALICE, timeout=60)
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while not any(fake.chat_requests for _, fake in replicas):
        assert not call.done() and loop.time() < end, "no replica got the hit's call"
        await asyncio.sleep(0.01)
    running = 0 if replicas[0][1].chat_requests else 1
    other = replicas[1 - running][1]
    other.clear_queue()  # the other replica answers at once
    await replicas[running][0].stop(GRACE)
    response = await call
    generation = response.hits[0].generation
    assert not generation.HasField("error"), generation.error
    assert generation.result
    assert len(other.chat_requests) == 1


def _cuts_sent_again() -> float:
    sample = REGISTRY.get_sample_value(
        "gensearch_gateway_generation_refused_total", {"reason": "SHUTTING_DOWN"}
    )
    return sample or 0.0


async def test_a_cut_call_is_not_sent_again_when_its_deadline_leaves_too_little_time(
    stack_factory: StackFactory,
    replicas: list[tuple[GrpcServer, FakeOpenAI]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Generate cut by its replica's shutdown with less than MIN_CALL_SECONDS of its
    caller's deadline left is not sent again (the other replica, which would answer at
    once, gets nothing): the caller gets the cut, UNAVAILABLE / SHUTTING_DOWN, at once.
    The replica is stopped with the grace period that puts its cut in the middle of the
    call's last MIN_CALL_SECONDS (shutdown_cut.margin: the cut comes that long before the
    grace period ends)."""
    # The window the cut must land in (less than the minimum left, but before the
    # gateway's own cutoff, 0.2 s before the deadline) is MIN_CALL_SECONDS wide: 0.5 s
    # left a loaded CI a quarter of a second before the caller got DEADLINE_EXCEEDED
    # instead. The test widens the gateway's minimum (read when the cut comes) to have
    # seconds on either side of the cut.
    min_call_seconds = 4.0
    assert min_call_seconds > MIN_CALL_SECONDS
    monkeypatch.setattr(generation_client, "MIN_CALL_SECONDS", min_call_seconds)
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in replicas)
    stack = await stack_factory(generation=False, generation_addr=target)
    for _, fake in replicas:
        fake.enqueue(Behaviour.hang())
    generation = gen_grpc.GenerationServiceStub(stack.channel)
    hello = [gen_pb.Message(role=gen_pb.ROLE_USER, content="hello")]
    loop = asyncio.get_running_loop()
    timeout = 12.0
    deadline = loop.time() + timeout
    call = generation.Generate(
        gen_pb.GenerateRequest(messages=hello), metadata=ALICE, timeout=timeout
    )
    while not any(fake.chat_requests for _, fake in replicas):
        assert not call.done() and loop.time() < deadline, "no replica got the call"
        await asyncio.sleep(0.01)
    running = 0 if replicas[0][1].chat_requests else 1
    other = replicas[1 - running][1]
    other.clear_queue()  # it would answer at once, were the call sent again
    refused = _cuts_sent_again()
    # The cut comes grace - margin(grace) after the stop starts: in the middle of the
    # window, 2.1 s before the deadline (1.9 s after less than the minimum is left). A
    # loaded machine only delays the cut, leaving less than the minimum still; the
    # deadline is seconds away, time for the cut to reach the caller first.
    cut_in = deadline - (min_call_seconds + 0.2) / 2 - loop.time()
    assert cut_in > 0, "the call reached a replica too late to be cut before its deadline"
    # margin is a share of the grace period, at most MAX_MARGIN: grace = cut_in + margin.
    grace = cut_in + margin(cut_in / (1 - MARGIN_SHARE))
    assert grace - margin(grace) == pytest.approx(cut_in)
    stopping = asyncio.create_task(replicas[running][0].stop(grace))
    err = await failure_of(call)
    await stopping
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "SHUTTING_DOWN"
    assert not other.chat_requests, "the cut call was sent again"
    assert _cuts_sent_again() == refused


def _schema() -> gen_pb.ResponseFormat:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]})
    return gen_pb.ResponseFormat(json_schema=schema)


async def test_the_llm_requests_of_a_cut_call_sent_again_are_charged(
    stack_factory: StackFactory,
    replicas: list[tuple[GrpcServer, FakeOpenAI]],
    shared_redis: RedisProcess,
) -> None:
    """A Generate whose replica stops after its answer (invalid for the schema) came and
    while its corrective retry is on its way is sent again to the other replica, which
    answers with one request: the tenant's quota counts the cut try's request too (the
    one on its way at the cut is not known to have reached the provider: not counted).
    Before, the cut's status had no count and the gateway charged only the second try."""
    prefix = f"q-{uuid.uuid4().hex[:8]}"
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in replicas)
    stack = await stack_factory(
        generation=False,
        generation_addr=target,
        redis_url=shared_redis.url,
        quota_key_prefix=prefix,
        quota_llm_calls_per_minute=1000,
    )
    # The quota's counts, as the LLM-charges tests read them (fake2 unused here).
    metered = Metered(stack, replicas[0][1], shared_redis, prefix)
    # The replica's stop alone takes most of GRACE: a window with 30 s left, so that a
    # loaded machine's test still ends in the window it counts in.
    await metered.fresh_window(needed=30.0)
    for _, fake in replicas:
        fake.enqueue(Behaviour.ok(text="not json"), Behaviour.hang())
    generation = gen_grpc.GenerationServiceStub(stack.channel)
    hello = [gen_pb.Message(role=gen_pb.ROLE_USER, content="hello")]
    call = generation.Generate(
        gen_pb.GenerateRequest(messages=hello, response_format=_schema()),
        metadata=ALICE,
        timeout=60,
    )
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while not any(len(fake.chat_requests) == 2 for _, fake in replicas):
        assert not call.done() and loop.time() < end, "no corrective retry on its way"
        await asyncio.sleep(0.01)
    running = 0 if len(replicas[0][1].chat_requests) == 2 else 1
    other = replicas[1 - running][1]
    other.clear_queue()
    other.reply = '{"t": "ok"}'  # the other replica answers at once, valid
    await replicas[running][0].stop(GRACE)
    reply = await call
    assert reply.upstream_calls == 1
    assert len(other.chat_requests) == 1
    # The cut try's answer, and the second try's request.
    assert await metered.counted() == 2
