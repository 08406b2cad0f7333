"""A gRPC service on loopback that relays every method, as bytes, to the real one at
``target``: a stand-in for another version of a service (one without a method, or
without a field). Subclasses change what goes through with ``serves``, ``request`` and
``answer``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc


class Relay(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.target = ""

    def serves(self, method: str) -> bool:
        """False: ``method`` is unknown here (UNIMPLEMENTED)."""
        return True

    def request(self, method: str, request: bytes) -> bytes:
        """What is sent on for ``method``."""
        return request

    async def answer(self, method: str, answer: bytes) -> bytes:
        """What the caller gets back for ``method``."""
        return answer

    def failed(self, method: str, err: grpc.aio.AioRpcError) -> None:
        """Sees the error the real service answered ``method`` with (passed on as is)."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        if not self.serves(method):
            return None

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            request = self.request(method, request)
            async with grpc.aio.insecure_channel(self.target) as channel:
                try:
                    answer: bytes = await channel.unary_unary(method)(
                        request, metadata=context.invocation_metadata(), timeout=10
                    )
                except grpc.aio.AioRpcError as err:
                    self.failed(method, err)
                    # As a tuple: grpc-aio's abort takes no Metadata object (a TypeError,
                    # which failed the relayed call UNKNOWN instead of with its status).
                    trailers = tuple(err.trailing_metadata() or ())
                    await context.abort(err.code(), err.details() or "", trailers)
            return await self.answer(method, answer)

        return grpc.unary_unary_rpc_method_handler(relay)


@contextlib.asynccontextmanager
async def serving(relay: Relay) -> AsyncIterator[str]:
    """``relay`` served on a loopback port for the block; yields its address."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers((relay,))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
