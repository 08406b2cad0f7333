"""A storm of cancelled streams sends nothing more to the provider: 60 StreamGenerativeSearch
calls of 3 hits each, whose hits queue in the generation service behind a provider that
runs 4 at once (and never answers), are all cancelled together. The provider then
receives no request beyond the 4 it had before the cancels, and every slot comes back
(a new search is answered, each of its hits).

Before, each slot a cancelled call freed went at once to the queue's head, whose own
cancellation was still on its way (they reach the generation service spread over up to
hundreds of milliseconds, measured in-process): it sent its request, and its
cancellation, arriving, freed a slot for the next. 12 to 16 requests reached the
provider after the cancels of 120 streams, and 4 to 16 of 60 here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from tests.gateway.conftest import (
    ALICE,
    StackFactory,
    books_search,
    books_stream_search,
    create_books,
    fake_provider,
)
from tests.gateway.test_cancel_storm import _gauge
from tests.support.fake_openai import Behaviour, FakeOpenAI

STREAMS = 60
HITS = 3
CAP = 4  # the provider's calls at once; the other hits queue in the generation service
# A hold far past the spread of a storm's cancellations on a loaded machine (the
# default is 0.5 s), so that the outcome does not depend on the machine's load.
HOLD = 5.0


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def _outcome(call: Any) -> str:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code().name
    except asyncio.CancelledError:
        return "CANCELLED"
    return "ended"


async def test_cancelled_streams_send_the_provider_nothing_more(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await stack_factory(
        provider=fake_provider(fake, max_concurrency=CAP, adaptive=False, cancel_hold=HOLD)
    )
    await create_books(stack)
    fake.by_model["slow"] = Behaviour.hang(600)
    request = books_stream_search(limit=HITS, single_prompt="{title}", model="slow")
    calls = [
        stack.stub.StreamGenerativeSearch(request, metadata=ALICE, timeout=120)
        for _ in range(STREAMS)
    ]
    outcomes = [asyncio.ensure_future(_outcome(call)) for call in calls]

    def generation_calls() -> float:
        return _gauge("gensearch_grpc_server_in_flight", server="generation")

    # Every hit is at the generation service: CAP at the provider, the rest queued.
    await _until(lambda: generation_calls() == STREAMS * HITS, "every hit at generation")
    await fake.wait_for_requests(CAP, timeout=60)
    assert len(fake.chat_requests) == CAP
    for call in calls:
        call.cancel()
    assert set(await asyncio.gather(*outcomes)) == {"CANCELLED"}
    # Every cancellation has reached the generation service ...
    await _until(lambda: generation_calls() == 0, "the cancellations at generation")
    await _until(
        lambda: _gauge("gensearch_llm_in_flight", provider="fake") == 0, "provider in flight"
    )
    # ... and none of the queued hits was sent meanwhile.
    assert len(fake.chat_requests) == CAP
    # No slot is lost: once the holds end, a new search gets every hit answered.
    fake.by_model.pop("slow")
    reply = await stack.stub.GenerativeSearch(
        books_search(limit=HITS, single_prompt="{title}"), metadata=ALICE, timeout=60
    )
    assert [hit.generation.error.reason for hit in reply.hits] == [""] * HITS
    assert len(fake.chat_requests) == CAP + HITS
