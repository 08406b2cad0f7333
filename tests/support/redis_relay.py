"""A loopback relay in front of a real Redis that lets a test act between two commands of
a client: before each command ``before`` picks, the relay holds it, awaits the test's
step (a write by another client, straight to Redis), then sends it on. So a write lands
between two round trips of one call every time, where a race would only sometimes put it
there. The bytes go through as they are; only a standalone server (a cluster's clients
learn its nodes' own addresses, past the relay).

    async with relaying(server.url, before) as url:
        client = connect(url, cluster=False)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

Step = Callable[[list[bytes]], Awaitable[None]]


async def _command(reader: asyncio.StreamReader) -> tuple[bytes, list[bytes]]:
    """One command as a client sends it (a RESP array of bulk strings, as redis-py
    writes every command): its bytes, and its arguments."""
    header = await reader.readuntil(b"\r\n")
    if not header.startswith(b"*"):
        raise ValueError(f"not a RESP array: {header[:40]!r}")  # inline commands: none here
    raw = [header]
    args = []
    for _ in range(int(header[1:-2])):
        length = await reader.readuntil(b"\r\n")
        data = await reader.readexactly(int(length[1:-2]) + 2)
        raw += [length, data]
        args.append(data[:-2])
    return b"".join(raw), args


class RedisRelay:
    """Serves each client connection (``serve``) with one of its own to ``upstream_url``."""

    def __init__(self, upstream_url: str, before: Step) -> None:
        url = urlsplit(upstream_url)
        assert url.hostname is not None and url.port is not None, upstream_url
        self._upstream = (url.hostname, url.port)
        self._before = before
        self._pipes: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        async def to_redis() -> None:
            while True:
                raw, args = await _command(reader)
                await self._before(args)  # the command waits here for the test's step
                up_writer.write(raw)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        pipes = [asyncio.create_task(to_redis()), asyncio.create_task(to_client())]
        self._pipes.update(pipes)
        try:
            # Either side closing (or a step failing: the test checks what its steps did)
            # ends the connection.
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in done:
                pipe.exception()  # seen: a closed connection is how a relay ends
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)
            writer.close()
            up_writer.close()

    async def cancel(self) -> None:
        """Ends every connection still open."""
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@contextlib.asynccontextmanager
async def relaying(upstream_url: str, before: Step) -> AsyncIterator[str]:
    """A RedisRelay to ``upstream_url`` served on a loopback port for the block; yields
    its URL."""
    relay = RedisRelay(upstream_url, before)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()
        await relay.cancel()
        await server.wait_closed()
