"""Leaving a StreamGenerativeSearch early from the TypeScript client (a ``break`` out of
``for await``, an aborted ``signal``) and the Go client (the call's context cancelled)
cancels the call all the way up: the gateway's LLM request is closed long before its slow
answer (200 words, 0.5 s apart) would end, and the client keeps nothing open (Node exits
by itself; Go's goroutines come back to where they were). tests/client/test_lifecycle.py
is the Python client's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.conftest import finish, go_build, go_on, next_line, program_env, talking_to
from tests.gateway.conftest import Stack, StackFactory, create_books
from tests.support.fake_openai import Behaviour
from tests.support.gateway_process import SLOW, until_disconnected

ALICE_KEY = "key-alice-123"


async def stack_with_books(stack_factory: StackFactory) -> Stack:
    stack = await stack_factory()
    await create_books(stack)
    return stack


@pytest.mark.slow  # compiles TypeScript
async def test_typescript_leaving_a_stream_cancels_its_call(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    stack = await stack_with_books(stack_factory)
    fake = stack.fake
    fake.enqueue(Behaviour.ok(text=SLOW, chunk_delay=0.5), Behaviour.ok(text=SLOW, chunk_delay=0.5))
    env = program_env(stack.gateway.port, ALICE_KEY, {"GENSEARCH_COLLECTION": "Books"})
    async with talking_to([node, str(typescript_build / "leave.js")], env) as proc:
        assert await next_line(proc) == "left"  # break
        await until_disconnected(fake, 1)
        go_on(proc)
        assert await next_line(proc) == "aborted Canceled"  # signal
        await until_disconnected(fake, 2)
        go_on(proc)
        assert await finish(proc, "leave.js") == "done\n"  # and Node exited by itself
    assert len(fake.chat_requests) == 2 and all(r.client_disconnected for r in fake.chat_requests)


@pytest.mark.slow  # compiles Go
async def test_go_cancelling_a_streams_context_cancels_its_call(
    stack_factory: StackFactory, gopath: Path
) -> None:
    binary = go_build(gopath, "leave")
    stack = await stack_with_books(stack_factory)
    fake = stack.fake
    fake.enqueue(Behaviour.ok(text=SLOW, chunk_delay=0.5))
    env = program_env(stack.gateway.port, ALICE_KEY, {"GENSEARCH_COLLECTION": "Books"})
    async with talking_to([str(binary)], env) as proc:
        assert await next_line(proc) == "left Canceled"
        await until_disconnected(fake, 1)
        go_on(proc)
        assert await finish(proc, "leave") == "goroutines 0\n"
    [request] = fake.chat_requests
    assert request.client_disconnected
