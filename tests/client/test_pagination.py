"""The client's paging helpers against the real stack: they stop at ``limit`` exactly,
read no page for ``limit=0``, and refuse a negative ``limit`` by name (it used to cut
the last item off, or give one); and they read on past an empty page that has a
next_page_token (docs/memory.md#legacy-owners)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest
from gensearch.client import AsyncGensearch

from tests.cli.conftest import RunningStack, SharedList

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
