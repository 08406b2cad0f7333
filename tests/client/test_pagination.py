"""The client's paging helpers against the real stack: they stop at ``limit`` exactly,
read no page for ``limit=0``, and refuse a negative ``limit`` by name (it used to cut
the last item off, or give one); and they read on past an empty page that has a
next_page_token (docs/memory.md#legacy-owners)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable

import grpc
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


async def test_reading_from_the_start_on_a_memory_that_lists_newest_first(
    running_stack: RunningStack,
) -> None:
    """A memory service older than ListInteractions' oldest_first and after_interaction_id
    (every replica) lists newest first from the newest turn whatever is asked: both
    helpers read it that way and hand out the turns in the order and from the position
    asked, never an older turn. Before, iter_interactions and a position raised
    RuntimeError."""
    older = _MemoryBeforeOldestFirst()
    older.target = running_stack.address
    async with serving(older) as address, AsyncGensearch(address, timeout=60) as client:
        conversation = await client.conversations.create("older memory")
        for n in range(5):
            await client.conversations.add_interaction(conversation.id, f"q{n}", f"a{n}")
        turns = client.conversations.iter_interactions(conversation.id, page_size=2)
        assert [turn.input async for turn in turns] == ["q0", "q1", "q2", "q3", "q4"]
        listed = await client.conversations.interactions(conversation.id, oldest_first=True)
        assert [turn.input for turn in listed] == ["q0", "q1", "q2", "q3", "q4"]
        after = client.conversations.iter_interactions(
            conversation.id, after_interaction_id=listed[1].interaction_id, page_size=2
        )
        assert [turn.input async for turn in after] == ["q2", "q3", "q4"]
        newer = await client.conversations.interactions(
            conversation.id, limit=2, after_interaction_id=listed[1].interaction_id
        )
        assert [turn.input for turn in newer] == ["q4", "q3"]


class _TwoVersions(Relay):
    """Memory mid-upgrade behind the gateway: each ListInteractions call goes to a replica
    of the version ``older_serves`` names (by the call's number, from 1, and whether it
    carries a page_token). The older version is the real memory sent the request without
    oldest_first and after_interaction_id (fields it does not know): it lists newest
    first from the newest turn, and checks a page token as an older replica does (so it
    refuses, INVALID_PAGE_TOKEN, a newer one's token for a list read oldest first or after
    a position, and a newer one refuses its token for such a list)."""

    def __init__(self, older_serves: Callable[[int, bool], bool]) -> None:
        super().__init__()
        self.older_serves = older_serves
        self.calls = 0
        self.to_older = 0  # calls the older version served
        self.refused = 0  # page tokens refused

    def failed(self, method: str, err: grpc.aio.AioRpcError) -> None:
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (err.details() or ""):
            self.refused += 1

    def request(self, method: str, request: bytes) -> bytes:
        if not method.endswith("/ListInteractions"):
            return request
        self.calls += 1
        asked = mem_pb.ListInteractionsRequest.FromString(request)
        if not self.older_serves(self.calls, bool(asked.page_token)):
            return request
        self.to_older += 1
        asked.ClearField("oldest_first")
        asked.ClearField("after_interaction_id")
        return asked.SerializeToString()


_SCHEDULES: dict[str, Callable[[int, bool], bool]] = {
    # A newer replica serves each first page, an older one each page after it.
    "new-old": lambda call, token: token,
    # The other way round.
    "old-new": lambda call, token: not token,
    # The list restarted after a refused token lands on an older replica too.
    "restart-on-old": lambda call, token: call in (2, 3),
}


_TURNS = 102


@pytest.mark.parametrize("schedule", list(_SCHEDULES))
async def test_reading_from_the_start_across_two_memory_versions(
    running_stack: RunningStack, schedule: str
) -> None:
    """A rolling upgrade of memory while a user pages a conversation oldest first (and
    newest first after a position): a page token of one version reaches a replica of the
    other, which refuses it, or a page reaches a replica that lists newest first only.
    Every turn comes once, in order, from the position asked. Before, the user got
    InvalidPageTokenError (or RuntimeError) mid-way."""
    mixed = _TwoVersions(_SCHEDULES[schedule])
    mixed.target = running_stack.address
    async with serving(mixed) as address, AsyncGensearch(address, timeout=60) as client:
        conversation = await client.conversations.create(f"two versions, {schedule}")
        # More than the 100 turns of interactions()' page, so it reads a page after the
        # first too.
        ids = [
            (await client.conversations.add_interaction(conversation.id, f"q{n}", f"a{n}")).id
            for n in range(_TURNS)
        ]
        turns = client.conversations.iter_interactions(conversation.id, page_size=40)
        assert [turn.input async for turn in turns] == [f"q{n}" for n in range(_TURNS)]
        mixed.calls = 0
        after = client.conversations.iter_interactions(
            conversation.id, after_interaction_id=ids[1], page_size=40
        )
        assert [turn.input async for turn in after] == [f"q{n}" for n in range(2, _TURNS)]
        mixed.calls = 0
        newer = await client.conversations.interactions(
            conversation.id, after_interaction_id=ids[0]
        )
        assert [turn.input for turn in newer] == [f"q{n}" for n in range(_TURNS - 1, 0, -1)]
        # Both happened in each: tokens refused (in old-new, the older replica's token of
        # the newest-first list, taken for a list after ids[0] by the newer one), and
        # answers of the older version.
        assert mixed.to_older > 0 and mixed.refused > 0
