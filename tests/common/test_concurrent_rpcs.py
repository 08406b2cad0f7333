"""The server's cap on calls at once (``max_concurrent_rpcs``), held by the chassis: a call
over it gets RESOURCE_EXHAUSTED with an ErrorInfo naming the limit and its setting, and
a slot comes back whenever a call ends (answered, failed, cancelled, a stream cancelled
mid-way). Health checks and reflection take no slot. A real grpc.aio server and channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from services.generation.settings import GenerationSettings
from tests.support.rpc import error_info

SERVICE = "gensearch.test.v1.SlotService"


def _ident(b: bytes) -> bytes:
    return b


class Gate:
    """Handlers wait here until the test lets them go; ``entered``/``left`` say where the
    one in progress is."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()
        self.left = asyncio.Event()

    async def hold(self) -> None:
        self.entered.set()
        try:
            await self.open.wait()
        finally:
            self.left.set()


GATE = Gate()


async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await GATE.hold()
    return b"held"


async def quick(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"quick"


async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise InvalidArgument("no", field="x")


async def hold_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    await GATE.hold()
    yield b"second"


async def hold_chat(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request
        await GATE.hold()


def _register(_servicer: object, server: grpc.aio.Server) -> None:
    kw = {"request_deserializer": _ident, "response_serializer": _ident}
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn, **kw)
        for name, fn in {"Hold": hold, "Quick": quick, "Fail": fail}.items()
    }
    handlers["HoldStream"] = grpc.unary_stream_rpc_method_handler(hold_stream, **kw)
    handlers["HoldChat"] = grpc.stream_stream_rpc_method_handler(hold_chat, **kw)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    global GATE
    GATE = Gate()
    # A service's own settings class, so the refusal names its namespaced variable.
    server = GrpcServer(GenerationSettings(max_concurrent_rpcs=1), port=0)
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel
    GATE.open.set()
    await channel.close()
    await server.stop(0)


def _unary(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}", _ident, _ident)


async def _refused(channel: grpc.aio.Channel) -> None:
    """A second call while one is in flight: refused, with our ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _unary(channel, "Quick")(b"", timeout=5)
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info.reason == "TOO_MANY_CONCURRENT_RPCS" and info.domain == "gensearch"
    setting = "GENSEARCH_GENERATION_MAX_CONCURRENT_RPCS"
    assert dict(info.metadata) == {"limit": "1", "setting": setting, "scope": "server"}
    assert setting in (err.details() or "") and "1 calls at once" in (err.details() or "")


async def _admitted(channel: grpc.aio.Channel) -> None:
    assert await _unary(channel, "Quick")(b"", timeout=5) == b"quick"


async def test_a_second_call_is_refused_until_the_first_is_answered(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    first = asyncio.ensure_future(_unary(channel, "Hold")(b"", timeout=10))
    await GATE.entered.wait()
    await _refused(channel)
    # Health checks and reflection take no slot: a busy server still answers its probes.
    health = health_pb2_grpc.HealthStub(channel)
    got = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert got.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = [
        answer
        async for answer in reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    ]
    assert len(answers) == 1
    assert SERVICE in [s.name for s in answers[0].list_services_response.service]
    GATE.open.set()
    assert await first == b"held"
    await _admitted(channel)
    assert server.call_slots.in_flight == 0


async def test_a_failed_call_gives_its_slot_back(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _unary(channel, "Fail")(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Refusals take no slot either.
    first = asyncio.ensure_future(_unary(channel, "Hold")(b"", timeout=10))
    await GATE.entered.wait()
    for _ in range(3):
        await _refused(channel)
    GATE.open.set()
    await first
    await _admitted(channel)
    assert server.call_slots.in_flight == 0


async def test_a_cancelled_call_gives_its_slot_back(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    call = _unary(channel, "Hold")(b"", timeout=10)
    await GATE.entered.wait()
    await _refused(channel)
    call.cancel()
    await GATE.left.wait()  # the server saw the cancellation
    await asyncio.sleep(0)
    await _admitted(channel)
    assert server.call_slots.in_flight == 0


@pytest.mark.parametrize("method", ["HoldStream", "HoldChat"])
async def test_a_stream_cancelled_mid_way_gives_its_slot_back(
    served: tuple[GrpcServer, grpc.aio.Channel], method: str
) -> None:
    server, channel = served
    stream: grpc.aio.Call
    if method == "HoldStream":
        stream = channel.unary_stream(f"/{SERVICE}/{method}", _ident, _ident)(b"", timeout=10)
    else:
        stream = channel.stream_stream(f"/{SERVICE}/{method}", _ident, _ident)(timeout=10)
        await stream.write(b"first")  # type: ignore[attr-defined]
    assert await stream.read() == b"first"  # type: ignore[attr-defined]
    await GATE.entered.wait()
    await _refused(channel)
    stream.cancel()
    await GATE.left.wait()
    await asyncio.sleep(0)
    await _admitted(channel)
    assert server.call_slots.in_flight == 0


async def test_a_stream_answered_in_full_gives_its_slot_back(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    GATE.open.set()
    stream = channel.unary_stream(f"/{SERVICE}/HoldStream", _ident, _ident)(b"", timeout=10)
    assert [m async for m in stream] == [b"first", b"second"]
    await _admitted(channel)
    assert server.call_slots.in_flight == 0


async def test_zero_means_no_limit() -> None:
    global GATE
    GATE = Gate()
    server = GrpcServer(CommonSettings(max_concurrent_rpcs=0), port=0)
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        held = [asyncio.ensure_future(_unary(channel, "Hold")(b"", timeout=10)) for _ in range(5)]
        await GATE.entered.wait()
        await _admitted(channel)
        GATE.open.set()
        assert await asyncio.gather(*held) == [b"held"] * 5
    finally:
        GATE.open.set()
        await channel.close()
        await server.stop(0)
