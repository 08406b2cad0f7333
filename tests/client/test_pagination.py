"""The client's paging helpers against the real stack: they stop at ``limit`` exactly,
read no page for ``limit=0``, and refuse a negative ``limit`` by name (it used to cut
the last item off, or give one); and they read on past an empty page that has a
next_page_token (docs/memory.md#legacy-owners)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest
from gensearch.client import AsyncGensearch, Gensearch, errors
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from tests.cli.conftest import RunningStack, SharedList
from tests.support.relay import Relay, serving

_names = itertools.count()


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def test_collections_list_stops_at_limit(client: AsyncGensearch) -> None:
    for _ in range(3):
        await client.collections.create(f"Paged{next(_names)}_{os.getpid()}", {"title": "text"})
    everything = await client.collections.list(page_size=2)
    assert len(everything) >= 3
    assert await client.collections.list(limit=0) == []
    assert await client.collections.list(limit=3, page_size=2) == everything[:3]
    with pytest.raises(ValueError, match="limit"):
        await client.collections.list(limit=-1)


async def test_conversation_lists_stop_at_limit(client: AsyncGensearch) -> None:
    conversations = client.conversations
    first = await conversations.create("paged one")
    await conversations.create("paged two")
    for n in range(3):
        await conversations.add_interaction(first.id, f"question {n}", f"answer {n}")
    assert await conversations.list(limit=0) == []
    assert len(await conversations.list(limit=1, page_size=1)) == 1
    assert len(await conversations.list(limit=2, page_size=1)) == 2
    assert await conversations.interactions(first.id, limit=0) == []
    assert len(await conversations.interactions(first.id, limit=2)) == 2
    with pytest.raises(ValueError, match="limit"):
        await conversations.list(limit=-1)
    with pytest.raises(ValueError, match="limit"):
        await conversations.interactions(first.id, limit=-1)
    with pytest.raises(ValueError, match="limit"):
        await conversations.traces("0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d", limit=-1)


async def test_conversation_helpers_read_on_past_empty_pages(shared_list: SharedList) -> None:
    """Her first pages (page_size 1) are empty, each with a next_page_token: the other
    owner of the list she shares fills all they read. Only an empty token ends a list."""
    gateway = shared_list.legacy
    async with AsyncGensearch(gateway.address, api_key=gateway.api_key, timeout=60) as client:
        conversations = client.conversations
        first, token = await conversations.page(page_size=1)
        assert first == [] and token
        mine = [shared_list.legacy_id]
        assert [c.id for c in await conversations.list(page_size=1)] == mine
        assert [c.id for c in await conversations.list(limit=1, page_size=1)] == mine
        assert [c.id async for c in conversations.iter(page_size=1)] == mine


async def test_interactions_from_the_start_and_after_a_position(client: AsyncGensearch) -> None:
    """``iter_interactions`` pages oldest first in memory's own order, and both helpers
    take ``after_interaction_id`` (a position: the turn may be gone). ``limit`` with
    ``oldest_first`` keeps its meaning: the most recent turns, oldest of them first."""
    conversations = client.conversations
    conversation = await conversations.create("read from the start")
    ids = [
        (await conversations.add_interaction(conversation.id, f"q{n}", f"a{n}")).id
        for n in range(5)
    ]

    async def inputs(after: str = "", page_size: int = 100) -> list[str]:
        turns = conversations.iter_interactions(
            conversation.id, after_interaction_id=after, page_size=page_size
        )
        return [turn.input async for turn in turns]

    assert await inputs(page_size=2) == ["q0", "q1", "q2", "q3", "q4"]
    assert await inputs(after=ids[1], page_size=2) == ["q2", "q3", "q4"]
    newer = await conversations.interactions(conversation.id, after_interaction_id=ids[2])
    assert [turn.input for turn in newer] == ["q4", "q3"]
    recent = await conversations.interactions(
        conversation.id, limit=2, oldest_first=True, after_interaction_id=ids[0]
    )
    assert [turn.input for turn in recent] == ["q3", "q4"]

    with pytest.raises(errors.InvalidArgumentError) as caught:
        await inputs(after="not-an-id")
    assert caught.value.field == "after_interaction_id"

    await conversations.delete_interaction(ids[1])
    assert await inputs(after=ids[1]) == ["q2", "q3", "q4"]
    assert await inputs(page_size=1) == ["q0", "q2", "q3", "q4"]


def test_the_blocking_client_reads_from_the_start(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address, timeout=60) as client:
        conversation = client.conversations.create("blocking, from the start")
        first = client.conversations.add_interaction(conversation.id, "q0", "a0")
        for n in (1, 2):
            client.conversations.add_interaction(conversation.id, f"q{n}", f"a{n}")
        turns = client.conversations.iter_interactions(conversation.id, page_size=2)
        assert [turn.input for turn in turns] == ["q0", "q1", "q2"]
        after = client.conversations.iter_interactions(
            conversation.id, after_interaction_id=first.id
        )
        assert [turn.input for turn in after] == ["q1", "q2"]


class _MemoryBeforeOldestFirst(Relay):
    """The stack as a memory service from before ListInteractions' oldest_first: those
    request fields are unknown there, so they never arrive and the answer is newest first."""

    def request(self, method: str, request: bytes) -> bytes:
        if not method.endswith("/ListInteractions"):
            return request
        older = mem_pb.ListInteractionsRequest.FromString(request)
        older.ClearField("oldest_first")
        older.ClearField("after_interaction_id")
        return older.SerializeToString()


async def test_reading_from_the_start_refuses_a_memory_that_lists_newest_first(
    running_stack: RunningStack,
) -> None:
    """Handing out an older memory's newest-first pages as oldest first would be a silent
    wrong order: iter_interactions raises instead, naming the helper that works there."""
    older = _MemoryBeforeOldestFirst()
    older.target = running_stack.address
    async with serving(older) as address, AsyncGensearch(address, timeout=60) as client:
        conversation = await client.conversations.create("older memory")
        for n in range(2):
            await client.conversations.add_interaction(conversation.id, f"q{n}", f"a{n}")
        with pytest.raises(RuntimeError, match=r"interactions\(oldest_first=True\)"):
            async for _ in client.conversations.iter_interactions(conversation.id):
                pass
        turns = await client.conversations.interactions(conversation.id, oldest_first=True)
        assert [turn.input for turn in turns] == ["q0", "q1"]
        # A position it ignores would hand out every turn, the one named and older too.
        with pytest.raises(RuntimeError, match="ignores after_interaction_id"):
            await client.conversations.interactions(
                conversation.id, after_interaction_id=turns[0].interaction_id
            )
