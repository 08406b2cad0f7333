"""The keys a Lua script touched that its call did not declare, read from a real server's
MONITOR stream.

Neither Redis nor the bundled Valkey refuses a script that reads an undeclared key of its
own slot (checked on Valkey 9.1: with or without a ``#!lua`` shebang, standalone or in a
cluster), yet Redis Cluster only routes, locks and migrates by the declared keys, and
script-routing proxies route by them. So a test watches: MONITOR shows every command a
script runs (client ``lua``) right after the EVAL/EVALSHA that ran it (a script runs
alone, nothing interleaves), the server names each command's keys (``COMMAND GETKEYS``),
and every one must be among the call's declared keys.

    async with ScriptKeys("127.0.0.1", port) as watch:
        ... calls ...
    runs = await watch.runs()          # every script run seen, with its commands
    assert not undeclared(runs)        # (script, command, key) of each undeclared access
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from types import TracebackType

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

# One line of MONITOR: "<time> [<db> <client>] "ARG" "ARG" ...", each argument quoted and
# escaped as sdscatrepr does (\\ \" \n \r \t \a \b \xHH).
_LINE = re.compile(rb"^\+?[\d.]+ \[\d+ ([^\]]*)\] (.*)$")
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unescape(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = raw[i + 1 : i + 2]
        if nxt == b"x":
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        else:
            out += _ESCAPES.get(nxt, nxt)
            i += 2
    return bytes(out)


@dataclass
class ScriptRun:
    """One EVAL/EVALSHA: the script's SHA-1 (hex; of its source for EVAL), its declared
    keys and the commands it ran."""

    sha: str
    declared: list[bytes]
    commands: list[list[bytes]] = field(default_factory=list)


class ScriptKeys:
    """Watches one server (a standalone one, or the cluster node holding the slot)."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._lines: list[bytes] = []
        self._marker = f"script-keys-end-{uuid.uuid4().hex}".encode()
        self._seen_end = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScriptKeys:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(b"MONITOR\r\n")
        await self._writer.drain()
        assert await self._reader.readline() == b"+OK\r\n"
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                return
            self._lines.append(line.rstrip(b"\r\n"))
            if self._marker in line:
                self._seen_end.set()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._seen_end.is_set() is False and kind is None:
            await self._end()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def _end(self) -> None:
        """Every command up to now is in the stream: a marker sent after them is read."""
        async with aioredis.Redis(host=self._host, port=self._port) as client:
            await client.echo(self._marker)
        await asyncio.wait_for(self._seen_end.wait(), 10)

    async def runs(self) -> list[ScriptRun]:
        """The script runs seen so far (the watch ends here)."""
        if not self._seen_end.is_set():
            await self._end()
        out: list[ScriptRun] = []
        current: ScriptRun | None = None
        for line in self._lines:
            match = _LINE.match(line)
            if match is None:
                continue
            client, rest = match.groups()
            args = [_unescape(a) for a in _ARG.findall(rest)]
            if not args:
                continue
            if client == b"lua":
                if current is not None:
                    current.commands.append(args)
                continue
            current = None
            if args[0].upper() in (b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO"):
                count = int(args[2])
                body = args[1]
                sha = body.decode() if args[0].upper().startswith(b"EVALSHA") else ""
                current = ScriptRun(sha or hashlib.sha1(body).hexdigest(), args[3 : 3 + count])
                out.append(current)
        return out

    async def undeclared(self, runs: list[ScriptRun]) -> list[tuple[int, str, bytes]]:
        """(run index, command, key) for every key a script's command names that its run
        did not declare, as the server itself names a command's keys."""
        found: list[tuple[int, str, bytes]] = []
        async with aioredis.Redis(host=self._host, port=self._port) as client:
            for n, run in enumerate(runs):
                declared = set(run.declared)
                for command in run.commands:
                    try:
                        named = await client.command_getkeys(*command)
                    except ResponseError:
                        continue  # a command without keys (TIME)
                    for key in named:
                        key = key if isinstance(key, bytes) else str(key).encode()
                        if key not in declared:
                            found.append((n, command[0].decode(), key))
        return found
