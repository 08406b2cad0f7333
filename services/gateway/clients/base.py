"""What every downstream client shares: the caller's identity on each call, and the one
place a failed call's ``AioRpcError`` becomes our ``ServiceError``.

Calls are not held back while a channel reconnects (a service that is down answers
UNAVAILABLE at once), with one exception: a channel that has never connected. gRPC fails a
call without ``wait_for_ready`` as soon as a connection attempt has failed, so a gateway
started a moment before its services (a rollout, ``gensearch up``) would fail its first
calls, writes included, which nothing retries. Such calls first wait for the channel's
first connection, within ``downstream_connect_wait`` of the client's first call and never
past their deadline. Waiting before sending is safe for any method, writes included:
nothing has reached the service yet.

The typed clients (``memory``, ``retrieval``, ``generation``) and the forwarded APIs all
call through ``unary``/``stream`` here, so a downstream status (code, message, reason,
field) reaches the gateway's caller the same way whatever path the call took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

import grpc

from services.common.errors import (
    DOWNSTREAM_UNAVAILABLE,
    ServiceError,
    Unavailable,
    from_rpc_error,
)
from services.common.logs import ThrottledWarning
from services.gateway.clients.caller import Caller, Metadata
from services.gateway.clients.channel import make_channel
from services.gateway.deadline import sendable, time_left
from services.gateway.settings import GatewaySettings

log = logging.getLogger("gensearch.gateway.downstream")

# How grpc-python reports HTTP/2 RST_STREAM REFUSED_STREAM (error code 7; RFC 9113 8.7:
# "the stream was not processed", safe to retry): UNAVAILABLE, "Stream removed (RST_STREAM
# (Received RST_STREAM with error code 7))", in the status text only. A server resets a
# stream so when its connection carries its MAX_CONCURRENT_STREAMS, or as it goes away.
# Pinned by tests/gateway/test_refused_streams.py and test_generation_in_flight.py, which
# fail if a grpcio release words it otherwise.
REFUSED_STREAM_TEXT = "RST_STREAM with error code 7"


def refused_stream(err: grpc.aio.AioRpcError) -> bool:
    """Whether the service's HTTP/2 connection refused the call before it ran."""
    return err.code() == grpc.StatusCode.UNAVAILABLE and REFUSED_STREAM_TEXT in (
        err.details() or ""
    )


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
        self._connect_wait = settings.downstream_connect_wait
        self._connected = self._connect_wait == 0
        # Loop time until which calls wait for the first connection, set by the first call.
        self._wait_until: float | None = None
        # The service unreachable (its channel's own UNAVAILABLE, not one the service
        # answered): one WARNING per outage (again every 30 s while it lasts) and one INFO
        # line when it answers again. Before, nothing but each call's access line.
        self._outage = ThrottledWarning(
            log,
            f"the {self.service} service is unreachable (%s): calls to it answer UNAVAILABLE "
            f"until it answers (GENSEARCH_GATEWAY_{self.service.upper()}_ADDR)",
            recovery=f"the {self.service} service answers again",
        )
        # The service refusing calls at its HTTP/2 layer (REFUSED_STREAM) is no outage: it
        # answered, over a connection that works. It was logged as the line above, sending
        # the operator to an address setting that was right.
        self._streams_setting = f"GENSEARCH_{self.service.upper()}_MAX_CONCURRENT_STREAMS"
        self._refused = ThrottledWarning(
            log,
            f"the {self.service} service refused calls (%s): HTTP/2 REFUSED_STREAM, its "
            f"connection from this gateway carries its limit of calls at once "
            f"({self._streams_setting}), or it is going away; those calls never ran and "
            f"answer UNAVAILABLE, safe to retry",
        )

    def metadata(self, caller: Caller) -> Metadata:
        """What every call carries: the identity the gateway vouches for."""
        return caller.identity

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as err:
            mapped = self.map_error(err)
            if mapped.reason == DOWNSTREAM_UNAVAILABLE and not refused_stream(err):
                self._outage(err, cause=err.code().name)
            else:  # the service answered, if with an error or a refusal
                self._outage.recovered()
                if mapped.reason == DOWNSTREAM_UNAVAILABLE:
                    self._refused(err, cause="REFUSED_STREAM")
            raise mapped from None
        self._outage.recovered()

    def map_error(self, err: grpc.aio.AioRpcError) -> ServiceError:
        """Our error for a failed call (a client may recognise statuses of its own first)."""
        if refused_stream(err):
            # Still UNAVAILABLE (retryable, as gRPC's clients take it), but saying what
            # happened: "is unavailable" read as the service being down.
            return Unavailable(
                f"the {self.service} service refused the call: the gateway's connection to "
                f"it carries its limit of calls at once ({self._streams_setting}); the call "
                "never ran, try again shortly",
                reason=DOWNSTREAM_UNAVAILABLE,
                metadata={"service": self.service, "setting": self._streams_setting},
            )
        return from_rpc_error(err, self.service)

    async def _first_connection(self, timeout: float | None) -> float | None:
        """While the channel has never connected, waits for its first connection (see the
        module's docstring); returns what is left of the call's ``timeout``."""
        if self._connected:
            return timeout
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._wait_until is None:
            self._wait_until = now + self._connect_wait
        if now >= self._wait_until:
            return timeout  # the window is over: fail fast, as on any channel
        until = self._wait_until if timeout is None else min(self._wait_until, now + timeout)
        try:
            await asyncio.wait_for(self.channel.channel_ready(), until - now)
        except TimeoutError:
            pass  # the call goes out and fails as it would have; mapped in _mapped
        else:
            self._connected = True
        return None if timeout is None else time_left(now + timeout)

    async def unary(self, method: str, request: Any, caller: Caller, timeout: float | None) -> Any:
        """One call with one response (``request`` may be a stream of requests for a
        client-streaming method)."""
        timeout = sendable(await self._first_connection(timeout))
        with self._mapped():
            return await getattr(self._stub, method)(
                request, metadata=self.metadata(caller), timeout=timeout
            )

    async def stream(
        self, method: str, request: Any, caller: Caller, timeout: float | None
    ) -> AsyncIterator[Any]:
        """The responses of a server-streaming call as they come."""
        timeout = sendable(await self._first_connection(timeout))
        call = getattr(self._stub, method)(request, metadata=self.metadata(caller), timeout=timeout)
        try:
            with self._mapped():
                async for response in call:
                    yield response
        finally:
            call.cancel()  # a no-op once the call has ended; stops it if the reader left

    async def close(self) -> None:
        await self.channel.close()
