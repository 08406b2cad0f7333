"""One pipelined Redis connection: the memory service's way to Redis.

Every RPC of the memory service is one Redis command (mostly an EVALSHA), so what a
command costs besides Redis's own work decides how close the service comes to a bare gRPC
echo (docs/benchmarks.md). The link keeps one connection open and spends as little as it
can per command:

- ``redis.asyncio`` dials the connection: it reads the URL, authenticates (password or
  ACL user), selects the database, and speaks TCP, TLS or a unix socket. Then this module
  takes over the connected transport (``asyncio.BaseTransport.set_protocol``) with a
  protocol of its own: commands are packed and replies parsed by hiredis, the C codec
  redis-py itself uses, and each reply is handed to its caller as soon as it is parsed,
  with no reader task or stream between them.
- A command is written at once when nothing is on the wire, so a lone call waits for
  nothing. Commands that arrive while replies are outstanding are held and go out
  together in one write; once the load keeps overlapping, the link batches for up to
  ``batch_window`` (see ``_Pipe._batching``), so that under load one write, one Redis
  wake-up and one read serve many RPCs.
- An error reply fails only its own command.
- No reply for ``command_timeout`` seconds while commands wait: the connection is dropped
  and every waiting caller gets ``LinkTimeout`` (a pipelined connection cannot skip one
  late reply). A lost connection fails its waiting callers with ``LinkError``; the next
  command dials again, so the link recovers by itself once Redis is back.
- A command is never re-sent on its own: after a lost connection nobody can know whether
  Redis ran it, and a re-run of a write could store it twice. Scripts Redis forgot (SCRIPT
  FLUSH, a restart) are loaded again, which is safe: NOSCRIPT means it did not run.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import ResponseError as ReplyError

__all__ = ["LinkError", "LinkTimeout", "RedisLink", "ReplyError", "Script"]

# The error replies the store tells apart, as redis-py's classes; any other is ReplyError.
_REPLY_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
}


def _reply_error(message: str) -> RedisError:
    return _REPLY_ERRORS.get(message.partition(" ")[0], ReplyError)(message)


_UNBOUNDED = 1 << 30
_MIN_BATCH = 2


class LinkError(Exception):
    """The connection failed or was lost; the command may or may not have run."""


class LinkTimeout(LinkError):
    """Redis did not answer in time; the connection was dropped."""


class Script:
    """A Lua script, run by its SHA1 (EVALSHA) so only the hash crosses the wire."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Pipe(asyncio.Protocol):
    """One connected transport, the callers waiting on it in order, and their replies."""

    def __init__(
        self, connection: AbstractConnection, command_timeout: float, batch_window: float
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._connection = connection  # redis-py's view of it; closed through it, too
        self._parser = hiredis.Reader(replyError=_reply_error)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._unanswered = 0  # commands written whose replies have not all arrived
        self._held: list[bytes] = []
        self._window = batch_window
        self._target = 0  # while batching: the batch size that goes out at once; else 0
        self._sizes: deque[int] = deque(maxlen=4)  # of the last batches, while batching
        # While batching: ends the window of the held commands; None once it has ended.
        self._flush_timer: asyncio.TimerHandle | None = None
        self._last_write = 0.0
        self._timeout = command_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0  # bumped by every reply; the watchdog looks for a change
        self._progress_seen = 0
        self.lost = False
        # redis-py keeps the transport on its stream writer; from here on its bytes come
        # to this protocol instead of redis-py's stream reader, which is never read again.
        writer = connection._writer
        if writer is None:
            raise LinkError("connection to Redis lost while connecting")
        self._transport = writer.transport
        self._transport.set_protocol(self)

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        packed = hiredis.pack_command(args)  # first: a TypeError must not leave a waiter
        future = self._loop.create_future()
        self._waiters.append(future)
        if self._unanswered or self._held or self._batching():
            self._hold(packed)
        else:
            self._write([packed])
        if self._timer is None:
            self._progress_seen = self._progress
            self._timer = self._loop.call_later(self._timeout, self._watchdog)
        return future

    # Batching. Holding commands while replies are outstanding groups only what arrives
    # within one Redis round trip; at a few thousand RPCs a second a round trip rarely
    # overlaps the next RPC, and each command paid its own write, wake-up and read in the
    # service and in Redis. So once three or more commands wait at once (more callers
    # than one round trip serves), the link waits up to ``batch_window`` for more before
    # the next write; that first batch teaches it how many callers there are, and later
    # batches go out as soon as that many commands are in. One or two callers never wait.

    def _batching(self) -> bool:
        if self._target and self._loop.time() > self._last_write + self._window:
            self._target = 0  # the load that taught the batch size has gone
        return self._target > 0

    def _start_batching(self) -> None:
        self._target = _UNBOUNDED  # the first batch: whatever one window brings
        self._sizes.clear()

    def _hold(self, packed: bytes) -> None:
        if not self._target and self._window and len(self._waiters) > _MIN_BATCH:
            self._start_batching()  # enough callers at once for a batch worth waiting for
        held = self._held
        held.append(packed)
        if not self._target:
            return  # goes out with the replies of those on the wire
        if len(held) == 1:
            self._flush_timer = self._loop.call_later(self._window, self._flush_due)
        if not self._unanswered and len(held) >= self._target:
            self._flush()

    def _flush_due(self) -> None:
        self._flush_timer = None
        if not self._unanswered and self._held:
            self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._target:
            # The largest of the last few batches: one short batch (a caller was slow,
            # the window ended early) must not shrink the next ones. Batches of one or
            # two save too little to make anybody wait for them.
            self._sizes.append(len(held))
            target = max(self._sizes)
            self._target = target if target > _MIN_BATCH else 0
        self._write(held)

    def _write(self, commands: list[bytes]) -> None:
        self._transport.writelines(commands)
        self._last_write = self._loop.time()
        self._unanswered = len(self._waiters)  # every waiter is now on the wire

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        waiters = self._waiters
        try:
            while (reply := parser.gets()) is not False:
                self._progress += 1
                self._unanswered -= 1
                waiter = waiters.popleft()
                if waiter.done():  # its caller gave up; the reply is not theirs
                    continue
                if isinstance(reply, RedisError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as err:  # garbage, or a reply nobody asked for
            self.abort(LinkError(f"unexpected data from Redis: {err!r}"))
            return
        held = self._held
        if self._unanswered or not held:
            return
        if not self._target or len(held) >= self._target or self._flush_timer is None:
            self._flush()  # (a window that has ended left its held commands waiting here)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(LinkError(f"connection to Redis lost: {exc or 'closed by Redis'}"))

    def _watchdog(self) -> None:
        self._timer = None
        if not self._waiters or self.lost:
            return
        if self._progress == self._progress_seen:
            self.abort(LinkTimeout(f"Redis did not answer within {self._timeout:g} s"))
            return
        self._progress_seen = self._progress
        self._timer = self._loop.call_later(self._timeout, self._watchdog)

    def abort(self, error: LinkError) -> None:
        if self.lost:
            return
        self.lost = True
        for timer in (self._timer, self._flush_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._flush_timer = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self._transport.abort()

    async def disconnect(self) -> None:
        self.abort(LinkError("link closed"))
        await self._connection.disconnect(nowait=True)


class RedisLink:
    """Commands to one Redis server over one pipelined connection, dialled on demand."""

    def __init__(
        self,
        url: str,
        *,
        command_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        batch_window: float = 0.002,
    ) -> None:
        # No socket timeout inside redis-py: the watchdog above bounds every wait, with
        # one timer per connection instead of one per command.
        self._pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=connect_timeout
        )
        # RESP2 whatever the URL asks: replies the parser above expects, and no RESP3
        # push messages that would answer no command.
        self._pool.connection_kwargs["protocol"] = 2
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._batch_window = batch_window
        self._pipe: _Pipe | None = None
        self._dialling: asyncio.Lock | None = None
        self._closed = False

    async def execute(self, *args: Any) -> Any:
        pipe = self._pipe
        if pipe is None or pipe.lost:
            pipe = await self._connect()
        return await pipe.send(args)

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            pass
        await self.execute("SCRIPT", "LOAD", script.source)
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        self._closed = True
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.disconnect()

    async def _connect(self) -> _Pipe:
        if self._closed:
            raise LinkError("link closed")
        if self._dialling is None:
            self._dialling = asyncio.Lock()
        async with self._dialling:  # one dial, however many callers are waiting
            if self._pipe is not None and not self._pipe.lost:
                return self._pipe
            if self._pipe is not None:
                await self._pipe.disconnect()
            connection = self._pool.make_connection()
            try:
                async with asyncio.timeout(self._connect_timeout * 2):  # dial + handshake
                    await connection.connect()
            except TimeoutError:
                await connection.disconnect(nowait=True)
                raise LinkTimeout(
                    f"could not connect to Redis within {self._connect_timeout:g} s"
                ) from None
            except (RedisError, OSError) as err:
                await connection.disconnect(nowait=True)
                raise LinkError(f"could not connect to Redis: {err}") from None
            self._pipe = _Pipe(connection, self._command_timeout, self._batch_window)
            return self._pipe
