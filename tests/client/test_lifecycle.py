"""A client's life: closing it (twice, then calling it) and leaving a stream early,
against the real stack; the gateway's in-flight gauge shows a left stream cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from gensearch.client import AsyncGensearch, Gensearch, errors
from prometheus_client import REGISTRY

from tests.cli.conftest import RunningStack
from tests.support.fake_openai import Behaviour

# gensearch_grpc_server_in_flight of StreamGenerate (the gateway's and the generation
# service's: one process here, one registry).
STREAM_GENERATE = {
    "server": "generation",
    "grpc_service": "gensearch.generation.v1.GenerationService",
    "grpc_method": "StreamGenerate",
}


# grpc_server_handled_total of StreamGenerate calls that ended CANCELLED (the gateway's
# and the generation service's).
STREAM_GENERATE_CANCELLED = {
    "grpc_type": "server_stream",
    "grpc_service": "gensearch.generation.v1.GenerationService",
    "grpc_method": "StreamGenerate",
    "grpc_code": "Canceled",
}


def in_flight() -> float:
    return REGISTRY.get_sample_value("gensearch_grpc_server_in_flight", STREAM_GENERATE) or 0.0


def cancelled() -> float:
    return REGISTRY.get_sample_value("grpc_server_handled_total", STREAM_GENERATE_CANCELLED) or 0.0


async def _until(done: Callable[[], bool], what: str) -> None:
    """Polls (up to 30 s: a loaded machine may be slow to it) until ``done()``."""
    end = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < end:
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def _until_back_to(level: float) -> None:
    """Until the StreamGenerate calls in flight fall back to ``level``."""
    await _until(lambda: in_flight() <= level, f"StreamGenerate still served: {in_flight()}")


async def test_async_client_closed_twice_then_called(running_stack: RunningStack) -> None:
    client = AsyncGensearch(running_stack.address, api_key="lifecycle-key")
    assert await client.health() == "SERVING"
    await client.close()
    await client.close()  # a second close is nothing
    with pytest.raises(errors.ClientClosedError, match="closed") as info:
        await client.health()
    assert "lifecycle-key" not in repr(info.value) + str(info.value)
    with pytest.raises(errors.ClientClosedError):
        async for _ in client.generate_stream.complete("hi"):
            pass
    with pytest.raises(errors.ClientClosedError):
        await client.collections.get("Books").data.import_([{"title": "Dune"}])


def test_blocking_client_closed_twice_then_called(running_stack: RunningStack) -> None:
    client = Gensearch(running_stack.address)
    assert client.health() == "SERVING"
    client.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine ... was never awaited"
        client.close()
        with pytest.raises(errors.ClientClosedError, match="closed"):
            client.health()
        with pytest.raises(errors.ClientClosedError):
            list(client.generate_stream.complete("hi"))


@pytest.mark.slow
async def test_leaving_a_stream_cancels_its_call(running_stack: RunningStack) -> None:
    """A ``break`` out of ``async for`` over a dropped stream, and ``aclosing`` around a
    kept one, cancel the RPC all the way down, long before the slow answer (200 chunks,
    0.5 s apart: 100 s) would end: the gateway and the generation service end their
    StreamGenerate CANCELLED (not served to its end, nor failed), and the provider's
    request is dropped mid-answer, so no more of its tokens are paid for."""
    fake = running_stack.fake
    text = " ".join(f"w{i}" for i in range(200))

    async def dropped(client: AsyncGensearch) -> None:
        async for _ in client.generate_stream.complete("leave early"):
            break

    async def kept(client: AsyncGensearch) -> None:
        async with contextlib.aclosing(client.generate_stream.complete("kept")) as stream:
            async for _ in stream:
                break

    async with AsyncGensearch(running_stack.address, timeout=600) as client:
        for leave in (dropped, kept):
            before, ended, hung_up = in_flight(), cancelled(), fake.disconnects
            fake.enqueue(Behaviour.ok(text=text, chunk_delay=0.5))
            await leave(client)
            await _until(lambda n=hung_up: fake.disconnects > n, "the provider's answer ran on")
            assert fake.requests[-1].client_disconnected
            # Both servers' calls (the gateway's, and the one it made downstream).
            await _until(lambda n=ended: cancelled() >= n + 2, f"not cancelled: {cancelled()}")
            await _until_back_to(before)


async def _until_taken(running_stack: RunningStack) -> None:
    """Polls (up to 30 s) until the fake LLM has taken the scripted behaviour: the call
    is in flight."""
    end = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < end:
        if not running_stack.fake.pending:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the fake LLM never saw the call")


async def test_calls_in_flight_when_closed_raise_client_closed(
    running_stack: RunningStack,
) -> None:
    """Another task's close() ends a call (and a stream) in flight with ClientClosedError,
    not asyncio.CancelledError: that would pass for the caller's own task being cancelled
    (``except Exception`` misses it, a TaskGroup treats it as cancellation)."""
    fake = running_stack.fake

    async def stream(client: AsyncGensearch) -> None:
        async for _ in client.generate_stream.complete("closed mid-stream"):
            pass

    for behaviour, call in (
        (Behaviour.ok(text="late", latency=30), lambda c: c.generate.complete("closed")),
        (Behaviour.ok(text="a b c d", chunk_delay=30), stream),
    ):
        fake.enqueue(behaviour)
        client = AsyncGensearch(running_stack.address, timeout=None)
        task = asyncio.ensure_future(call(client))
        await _until_taken(running_stack)
        await client.close()
        with pytest.raises(errors.ClientClosedError):
            await task


def test_blocking_calls_in_flight_when_closed_raise_client_closed(
    running_stack: RunningStack,
) -> None:
    """close() from another thread ends the blocking client's call and stream in flight
    with ClientClosedError (the caller's thread used to wait forever on a stopped loop)."""
    fake = running_stack.fake
    for behaviour, call in (
        (Behaviour.ok(text="late", latency=30), lambda c: c.generate.complete("closed")),
        (
            Behaviour.ok(text="a b c d", chunk_delay=30),
            lambda c: list(c.generate_stream.complete("closed mid-stream")),
        ),
    ):
        fake.enqueue(behaviour)
        client = Gensearch(running_stack.address, timeout=None)
        raised: list[BaseException] = []
        thread = threading.Thread(target=_calling, args=(call, client, raised))
        thread.start()
        end = time.monotonic() + 30
        while fake.pending and time.monotonic() < end:
            time.sleep(0.05)
        client.close()
        thread.join(30)  # a bound for a broken client only: it ends at once
        assert not thread.is_alive(), "the caller still waits on the closed client"
        assert [type(err) for err in raised] == [errors.ClientClosedError], raised


def _calling(call: Any, client: Gensearch, raised: list[BaseException]) -> None:
    """``call(client)`` in a thread, what it raised kept in ``raised``."""
    try:
        call(client)
    except BaseException as err:
        raised.append(err)
