"""Generation calls past what the generation service accepts at once wait and keep their
place instead of failing (issue 13; docs/gateway.md#generation-calls-in-flight).

A generation server started with small ``max_concurrent_streams`` / ``max_concurrent_rpcs``
stands for a full replica; the fake LLM answers after a latency, so calls overlap. Before
the fix, the calls beyond those limits failed at once: UNAVAILABLE /
DOWNSTREAM_UNAVAILABLE (the HTTP/2 connection's REFUSED_STREAM, though nothing was down)
and RESOURCE_EXHAUSTED / TOO_MANY_CONCURRENT_RPCS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from google.protobuf import duration_pb2, struct_pb2
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError

from services.common.server import GrpcServer
from services.gateway.clients.generation import GenerationClient
from services.gateway.settings import GatewaySettings
from services.generation.__main__ import build_server as build_generation
from services.generation.settings import GenerationSettings
from tests.gateway.conftest import ALICE, BOB, TOKEN, Stack, StackFactory, fake_provider
from tests.support.fake_openai import Behaviour, FakeOpenAI


def _objects(count: int, prefix: str, **generate: Any) -> gw_pb.GenerateOnObjectsRequest:
    objects = []
    for i in range(count):
        props = struct_pb2.Struct()
        props.update({"name": f"{prefix}{i}"})
        objects.append(props)
    return gw_pb.GenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=objects),
        generate=gw_pb.Generate(single_prompt="Say {name}", **generate),
    )


async def _share_stack(stack_factory: StackFactory, fake: FakeOpenAI, **settings: Any) -> Stack:
    """A gateway of 4 generation slots, a share of 2 a tenant and one hit a request, in
    front of a fake whose "slow-model" never answers within a call's deadline."""
    fake.by_model["slow-model"] = Behaviour.hang(60)
    return await stack_factory(
        generation_max_in_flight=4, generation_max_in_flight_per_tenant=2, max_hits=1, **settings
    )


def _alices_slow_calls(
    stack: Stack, count: int
) -> list[asyncio.Task[gw_pb.GenerateOnObjectsResponse]]:
    """``count`` calls of Alice's to "slow-model" at once, each with a 4 s deadline."""
    slow = duration_pb2.Duration(seconds=4)

    async def call(n: int) -> gw_pb.GenerateOnObjectsResponse:
        request = _objects(1, f"a{n}-", model="slow-model", timeout=slow)
        response: gw_pb.GenerateOnObjectsResponse = await stack.stub.GenerateOnObjects(
            request, metadata=ALICE
        )
        return response

    return [asyncio.create_task(call(n)) for n in range(count)]


def _refused(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("gensearch_gateway_generation_refused_total", labels) or 0.0


def _waiting() -> float:
    return REGISTRY.get_sample_value("gensearch_gateway_generation_waiting") or 0.0


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``: no pause of a fixed length holds on a loaded machine."""
    for _ in range(1200):  # 60 s, far past any load
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


async def test_a_fan_out_past_the_generation_limits_waits_instead_of_failing(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    fake.latency = 0.2
    # A replica that serves 6 calls at once and takes 8 streams on a connection: the 7th
    # and 8th calls are refused by its process, the rest by HTTP/2.
    stack = await stack_factory(
        generation_settings={"max_concurrent_streams": 8, "max_concurrent_rpcs": 6}
    )
    before = {r: _refused(r) for r in ("TOO_MANY_CONCURRENT_RPCS", "TOO_MANY_CONCURRENT_STREAMS")}

    async def streamed() -> list[gw_pb.GenerationResult]:
        request = gw_pb.StreamGenerateOnObjectsRequest.FromString(
            _objects(20, "s", stream_tokens=True).SerializeToString()  # the same fields
        )
        results = []
        async for event in stack.stub.StreamGenerateOnObjects(request, metadata=ALICE):
            if event.HasField("hit_result"):
                results.append(event.hit_result.generation)
        return results

    unary = [
        stack.stub.GenerateOnObjects(_objects(20, f"u{n}-"), metadata=ALICE, timeout=60)
        for n in range(3)
    ]
    *responses, stream_results = await asyncio.gather(*unary, streamed())
    results = [h.generation for r in responses for h in r.hits] + stream_results
    assert len(results) == 80
    errors = [(g.error.status, g.error.reason) for g in results if g.HasField("error")]
    assert errors == []
    assert all(g.attempts == 1 and g.upstream_calls == 1 for g in results)
    assert fake.max_concurrent <= 6
    # Both refusals happened and were sent again; the time it cost is in wait_time.
    for reason, count in before.items():
        assert _refused(reason) > count, reason
    assert sum(g.wait_time.ToNanoseconds() > 0 for g in results) >= 10


async def test_the_gateway_holds_its_generation_calls_to_its_bound(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    fake.latency = 0.2
    stack = await stack_factory(
        generation_settings={"max_concurrent_rpcs": 0}, generation_max_in_flight=6, max_hits=5
    )
    responses = await asyncio.gather(
        *(stack.stub.GenerateOnObjects(_objects(5, f"r{n}-"), metadata=ALICE) for n in range(4))
    )
    results = [h.generation for r in responses for h in r.hits]
    assert [g.error.status for g in results if g.HasField("error")] == []
    # Six at once, never more, and no request's hits failed or were refused: 20 calls
    # through 6 slots, each waiting its turn (first come first served).
    assert fake.max_concurrent == 6
    waited = sorted(g.wait_time.ToNanoseconds() / 1e9 for g in results)
    assert waited[:6] == [0.0] * 6
    assert sum(w >= 0.1 for w in waited) >= 12, waited


async def test_a_tenant_waits_for_one_freed_slot_not_for_another_tenants_whole_queue(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    """The slots went first come, first served: a tenant whose calls filled them and
    queued behind them (within its LLM-calls quota: 1200 a minute against 1000 slots) held
    another tenant's one call behind its whole queue, where the generation service's own
    turns between tenants never saw it."""
    fake.latency = 0.3
    # Every answer is held until Bob's call waits: a fixed pause here let a loaded
    # machine's late Bob arrive after Alice's first calls had ended (fewer of hers left).
    fake.gate = asyncio.Event()
    stack = await stack_factory(generation_max_in_flight=2, max_hits=1)
    finished: list[str] = []
    waiting_before = _waiting()

    async def one(who: tuple[tuple[str, str], ...], name: str) -> None:
        response = await stack.stub.GenerateOnObjects(_objects(1, name), metadata=who, timeout=30)
        assert not response.hits[0].generation.HasField("error")
        finished.append(name)

    noisy = [asyncio.create_task(one(ALICE, f"alice{n}")) for n in range(8)]
    await _until(lambda: fake.gated == 2 and _waiting() == waiting_before + 6)
    bob = asyncio.create_task(one(BOB, "bob"))
    await _until(lambda: _waiting() == waiting_before + 7)  # both slots taken, all six waiting
    fake.gate.set()
    await bob
    await asyncio.gather(*noisy)
    after = len(finished) - 1 - finished.index("bob")
    # First come, first served: Bob's call ran after all eight (after <= 1). In turns:
    # it takes the first slot freed, with five or six of Alice's still waiting.
    assert after >= 4, finished


async def test_a_tenant_holding_its_share_leaves_the_other_slots_to_other_tenants(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    """Turns alone let one tenant hold every slot: its calls took them while nobody else
    waited (its concurrent-calls quota times max_hits is 6400 calls against 1000 slots),
    and another tenant's one call then waited for one of them to end, a minute-long LLM
    call, and failed GENERATION_IN_FLIGHT_WAIT. Now a tenant holds at most
    GENERATION_MAX_IN_FLIGHT_PER_TENANT; the slots past it serve the others at once."""
    stack = await _share_stack(stack_factory, fake)
    noisy = _alices_slow_calls(stack, 6)
    for _ in range(200):  # until Alice's share is running, her others waiting
        if len(fake.chat_requests) >= 2:
            break
        await asyncio.sleep(0.05)
    bob = await stack.stub.GenerateOnObjects(
        _objects(1, "bob", timeout=duration_pb2.Duration(seconds=2)), metadata=BOB
    )
    generation = bob.hits[0].generation
    assert not generation.HasField("error"), generation.error
    assert generation.wait_time.ToNanoseconds() == 0  # a slot was free for him
    alice = [(await task).hits[0].generation for task in noisy]
    # Never more than her share upstream at once; those that found no slot of her share
    # within their deadline say which setting held them.
    assert sum(r.json["model"] == "slow-model" for r in fake.chat_requests) == 2
    waited = [g.error for g in alice if g.error.reason == "GENERATION_IN_FLIGHT_WAIT"]
    assert len(waited) == 4
    for error in waited:
        assert "GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT_PER_TENANT" in error.message


async def test_a_call_that_gets_no_slot_within_its_deadline_fails_resource_exhausted(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # The LLM outlasts every deadline: the two calls that run hold their slots until their
    # deadline cuts them, so the two that wait never get one.
    fake.latency = 6.0
    stack = await stack_factory(generation_max_in_flight=2, max_hits=1)
    timeout = duration_pb2.Duration(seconds=3)

    async def call(n: int) -> gw_pb.GenerationResult:
        request = _objects(1, f"d{n}-", timeout=timeout)
        response = await stack.stub.GenerateOnObjects(request, metadata=ALICE)
        generation: gw_pb.GenerationResult = response.hits[0].generation
        return generation

    results = await asyncio.gather(*(call(n) for n in range(4)))
    statuses = sorted((g.error.status, g.error.reason) for g in results)
    # Two calls ran and ran out of time at the LLM; two never got a slot and say so.
    assert statuses == [
        ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
        ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
        ("RESOURCE_EXHAUSTED", "GENERATION_IN_FLIGHT_WAIT"),
        ("RESOURCE_EXHAUSTED", "GENERATION_IN_FLIGHT_WAIT"),
    ]
    for g in results:
        if g.error.reason == "GENERATION_IN_FLIGHT_WAIT":
            assert "GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT" in g.error.message
            assert g.attempts == 0 and g.upstream_calls == 0
            # It waited (3 s + 0.25 s of margin - MIN_CALL_SECONDS: ~2.75 s) rather than
            # failing at once: more than half its deadline, a bound far from a loaded
            # machine's delays before the wait (which shorten it). That they never got a
            # slot is shown by the outcomes (no attempt, no upstream call, two LLM
            # requests in all), not by the order the calls ended in: that rested on a
            # 0.25-0.5 s margin.
            waited = g.wait_time.ToNanoseconds() / 1e9
            assert waited > timeout.seconds / 2, waited
    # Only the two that ran reached the LLM: the others' objects were never sent.
    prompts = " ".join(str(r.json["messages"]) for r in fake.chat_requests)
    assert len(fake.chat_requests) == 2
    assert sum(f"d{n}-0" in prompts for n in range(4)) == 2


def test_the_bound_leaves_room_for_a_whole_request() -> None:
    assert GatewaySettings(generation_max_in_flight=0).generation_max_in_flight == 0
    assert GatewaySettings(generation_max_in_flight=101).generation_max_in_flight == 101
    with pytest.raises(ValidationError, match="more than max_hits"):
        GatewaySettings(generation_max_in_flight=100)
    with pytest.raises(ValidationError, match="more than max_hits"):
        GatewaySettings(max_hits=2000)  # the default bound, 1000, is less
    # A tenant's share too: a whole request fits in it.
    with pytest.raises(ValidationError, match=r"per_tenant \(100\) must be 0"):
        GatewaySettings(generation_max_in_flight_per_tenant=100)
    assert GatewaySettings(generation_max_in_flight_per_tenant=0).generation_max_in_flight


async def _replica(fake: FakeOpenAI) -> GrpcServer:
    # A replica that serves 6 calls at once and takes 8 streams on a connection.
    server = await build_generation(
        GenerationSettings(
            providers=[fake_provider(fake)],
            default_provider="fake",
            metrics_port=None,
            internal_token=SecretStr(TOKEN),
            max_concurrent_rpcs=6,
            max_concurrent_streams=8,
        ),
        port=0,
    )
    await server.start()
    return server


async def test_a_bound_sized_for_two_replicas_uses_both(stack_factory: StackFactory) -> None:
    # Two generation replicas behind one target, the bound at both replicas' capacity
    # (2 x 6): calls spread over both, none fails (round-robin may send one replica a
    # call more than it takes; that refusal is waited out).
    fakes = [await FakeOpenAI(latency=0.2).start() for _ in range(2)]
    servers = [await _replica(fake) for fake in fakes]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
        stack = await stack_factory(
            generation=False, generation_addr=target, generation_max_in_flight=12, max_hits=10
        )
        responses = await asyncio.gather(
            *(
                stack.stub.GenerateOnObjects(_objects(10, f"m{n}-"), metadata=ALICE)
                for n in range(4)
            )
        )
        results = [h.generation for r in responses for h in r.hits]
        assert [g.error.status for g in results if g.HasField("error")] == []
        assert all(g.attempts == 1 for g in results)
        # Both replicas ran calls side by side, each within its own limit.
        assert all(3 <= fake.max_concurrent <= 6 for fake in fakes), [
            f.max_concurrent for f in fakes
        ]
        assert sum(len(fake.chat_requests) for fake in fakes) == 40
    finally:
        for server in servers:
            await server.stop(0)
        for fake in fakes:
            await fake.stop()


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "StreamGenerate"])
async def test_a_refused_call_is_sent_again_on_either_path(
    stack_factory: StackFactory, fake: FakeOpenAI, streamed: bool
) -> None:
    # A replica that serves 2 calls at once and a gateway that does not bound its calls:
    # 6 calls at once, through the forwarded GenerationService, are refused by its
    # process and sent again until each runs, streamed or not. Each call takes 0.5 s: at
    # 0.2 s a loaded CI machine once sent the sixth call after the first two had finished,
    # so it ran unrefused and only 3 of the 6 said they waited.
    fake.latency = 0.5
    stack = await stack_factory(
        generation_settings={"max_concurrent_rpcs": 2}, generation_max_in_flight=0
    )
    stub = gen_grpc.GenerationServiceStub(stack.channel)
    before = _refused("TOO_MANY_CONCURRENT_RPCS")
    user = gen_pb.Message(role=gen_pb.ROLE_USER, content="hello there")

    async def call() -> tuple[str, int, float]:
        if not streamed:
            reply = await stub.Generate(
                gen_pb.GenerateRequest(messages=[user]), metadata=ALICE, timeout=30
            )
            return reply.text, reply.attempts, reply.wait_time.ToNanoseconds() / 1e9
        text, attempts, waited = "", 0, 0.0
        request = gen_pb.StreamGenerateRequest(messages=[user])
        async for chunk in stub.StreamGenerate(request, metadata=ALICE, timeout=30):
            text += chunk.delta
            if chunk.HasField("wait_time"):
                attempts, waited = chunk.attempts, chunk.wait_time.ToNanoseconds() / 1e9
        return text, attempts, waited

    replies = await asyncio.gather(*(call() for _ in range(6)))
    assert all(text and attempts == 1 for text, attempts, _ in replies), replies
    assert fake.max_concurrent <= 2
    assert len(fake.chat_requests) == 6
    assert _refused("TOO_MANY_CONCURRENT_RPCS") >= before + 4
    assert sum(waited > 0 for *_, waited in replies) >= 4, replies


async def test_a_gateway_of_one_tenant_gives_it_every_slot_whatever_the_share(
    stack_factory: StackFactory, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A share only tells tenants apart. Before, a one-tenant (or open) gateway held its
    only tenant to GENERATION_MAX_IN_FLIGHT_PER_TENANT (500 of 1000 by default): half the
    slots idled while its calls waited. Now the share is off there, as the call share,
    and an explicitly set share says so at WARNING."""
    with caplog.at_level("INFO"):
        stack = await _share_stack(stack_factory, fake, api_keys="alice:key-alice-123")
    off = [r for r in caplog.records if "GENERATION_MAX_IN_FLIGHT_PER_TENANT is off" in r.message]
    assert [r.levelname for r in off] == ["WARNING"]
    assert "the one tenant 'alice'" in off[0].getMessage()
    results = [(await task).hits[0].generation for task in _alices_slow_calls(stack, 4)]
    # Every one of the four slots served her: each call reached the LLM (and ran out of
    # time there); none waited for a slot of a share.
    assert sum(r.json["model"] == "slow-model" for r in fake.chat_requests) == 4
    assert [g.error.reason for g in results if g.error.reason] == ["DEADLINE_EXCEEDED"] * 4


async def test_an_unset_share_is_half_of_the_bound_and_follows_it() -> None:
    """It was a fixed 500: raising GENERATION_MAX_IN_FLIGHT left a tenant at 500."""
    assert await _share(GatewaySettings()) == 500
    raised = GatewaySettings(generation_max_in_flight=4000)
    assert await _share(raised) == 2000
    # Never max_hits or fewer: a request of max_hits hits would wait for its own calls.
    small = GatewaySettings(generation_max_in_flight=150, max_hits=100)
    assert await _share(small) == 101
    explicit = GatewaySettings(
        generation_max_in_flight=4000, generation_max_in_flight_per_tenant=300
    )
    assert await _share(explicit) == 300


async def _share(settings: GatewaySettings) -> int:
    client = GenerationClient("127.0.0.1:1", settings)
    await client.close()
    return client.max_in_flight_per_tenant
