"""A storm of cancelled streams sends nothing more to the provider: 60 StreamGenerativeSearch
calls of 3 hits each, whose hits queue in the generation service behind a provider that
runs 4 at once (and never answers), are all cancelled together. The provider then
receives no request beyond the 4 it had before the cancels, and every slot comes back:
4 new calls, to the model that never answers, all reach the provider at once.

Before, each slot a cancelled call freed went at once to the queue's head, whose own
cancellation was still on its way (they reach the generation service spread over up to
hundreds of milliseconds, measured in-process): it sent its request, and its
cancellation, arriving, freed a slot for the next. 12 to 16 requests reached the
provider after the cancels of 120 streams, and 4 to 16 of 60 here.
"""

from __future__ import annotations

import asyncio

from tests.gateway.conftest import (
    ALICE,
    StackFactory,
    books_stream_search,
    create_books,
    fake_provider,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.metrics import gauge
from tests.support.rpc import stream_end
from tests.support.waiting import until

STREAMS = 60
HITS = 3
CAP = 4  # the provider's calls at once; the other hits queue in the generation service
# A hold far past the spread of a storm's cancellations on a loaded machine (the
# default is 0.5 s), so that the outcome does not depend on the machine's load.
HOLD = 5.0


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
    outcomes = [asyncio.ensure_future(stream_end(call)) for call in calls]

    def generation_calls() -> float:
        return gauge("gensearch_grpc_server_in_flight", server="generation")

    async def every_hit_at_generation() -> bool:
        return generation_calls() == STREAMS * HITS

    async def none_at_generation() -> bool:
        return generation_calls() == 0

    async def none_at_the_provider() -> bool:
        return gauge("gensearch_llm_in_flight", provider="fake") == 0

    # Every hit is at the generation service: CAP at the provider, the rest queued.
    await until(every_hit_at_generation, "every hit at generation", timeout=60)
    await fake.wait_for_requests(CAP, timeout=60)
    assert len(fake.chat_requests) == CAP
    for call in calls:
        call.cancel()
    assert set(await asyncio.gather(*outcomes)) == {"cancelled"}
    # Every cancellation has reached the generation service ...
    await until(none_at_generation, "the cancellations at generation", timeout=60)
    await until(none_at_the_provider, "the provider's calls ended", timeout=60)
    # ... and none of the queued hits was sent meanwhile.
    assert len(fake.chat_requests) == CAP
    # No slot is lost: once the holds end, CAP new calls (that never answer) are all at
    # the provider together; a slot lost would keep one of them queued.
    again = stack.stub.StreamGenerativeSearch(
        books_stream_search(limit=CAP, single_prompt="{title}", model="slow"),
        metadata=ALICE,
        timeout=120,
    )
    ending = asyncio.ensure_future(stream_end(again))
    await fake.wait_for_requests(2 * CAP, timeout=60)
    assert len(fake.chat_requests) == 2 * CAP
    again.cancel()
    assert await ending == "cancelled"
