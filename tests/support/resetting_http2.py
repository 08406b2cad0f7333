"""An HTTP/2 server on loopback that resets every stream it is sent (RST_STREAM with the
error code it was given) and serves nothing else: a stand-in for a gRPC server that refuses
calls at the HTTP/2 layer (REFUSED_STREAM: its connection's ``max_concurrent_streams``
reached, or a server going away) or aborts them. grpc-python's own server queues nothing
past ``max_concurrent_streams`` only in races that a test cannot bring about at will
(grpc's client holds streams past the limit the server announced); this one refuses every
time. The h2 library (a kept dependency, via httpx) does the protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from services.devlaunch.processes import free_port


class ResettingServer:
    def __init__(self, code: ErrorCodes = ErrorCodes.REFUSED_STREAM) -> None:
        self.code = code
        self.port = 0
        self.resets = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        conn.reset_stream(event.stream_id, self.code)
                        self.resets += 1
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError, asyncio.CancelledError):
            pass  # the client went, or the test's loop is ending
        finally:
            self._writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def resetting_server(
    code: ErrorCodes = ErrorCodes.REFUSED_STREAM,
) -> AsyncIterator[ResettingServer]:
    server = ResettingServer(code)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
