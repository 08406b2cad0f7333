"""Automatic pipelining for redis.asyncio.

Concurrent RPCs each need one Redis command. Sent one by one, every command pays its own
connection checkout, socket write and read; under load that Python overhead, not Redis,
limits throughput. Here the commands issued within one event-loop turn go out together as
one non-transactional pipeline: one checkout, one write, one read for the whole batch.
Each command keeps its own result or error, and each Lua script is still atomic on its
own. A command issued while nothing else is in flight is sent at once, so a lone
caller sees no added latency.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

_Pending = tuple[tuple[Any, ...], AsyncScript | None, "asyncio.Future[Any]"]


class AutoPipeline:
    def __init__(self, client: aioredis.Redis, *, max_batch: int = 256) -> None:
        self._client = client
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def script(self, script: AsyncScript, *, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA ``script``; loads it first if Redis does not know it (e.g. after a restart)."""
        return await self._submit(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def command(self, *args: Any) -> Any:
        return await self._submit(args, None)

    async def _submit(self, args: tuple[Any, ...], script: AsyncScript | None) -> Any:
        if self._in_flight == 0 and not self._pending:
            # Nothing else going on: send right away, no batching delay.
            self._in_flight += 1
            try:
                return await self._one(args, script)
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, script, future))
        if len(self._pending) == 1:
            # Sent once the tasks that are ready in this turn have added their commands.
            # A separate task: a caller that is cancelled never strands the others.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            task = asyncio.get_running_loop().create_task(
                self._send(pending[start : start + self._max_batch])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        self._in_flight += 1
        try:
            if len(batch) == 1:
                args, script, _ = batch[0]
                results: list[Any] = [await self._one(args, script)]
            else:
                pipe = self._client.pipeline(transaction=False)
                for args, _, _ in batch:
                    pipe.execute_command(*args)
                results = await pipe.execute(raise_on_error=False)
                for i, (args, script, _) in enumerate(batch):
                    if isinstance(results[i], NoScriptError):
                        # Only this command's outcome: the others already committed.
                        try:
                            results[i] = await self._one(args, script)
                        except Exception as err:
                            results[i] = err
        except Exception as err:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        except BaseException:
            for _, _, future in batch:
                future.cancel()
            raise
        finally:
            self._in_flight -= 1
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _one(self, args: tuple[Any, ...], script: AsyncScript | None) -> Any:
        try:
            return await self._client.execute_command(*args)
        except NoScriptError:
            if script is None:
                raise
            script.sha = await self._client.script_load(script.script)
            return await self._client.execute_command("EVALSHA", script.sha, *args[2:])
