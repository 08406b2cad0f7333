"""Conversations belong to a user of a tenant, and so do page tokens: a token one caller
received is refused for any other, with INVALID_ARGUMENT naming ``page_token``."""

from __future__ import annotations

import hashlib

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb

from tests.memory.conftest import ALICE, BOB, INTERNAL_TOKEN, Memory
from tests.memory.helpers import expect_error
from tests.support.forwarded import forwarded

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Metadata = tuple[tuple[str, str], ...]


def as_(user: str, tenant: str) -> Metadata:
    return forwarded(INTERNAL_TOKEN, user, tenant, "reader")


async def first_page_token(memory: Memory, who: Metadata) -> str:
    for n in range(3):
        await memory.stub.CreateConversation(
            pb.CreateConversationRequest(name=f"c{n}"), metadata=who
        )
    page = await memory.stub.ListConversations(
        pb.ListConversationsRequest(page_size=1), metadata=who
    )
    assert page.next_page_token
    return page.next_page_token


async def test_a_conversation_page_token_is_refused_for_another_user(memory: Memory) -> None:
    token = await first_page_token(memory, ALICE)
    await memory.stub.CreateConversation(pb.CreateConversationRequest(name="b"), metadata=BOB)
    err = await expect_error(
        memory.stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=token), metadata=BOB
        ),
        INVALID,
        "page_token",
    )
    assert "page_token" in (err.details() or "")
    # Alice still pages with it.
    page = await memory.stub.ListConversations(
        pb.ListConversationsRequest(page_size=1, page_token=token), metadata=ALICE
    )
    assert [c.name for c in page.conversations] == ["c1"]


async def test_conversations_and_tokens_are_per_tenant(memory: Memory) -> None:
    acme, globex = as_("alice", "acme"), as_("alice", "globex")
    token = await first_page_token(memory, acme)
    made = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name="g"), metadata=globex
    )
    # The same user name in another tenant is another owner: nothing of acme's is visible.
    listed = await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=globex)
    assert [c.name for c in listed.conversations] == ["g"]
    acme_list = await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=acme)
    acme_id = acme_list.conversations[0].conversation_id
    for call in (
        memory.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=acme_id), metadata=globex
        ),
        memory.stub.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=acme_id), metadata=globex
        ),
        memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=acme_id), metadata=globex
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    await expect_error(
        memory.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=made.conversation.conversation_id),
            metadata=acme,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        memory.stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=token), metadata=globex
        ),
        INVALID,
        "page_token",
    )


async def test_an_interaction_page_token_is_bound_to_its_owner(memory: Memory) -> None:
    forwarded = as_("alice", "acme")
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=forwarded)
    cid = made.conversation.conversation_id
    for n in range(3):
        await memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input=str(n)), metadata=forwarded
        )
    page = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=1), metadata=forwarded
    )
    assert page.next_page_token
    await expect_error(
        memory.stub.ListInteractions(
            pb.ListInteractionsRequest(
                conversation_id=cid, page_size=1, page_token=page.next_page_token
            ),
            metadata=as_("alice", "globex"),
        ),
        INVALID,
        "page_token",
    )


def test_the_default_tenant_keeps_todays_keys() -> None:
    from services.common.auth import DEFAULT_TENANT
    from services.memory.store import Owner

    # Conversations stored before tenants existed stay where they are.
    legacy = hashlib.sha256(b"alice").hexdigest()[:20]
    assert Owner(DEFAULT_TENANT, "alice").digest() == legacy
    assert Owner("alice", "alice").digest() == legacy  # the key "alice:<key>"
    assert Owner("acme", "alice").digest() == hashlib.sha256(b"acme\0alice").hexdigest()[:20]
