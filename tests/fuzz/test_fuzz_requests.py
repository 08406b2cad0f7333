"""Arbitrary instances of every request message of every service, sent to the four real
services on loopback (the fake LLM behind generation): through the gateway, and to each
service directly. A call fails the test when it answers INTERNAL or UNKNOWN (client input
must get a clear status), when a response message is over the size bound, or when a
service stops answering health checks afterwards.

Hypothesis draws the requests from the message descriptors (strategies.py). Its example
database is off and its random choices derandomized, so a CI run is reproducible; a
failure prints the method and the request that caused it. ``GENSEARCH_FUZZ_EXAMPLES`` sets
the examples per method (default 60; the whole run takes about a minute).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from services.common.auth import Identity, Role, forwarded_identity
from tests.fuzz.strategies import RequestStrategies
from tests.gateway.conftest import ALICE, TOKEN, Stack, create_books

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("GENSEARCH_FUZZ_EXAMPLES", "60"))
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
CALL_TIMEOUT = 10.0
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
SERVICES = {
    d.full_name: d
    for module in (gw_pb, mem_pb, ret_pb, gen_pb)
    for d in module.DESCRIPTOR.services_by_name.values()
}
# Destructive methods last, so the others meet the collection and conversation intact.
LAST = ("DeleteObjects", "DeleteConversation", "DeleteCollection")


@dataclass
class Target:
    """One server and the identity its calls carry."""

    name: str
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]
    services: tuple[str, ...]


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    largest_response: int


def _methods(services: tuple[str, ...]) -> list[tuple[str, pb_descriptor.MethodDescriptor]]:
    methods = [(s, m) for s in services for m in SERVICES[s].methods]
    return sorted(methods, key=lambda sm: sm[1].name in LAST)


async def _invoke(
    target: Target, service: str, method: pb_descriptor.MethodDescriptor, requests: list[Any]
) -> Outcome:
    path = f"/{service}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response_type.FromString,
    }
    call_kwargs = {"metadata": target.metadata, "timeout": CALL_TIMEOUT}
    largest = 0
    try:
        if method.client_streaming:
            call = target.channel.stream_unary(path, **kwargs)
            response = await call(iter(requests), **call_kwargs)
            largest = response.ByteSize()
        elif method.server_streaming:
            stream = target.channel.unary_stream(path, **kwargs)(requests[0], **call_kwargs)
            async for item in stream:
                largest = max(largest, item.ByteSize())
        else:
            response = await target.channel.unary_unary(path, **kwargs)(requests[0], **call_kwargs)
            largest = response.ByteSize()
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", largest)
    return Outcome(grpc.StatusCode.OK, "", largest)


async def _healthy(channel: grpc.aio.Channel) -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _fuzz_method(
    run: Callable[[Awaitable[Outcome]], Outcome],
    target: Target,
    service: str,
    method: pb_descriptor.MethodDescriptor,
    strategies: RequestStrategies,
) -> None:
    """Runs hypothesis over one method (in a worker thread; calls go to the test's loop)."""
    request_type = message_factory.GetMessageClass(method.input_type)
    fillers = strategies.message(method.input_type)
    count = (1, 3) if method.client_streaming else (1, 1)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(st.lists(fillers, min_size=count[0], max_size=count[1]))
    def check(chosen: list[Any]) -> None:
        requests = []
        for fill in chosen:
            request = request_type()
            fill(request)
            requests.append(request)
        note(f"{target.name} {service}/{method.name}: {str(requests)[:3000]}")
        outcome = run(_invoke(target, service, method, requests))
        assert outcome.code not in FORBIDDEN, (
            f"{target.name} {method.name} answered {outcome.code.name}: {outcome.details}"
        )
        assert outcome.largest_response <= MAX_RESPONSE_BYTES, (
            f"{method.name} sent a {outcome.largest_response}-byte response"
        )

    check()


async def test_no_request_gets_internal_or_unknown(stack: Stack) -> None:
    object_ids = await create_books(stack)
    made = await stack.memory.CreateConversation(
        mem_pb.CreateConversationRequest(name="fuzz"), metadata=ALICE
    )
    cid = made.conversation.conversation_id
    stored = await stack.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=cid, input="q", response="a"),
        metadata=ALICE,
    )
    known = [
        "Books", "title", "body", "year", "tags", "fake", "fake-model", "{title}",
        cid, stored.interaction.interaction_id, *object_ids[:2],
    ]  # fmt: skip
    properties = ["title", "body", "year", "tags"]
    hints = {
        "collection": ["Books"],
        "name": ["Books"],
        "property": properties,
        "return_properties": properties,
        "grouped_properties": properties,
        "context_field_list": properties,
        "context_fields": properties,
        "conversation_id": [cid],
        "interaction_id": [stored.interaction.interaction_id],
        "id": object_ids,
        "ids": object_ids,
        "provider": ["fake"],
        "model": ["fake-model"],
        "single_prompt": ["{title}", "{year}: {tags}"],
        # Caller base URLs: none is on the (empty) allowlist, metadata ones least of all.
        "base_url": ["http://127.0.0.1:1/v1", "http://169.254.169.254/v1", "https://a.example"],
        "stop": ["\n", "END"],
    }
    strategies = RequestStrategies(known, hints)
    identity = forwarded_identity(Identity("alice", "alice", Role.ADMIN), TOKEN)
    direct = {
        name: grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        for name, server in stack.servers.items()
    }
    stack.channels.extend(direct.values())
    targets = [
        Target("gateway", stack.channel, ALICE, tuple(stack.gateway.service_names)),
        *(
            Target(name, channel, identity, tuple(stack.servers[name].service_names))
            for name, channel in direct.items()
        ),
    ]
    loop = asyncio.get_running_loop()

    def run(call: Awaitable[Outcome]) -> Outcome:
        return asyncio.run_coroutine_threadsafe(call, loop).result(CALL_TIMEOUT * 3)  # type: ignore[arg-type]

    failures: list[str] = []
    for target in targets:
        for service, method in _methods(target.services):
            try:
                await asyncio.to_thread(_fuzz_method, run, target, service, method, strategies)
            # An assertion (shrunk, its example printed), or hypothesis' FlakyFailure when
            # the failure did not happen again: either way, report and go on.
            except Exception as err:
                failures.append(f"{target.name} {service}/{method.name}: {err}"[:2000])
            for name, channel in (("gateway", stack.channel), *direct.items()):
                assert await _healthy(channel), f"{name} stopped answering after {method.name}"
    assert not failures, "\n\n".join(failures)
