"""``Gensearch``: the same API as ``AsyncGensearch``, blocking.

One private event loop runs in a daemon thread; every call is the async client's, run
there and waited for, and async iterators become plain iterators. So both clients behave
the same by construction, and the blocking one works inside a running loop (Jupyter) too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from gensearch.client._async import (
    AsyncCollection,
    AsyncGensearch,
    Chat,
    Collections,
    Conversations,
    Data,
    _Inline,
    _Searcher,
)
from gensearch.client.errors import ClientClosedError

_NAMESPACES = (AsyncCollection, Chat, Collections, Conversations, Data, _Inline, _Searcher)


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="gensearch-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any) -> Any:
        if self.closed:  # the client was closed
            coro.close()  # never to run: no "coroutine was never awaited" warning
            raise ClientClosedError()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.closed:  # ended by close() from another thread
                raise ClientClosedError() from None
            raise

    def iterate(self, stream: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self.run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(ClientClosedError):  # closed: nothing left to end
                    self.run(closer())

    def close(self) -> None:
        """Ends the calls still running (their callers get ClientClosedError), then the
        loop: a call left on a stopped loop would keep its caller's thread waiting."""
        if self.closed:
            return
        self.closed = True
        asyncio.run_coroutine_threadsafe(_end_tasks(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _end_tasks() -> None:
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


class _Blocking:
    """Wraps an async namespace: coroutines are awaited, async iterators iterated."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def _wrap(self, value: Any) -> Any:
        if asyncio.iscoroutine(value):
            return self._wrap(self._loop.run(value))
        if isinstance(value, AsyncIterator):
            return (self._wrap(v) for v in self._loop.iterate(value))
        if isinstance(value, _NAMESPACES):
            return _Blocking(value, self._loop)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, (*_NAMESPACES, type)):

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._wrap(value(*args, **kwargs))

            call.__name__ = name
            call.__doc__ = value.__doc__
            return call
        return self._wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return repr(self._target).replace("Async", "", 1)

    def __dir__(self) -> list[str]:
        return dir(self._target)


class Gensearch(_Blocking):
    """Blocking client: ``with Gensearch("localhost:50050") as client: ...``; same
    arguments, namespaces and results as ``AsyncGensearch``."""

    def __init__(self, address: str | None = None, **options: Any) -> None:
        loop = _Loop()

        async def make() -> AsyncGensearch:
            # The channel belongs to the loop it was made on.
            return AsyncGensearch(address, **options)

        try:
            target = loop.run(make())
        except BaseException:
            loop.close()  # a refused argument must not leave the loop's thread behind
            raise
        super().__init__(target, loop)

    def close(self) -> None:
        """Closes the channel and the loop's thread; a second close is nothing."""
        if not self._loop.closed:
            self._loop.run(self._target.close())
            self._loop.close()

    def __enter__(self) -> Gensearch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
