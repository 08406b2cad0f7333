"""What the gateway charges a generation call sent again after its replica's shutdown cut:
the LLM requests both tries made, and never more than the one admitted before the first
try when none was made. A scripted generation servicer over real gRPC answers the first
try with the cut (``upstream_calls`` 1: the answer came, its corrective retry was on its
way) and the second with a refusal that made no request (``upstream_calls`` 0)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc

from services.common.auth import Identity, Role
from services.common.errors import UPSTREAM_CALLS, FailedPrecondition, ServiceError, Unavailable
from services.common.shutdown_cut import REASON as SHUTDOWN_REASON
from services.gateway.clients.caller import Caller
from services.gateway.clients.generation import GenerationClient
from services.gateway.settings import GatewaySettings


class _Scripted(gen_grpc.GenerationServiceServicer):
    """Answers each Generate with the next error of its script."""

    def __init__(self, errors: list[ServiceError]) -> None:
        self.errors = errors

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.errors.pop(0).to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[_Scripted, str]]:
    servicer = _Scripted([])
    server = grpc.aio.server()
    gen_grpc.add_GenerationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_cut_try_then_a_try_that_made_no_request_is_charged_the_cut_ones_only(
    scripted: tuple[_Scripted, str],
) -> None:
    servicer, target = scripted
    servicer.errors = [
        Unavailable("stopping", reason=SHUTDOWN_REASON, metadata={UPSTREAM_CALLS: "1"}),
        FailedPrecondition("refused unrun", reason="REFUSED", metadata={UPSTREAM_CALLS: "0"}),
    ]
    client = GenerationClient(target, GatewaySettings())
    charged: list[int] = []

    async def before(tenant: str) -> None:
        charged.append(1)  # the one LLM request admitted before the first try

    async def after(extra: int, tenant: str) -> None:
        charged.append(extra)

    client.before_generate, client.after_generate = before, after
    caller = Caller(Identity("judy", "judy", Role.ADMIN), ())
    try:
        with pytest.raises(FailedPrecondition):
            await client.generate(gen_pb.GenerateRequest(), caller, 30)
    finally:
        await client.channel.close()
    assert servicer.errors == [], "the cut try was not sent again"
    # One request made in all (the cut try's): charged once. Before, the one admitted
    # before the first try was counted on top of the cut try's (2).
    assert sum(charged) == 1, charged


class _ScriptedStream(_Scripted):
    """StreamGenerate: the first call cut, the second streaming ``chunks``."""

    def __init__(self, errors: list[ServiceError], chunks: list[Any]) -> None:
        super().__init__(errors)
        self.chunks = chunks

    async def StreamGenerate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.errors:
            status = self.errors.pop(0).to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        for chunk in self.chunks:
            yield chunk


async def test_a_cut_stream_sent_again_is_charged_its_cut_try_when_the_reader_stops_early() -> None:
    """The second try streams; its reader stops after the first message, before the last
    (which carries the count). The cut try's request is known, and is charged all the
    same. Before, nothing but the admitted one was: the cut try's count was charged only
    with the last message."""
    servicer = _ScriptedStream(
        [Unavailable("stopping", reason=SHUTDOWN_REASON, metadata={UPSTREAM_CALLS: "1"})],
        [
            gen_pb.StreamGenerateResponse(delta="a"),
            gen_pb.StreamGenerateResponse(delta="b", upstream_calls=1),
        ],
    )
    server = grpc.aio.server()
    gen_grpc.add_GenerationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = GenerationClient(f"127.0.0.1:{port}", GatewaySettings())
    charged: list[int] = []

    async def before(tenant: str) -> None:
        charged.append(1)

    async def after(extra: int, tenant: str) -> None:
        charged.append(extra)

    client.before_generate, client.after_generate = before, after
    caller = Caller(Identity("judy", "judy", Role.ADMIN), ())
    try:
        stream = client.stream_generate(gen_pb.StreamGenerateRequest(), caller, 30)
        first = await anext(stream)  # type: ignore[call-overload]
        assert first.delta == "a"
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await client.channel.close()
        await server.stop(0)
    assert servicer.errors == [], "the cut try was not sent again"
    # The cut try's request and the streaming try's: two at least.
    assert sum(charged) == 2, charged
