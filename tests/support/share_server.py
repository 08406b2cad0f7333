"""A real grpc.aio server of our chassis (``GrpcServer``) whose methods hold their calls at a
gate, for the tests of a tenant's share of call slots (tests/common/test_tenant_call_share*.py).

Methods of ``service``: ``Hold`` (held until ``gate.open`` is set), ``Quick`` (answers at
once), ``HoldStream`` (one message, then held), ``Upload`` (a client stream read to its
end), ``Fail`` (a servicer's own bug: INTERNAL). Requests and replies are raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from services.common.chassis import Admission
from services.common.server import GrpcServer
from services.common.settings import CommonSettings


def ident(b: bytes) -> bytes:
    return b


class Gate:
    def __init__(self) -> None:
        self.open = asyncio.Event()
        #: Calls that reached a holding method (or upload messages read).
        self.held = 0

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.held += 1
        await self.open.wait()
        return b"held"

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        yield b"first"
        await self.hold(request, context)

    async def upload(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        async for _ in requests:
            self.held += 1
        return b"read"

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("a servicer's own bug")


async def quick(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"quick"


Served = tuple[GrpcServer, grpc.aio.Channel, Gate]


@contextlib.asynccontextmanager
async def serving(
    settings: CommonSettings, service: str, admission: Admission | None = None
) -> AsyncIterator[Served]:
    """The server started with ``settings`` and a channel to it; stopped at the end, the
    gate opened first so no held call outlives the test."""
    gate = Gate()

    def register(_servicer: object, server: grpc.aio.Server) -> None:
        kw = {"request_deserializer": ident, "response_serializer": ident}
        handlers = {
            "Hold": grpc.unary_unary_rpc_method_handler(gate.hold, **kw),
            "Quick": grpc.unary_unary_rpc_method_handler(quick, **kw),
            "HoldStream": grpc.unary_stream_rpc_method_handler(gate.stream, **kw),
            "Fail": grpc.unary_unary_rpc_method_handler(gate.fail, **kw),
            "Upload": grpc.stream_unary_rpc_method_handler(gate.upload, **kw),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))

    server = GrpcServer(settings, port=0, admission=admission)
    server.add_service(register, None, service)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel, gate
    finally:
        gate.open.set()
        await channel.close()
        await server.stop(0)


def unary(channel: grpc.aio.Channel, service: str, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{service}/{name}", ident, ident)
