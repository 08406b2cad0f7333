"""What every downstream client shares: the caller's identity on each call, and the one
place a failed call's ``AioRpcError`` becomes our ``ServiceError``.

The typed clients (``memory``, ``retrieval``, ``generation``) and the forwarded APIs all
call through ``unary``/``stream`` here, so a downstream status (code, message, reason,
field) reaches the gateway's caller the same way whatever path the call took.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

import grpc

from services.common.errors import from_rpc_error
from services.gateway.clients.caller import Caller, Metadata
from services.gateway.clients.channel import make_channel
from services.gateway.settings import GatewaySettings


class ServiceClient:
    #: Named in the message of a status the channel made itself ("the memory service is
    #: unavailable").
    service: ClassVar[str] = ""
    #: The proto service, for the channel's retry policy.
    proto_service: ClassVar[str] = ""
    #: The generated stub class (called with the channel).
    stub_class: ClassVar[type[Any]]

    def __init__(
        self,
        target: str,
        settings: GatewaySettings,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.channel = make_channel(target, self.proto_service, settings, interceptors)
        self._stub = self.stub_class(self.channel)

    def metadata(self, caller: Caller) -> Metadata:
        """What every call carries: the identity the gateway vouches for."""
        return caller.identity

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, self.service) from None

    async def unary(self, method: str, request: Any, caller: Caller, timeout: float | None) -> Any:
        """One call with one response (``request`` may be a stream of requests for a
        client-streaming method)."""
        with self._mapped():
            return await getattr(self._stub, method)(
                request, metadata=self.metadata(caller), timeout=timeout
            )

    async def stream(
        self, method: str, request: Any, caller: Caller, timeout: float | None
    ) -> AsyncIterator[Any]:
        """The responses of a server-streaming call as they come."""
        call = getattr(self._stub, method)(request, metadata=self.metadata(caller), timeout=timeout)
        try:
            with self._mapped():
                async for response in call:
                    yield response
        finally:
            call.cancel()  # a no-op once the call has ended; stops it if the reader left

    async def close(self) -> None:
        await self.channel.close()
