"""Keyset pagination: no item that existed when paging started is skipped or repeated,
whatever is created between (and during) page requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import uuid

from gensearch.memory.v1 import memory_service_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.auth import DEFAULT_TENANT, Identity, Role, forwarded_identity
from services.memory.page_token import PageTokens
from tests.memory.conftest import INTERNAL_TOKEN, Memory

EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
scenarios = st.tuples(
    st.integers(min_value=0, max_value=25),  # items before paging starts
    st.integers(min_value=1, max_value=7),  # page size
    st.lists(st.integers(min_value=0, max_value=4), max_size=12),  # inserts during each page
)


def _as_new_user() -> tuple[tuple[str, str], ...]:
    user = f"user-{uuid.uuid4()}"
    return forwarded_identity(Identity(user, DEFAULT_TENANT, Role.READER), INTERNAL_TOKEN)


async def _interactions_scenario(
    memory: Memory, existing: int, size: int, bursts: list[int]
) -> None:
    s, who = memory.stub, _as_new_user()
    cid = (
        await s.CreateConversation(pb.CreateConversationRequest(), metadata=who)
    ).conversation.conversation_id

    async def insert(n: int) -> None:
        await asyncio.gather(
            *(
                s.CreateInteraction(
                    pb.CreateInteractionRequest(conversation_id=cid, input="new"), metadata=who
                )
                for _ in range(n)
            )
        )

    before = []
    for n in range(existing):
        made = await s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input=str(n)), metadata=who
        )
        before.append(made.interaction.interaction_id)

    seen: list[str] = []
    token = ""
    # Bounded: a broken cursor that never reaches the end must fail, not hang.
    for burst in itertools.islice(itertools.chain(bursts, itertools.repeat(0)), existing + 50):
        page, _ = await asyncio.gather(
            s.ListInteractions(
                pb.ListInteractionsRequest(conversation_id=cid, page_size=size, page_token=token),
                metadata=who,
            ),
            insert(burst),  # concurrently with the page request
        )
        seen.extend(i.interaction_id for i in page.interactions)
        assert len(page.interactions) <= size
        token = page.next_page_token
        if not token:
            break

    assert len(seen) == len(set(seen)), "an interaction was repeated"
    old = [iid for iid in seen if iid in set(before)]
    assert old == before[::-1], "an interaction that existed before paging was skipped or reordered"
    assert seen == sorted(seen, reverse=True), "not newest first"


async def _conversations_scenario(
    memory: Memory, existing: int, size: int, bursts: list[int]
) -> None:
    s, who = memory.stub, _as_new_user()

    async def create(n: int) -> None:
        await asyncio.gather(
            *(s.CreateConversation(pb.CreateConversationRequest(), metadata=who) for _ in range(n))
        )

    before = []
    for _ in range(existing):
        made = await s.CreateConversation(pb.CreateConversationRequest(), metadata=who)
        before.append(made.conversation.conversation_id)

    seen: list[str] = []
    token = ""
    # Bounded: a broken cursor that never reaches the end must fail, not hang.
    for burst in itertools.islice(itertools.chain(bursts, itertools.repeat(0)), existing + 50):
        page, _ = await asyncio.gather(
            s.ListConversations(
                pb.ListConversationsRequest(page_size=size, page_token=token), metadata=who
            ),
            create(burst),
        )
        seen.extend(c.conversation_id for c in page.conversations)
        token = page.next_page_token
        if not token:
            break

    assert len(seen) == len(set(seen)), "a conversation was repeated"
    assert [c for c in seen if c in set(before)] == before[::-1]


async def test_interaction_pages_under_concurrent_inserts(memory: Memory) -> None:
    loop = asyncio.get_running_loop()

    @EXAMPLES
    @given(scenarios)
    def check(scenario: tuple[int, int, list[int]]) -> None:
        asyncio.run_coroutine_threadsafe(_interactions_scenario(memory, *scenario), loop).result()

    await asyncio.to_thread(check)


async def test_conversation_pages_under_concurrent_creates(memory: Memory) -> None:
    loop = asyncio.get_running_loop()

    @EXAMPLES
    @given(scenarios)
    def check(scenario: tuple[int, int, list[int]]) -> None:
        asyncio.run_coroutine_threadsafe(_conversations_scenario(memory, *scenario), loop).result()

    await asyncio.to_thread(check)


async def test_exact_pages_and_last_page(memory: Memory) -> None:
    s, who = memory.stub, _as_new_user()
    cid = (
        await s.CreateConversation(pb.CreateConversationRequest(), metadata=who)
    ).conversation.conversation_id
    for n in range(6):
        await s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input=str(n)), metadata=who
        )
    pages = []
    token = ""
    while True:
        page = await s.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid, page_size=3, page_token=token),
            metadata=who,
        )
        pages.append([i.input for i in page.interactions])
        token = page.next_page_token
        if not token:
            break
    # Six items in pages of three: two pages, the second has no next token (no empty page).
    assert pages == [["5", "4", "3"], ["2", "1", "0"]]


async def test_updated_conversation_moves_to_the_top(memory: Memory) -> None:
    """Documented behaviour: a conversation updated between pages moves to the top (its new
    update_time); the pass that is under way neither repeats it nor shows new ones."""
    s, who = memory.stub, _as_new_user()
    ids = []
    for _ in range(4):
        ids.append(
            (
                await s.CreateConversation(pb.CreateConversationRequest(), metadata=who)
            ).conversation.conversation_id
        )
        await asyncio.sleep(0.002)
    first = await s.ListConversations(pb.ListConversationsRequest(page_size=2), metadata=who)
    assert [c.conversation_id for c in first.conversations] == [ids[3], ids[2]]
    await s.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=ids[3], input="x"), metadata=who
    )
    second = await s.ListConversations(
        pb.ListConversationsRequest(page_size=2, page_token=first.next_page_token), metadata=who
    )
    assert [c.conversation_id for c in second.conversations] == [ids[1], ids[0]]
    again = await s.ListConversations(pb.ListConversationsRequest(page_size=1), metadata=who)
    assert again.conversations[0].conversation_id == ids[3]


def test_a_token_of_the_version_before_sealed_cursors_is_still_read() -> None:
    """Version 3 seals the cursor (services/memory/page_token.py); a version 2 token, its
    cursor in the clear, issued before an upgrade, still pages on."""
    tokens = PageTokens(b"s" * 32)
    cursor = "000001700000000:a-conversation"
    sealed = tokens.encode("conversations", "", cursor, "alice")
    assert cursor.encode() not in base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    assert tokens.decode(sealed, "conversations", "", "alice") == cursor
    holder = hashlib.sha256(b"alice").hexdigest()[:16]
    payload = json.dumps([2, "conversations", "", holder, cursor], separators=(",", ":")).encode()
    mac = hmac.new(b"s" * 32, payload, hashlib.sha256).digest()[:16]
    old = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
    assert tokens.decode(old, "conversations", "", "alice") == cursor
