"""One pipelined ``redis.asyncio`` connection: the memory service's way to Redis.

Every RPC of the memory service is one Redis command (mostly an EVALSHA). Through
``redis.asyncio.Redis`` each command also pays a pool checkout, a task for the write
timeout, a timeout context for the read and retry bookkeeping: at 32 in flight that
overhead, not Redis, was most of what separated a memory RPC from a bare gRPC echo
(docs/benchmarks.md). So the service keeps one ``redis.asyncio`` connection open
(redis-py still dials it, authenticates, selects the database, speaks TLS or a unix
socket, packs commands and parses replies with hiredis) and only the queueing is here:

- A command goes out at once when nothing is on the wire. Commands that arrive while
  replies are outstanding are held and go out together, in one write, as soon as those
  replies are in: under load one write and one read serve several RPCs, and a lone call
  waits for nothing.
- One reader task takes the replies in order and hands each to its caller; an error
  reply fails only its own command.
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

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import ResponseError as ReplyError

__all__ = ["LinkError", "LinkTimeout", "RedisLink", "ReplyError", "Script"]


class LinkError(Exception):
    """The connection failed or was lost; the command may or may not have run."""


class LinkTimeout(LinkError):
    """Redis did not answer in time; the connection was dropped."""


class Script:
    """A Lua script, run by its SHA1 (EVALSHA) so only the hash crosses the wire."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Pipe:
    """One connected connection, the callers waiting on it in order, and its reader."""

    def __init__(self, connection: AbstractConnection, command_timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._connection = connection
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._held: list[bytes] = []
        self._unanswered = 0  # commands written whose replies have not all arrived
        self._timeout = command_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0  # bumped by every reply; the watchdog looks for a change
        self._progress_seen = 0
        self.lost = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader = self._spawn(self._read_replies())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return task

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._waiters.append(future)
        packed = self._connection.pack_command(*args)
        if self._unanswered:
            self._held += packed
        else:
            self._write(packed)
            self._unanswered += 1
        if self._timer is None:
            self._progress_seen = self._progress
            self._timer = self._loop.call_later(self._timeout, self._watchdog)
        return future

    def _write(self, chunks: list[bytes]) -> None:
        # In a task of its own: a caller cancelled while a large write drains must not
        # cut the connection (redis-py drops a connection whose write was interrupted).
        # Tasks start in creation order, and a write is only issued once the previous
        # one's replies are all in, so the bytes keep the order of the waiters.
        self._spawn(self._send(chunks))

    async def _send(self, chunks: list[bytes]) -> None:
        try:
            await self._connection.send_packed_command(chunks, check_health=False)
        except Exception as err:  # redis-py has closed the connection
            self.abort(LinkError(f"connection to Redis lost: {err}"))

    async def _read_replies(self) -> None:
        read = self._connection.read_response
        waiters = self._waiters
        try:
            while True:
                try:
                    reply: Any = await read(disconnect_on_error=False)
                    failed = False
                except ReplyError as err:
                    reply, failed = err, True
                self._progress += 1
                self._unanswered -= 1
                waiter = waiters.popleft()
                if not waiter.done():  # else its caller gave up; the reply is not theirs
                    if failed:
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
                if not self._unanswered and self._held:
                    held, self._held = self._held, []
                    self._unanswered = len(waiters)  # every waiter left is a held command
                    self._write(held)
        except (RedisError, OSError, IndexError) as err:
            self.abort(LinkError(f"connection to Redis lost: {err}"))

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self._reader.cancel()
        self._spawn(self.disconnect())

    async def disconnect(self) -> None:
        await self._connection.disconnect(nowait=True)


class RedisLink:
    """Commands to one Redis server over one pipelined connection, dialled on demand."""

    def __init__(
        self, url: str, *, command_timeout: float = 2.0, connect_timeout: float = 1.0
    ) -> None:
        # No socket timeout inside redis-py: the watchdog above bounds every wait, with
        # one timer per connection instead of one per command.
        self._pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=connect_timeout
        )
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
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
            pipe.abort(LinkError("link closed"))
            await pipe.disconnect()

    async def _connect(self) -> _Pipe:
        if self._closed:
            raise LinkError("link closed")
        if self._dialling is None:
            self._dialling = asyncio.Lock()
        async with self._dialling:  # one dial, however many callers are waiting
            if self._pipe is not None and not self._pipe.lost:
                return self._pipe
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
            self._pipe = _Pipe(connection, self._command_timeout)
            return self._pipe
