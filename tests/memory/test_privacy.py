"""Privacy across users and authentication of callers."""

from __future__ import annotations

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT, Identity, Role, forwarded_identity
from tests.memory.conftest import ALICE, BOB, INTERNAL_TOKEN, Memory, MemoryFactory
from tests.memory.helpers import expect_error
from tests.support.rpc import bad_request_field, error_info


def _reader(user: str) -> Identity:
    return Identity(user, DEFAULT_TENANT, Role.READER)


NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def test_another_users_data_is_not_found(memory: Memory) -> None:
    s = memory.stub
    conv = (
        await s.CreateConversation(pb.CreateConversationRequest(name="alice's"), metadata=ALICE)
    ).conversation
    cid = conv.conversation_id
    inter = (
        await s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="secret", request_id="r1"),
            metadata=ALICE,
        )
    ).interaction
    missing = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"

    async def as_bob(target_cid: str, target_iid: str) -> list[grpc.aio.AioRpcError]:
        return [
            await expect_error(
                s.GetConversation(
                    pb.GetConversationRequest(conversation_id=target_cid), metadata=BOB
                ),
                NOT_FOUND,
                field="conversation_id",
            ),
            await expect_error(
                s.UpdateConversation(
                    pb.UpdateConversationRequest(conversation_id=target_cid, name="mine"),
                    metadata=BOB,
                ),
                NOT_FOUND,
                field="conversation_id",
            ),
            await expect_error(
                s.CreateInteraction(
                    pb.CreateInteractionRequest(
                        conversation_id=target_cid, input="x", request_id="r1"
                    ),
                    metadata=BOB,
                ),
                NOT_FOUND,
            ),
            await expect_error(
                s.ListInteractions(
                    pb.ListInteractionsRequest(conversation_id=target_cid), metadata=BOB
                ),
                NOT_FOUND,
            ),
            await expect_error(
                s.GetInteraction(pb.GetInteractionRequest(interaction_id=target_iid), metadata=BOB),
                NOT_FOUND,
            ),
            await expect_error(
                s.DeleteConversation(
                    pb.DeleteConversationRequest(conversation_id=target_cid), metadata=BOB
                ),
                NOT_FOUND,
            ),
        ]

    foreign = await as_bob(cid, inter.interaction_id)
    absent = await as_bob(missing, missing)
    # Indistinguishable from a missing one: same code, same message shape, same reason.
    for f, a in zip(foreign, absent, strict=True):
        assert f.details().replace(cid, "ID").replace(inter.interaction_id, "ID") == (
            a.details().replace(missing, "ID")
        )

    bob_list = await s.ListConversations(pb.ListConversationsRequest(), metadata=BOB)
    assert list(bob_list.conversations) == []

    # Alice's data is untouched by Bob's attempts.
    got = (
        await s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE)
    ).conversation
    assert got.name == "alice's"
    assert got.interaction_count == 1
    alice_list = await s.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in alice_list.conversations] == [cid]


async def test_each_user_lists_only_their_own(memory: Memory) -> None:
    s = memory.stub
    mine = {
        (
            await s.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
        ).conversation.conversation_id
        for _ in range(3)
    }
    theirs = {
        (
            await s.CreateConversation(pb.CreateConversationRequest(), metadata=BOB)
        ).conversation.conversation_id
        for _ in range(2)
    }
    alice = await s.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    bob = await s.ListConversations(pb.ListConversationsRequest(), metadata=BOB)
    assert {c.conversation_id for c in alice.conversations} == mine
    assert {c.conversation_id for c in bob.conversations} == theirs
    assert {c.user for c in bob.conversations} == {"bob"}


async def test_unauthenticated_calls(memory: Memory) -> None:
    s = memory.stub
    for metadata in (
        None,
        (("authorization", "Bearer wrong"),),
        (("authorization", "ka"),),
        (("authorization", "Basic ka"),),
        (("authorization", "Bearer "),),
    ):
        await expect_error(
            s.CreateConversation(pb.CreateConversationRequest(), metadata=metadata),
            UNAUTHENTICATED,
        )
        await expect_error(
            s.ListConversations(pb.ListConversationsRequest(), metadata=metadata),
            UNAUTHENTICATED,
        )
    keys = await memory.redis.keys("gensearch:*")
    # Nothing was written (the page-token secret is the service's own, made at start).
    assert keys in ([], [b"gensearch:page-token-secret"])


async def test_forwarded_identity(memory: Memory) -> None:
    s = memory.stub
    as_carol = forwarded_identity(_reader("carol"), INTERNAL_TOKEN)
    conv = (
        await s.CreateConversation(pb.CreateConversationRequest(name="c"), metadata=as_carol)
    ).conversation
    assert conv.user == "carol"
    # The forwarded identity is the owner: alice does not see carol's conversation ...
    await expect_error(
        s.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.conversation_id), metadata=ALICE
        ),
        NOT_FOUND,
    )
    # ... but the gateway acting as alice sees exactly what alice sees.
    # (The key "alice:ka" is alice alone in the tenant "alice".)
    as_alice = forwarded_identity(Identity("alice", "alice", Role.READER), INTERNAL_TOKEN)
    mine = await s.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    listed = await s.ListConversations(pb.ListConversationsRequest(), metadata=as_alice)
    assert [c.conversation_id for c in listed.conversations] == [mine.conversation.conversation_id]

    await expect_error(
        s.ListConversations(
            pb.ListConversationsRequest(),
            metadata=forwarded_identity(_reader("alice"), "wrong-token"),
        ),
        UNAUTHENTICATED,
    )
    await expect_error(
        s.ListConversations(
            pb.ListConversationsRequest(),
            metadata=(("x-gensearch-internal-token", INTERNAL_TOKEN),),
        ),
        UNAUTHENTICATED,
    )
    # A user header without the token is not believed: it is an ordinary call without a key.
    await expect_error(
        s.ListConversations(pb.ListConversationsRequest(), metadata=(("x-gensearch-user", "bob"),)),
        UNAUTHENTICATED,
    )


async def test_forwarded_identity_needs_a_configured_token(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(internal_token="")
    await expect_error(
        memory.stub.ListConversations(
            pb.ListConversationsRequest(), metadata=forwarded_identity(_reader("alice"), "anything")
        ),
        UNAUTHENTICATED,
    )


async def test_open_mode_everyone_is_anonymous(memory_factory: MemoryFactory) -> None:
    # No keys and no internal token: open (with a token, the gateway alone may call).
    memory = await memory_factory(api_keys="", internal_token="")
    conv = (await memory.stub.CreateConversation(pb.CreateConversationRequest())).conversation
    assert conv.user == "anonymous"


async def test_with_a_token_and_no_keys_only_the_gateway_may_call(
    memory_factory: MemoryFactory,
) -> None:
    memory = await memory_factory(api_keys="")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory.stub.CreateConversation(pb.CreateConversationRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "MISSING_INTERNAL_TOKEN"


async def test_an_interaction_not_found_names_its_field(memory: Memory) -> None:
    """INTERACTION_NOT_FOUND names the request's field in its ErrorInfo, its BadRequest and
    its message, as CONVERSATION_NOT_FOUND does, and says the same for another user's
    interaction as for a missing one."""
    s = memory.stub
    cid = (
        await s.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    ).conversation.conversation_id
    iid = (
        await s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="secret"), metadata=ALICE
        )
    ).interaction.interaction_id
    missing = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"

    async def as_bob(target: str) -> list[str]:
        messages = []
        for call, field in (
            (
                s.GetInteraction(pb.GetInteractionRequest(interaction_id=target), metadata=BOB),
                "interaction_id",
            ),
            (
                s.ListInteractionTraces(
                    pb.ListInteractionTracesRequest(interaction_id=target), metadata=BOB
                ),
                "interaction_id",
            ),
            (
                s.UpdateInteraction(
                    pb.UpdateInteractionRequest(interaction=pb.Interaction(interaction_id=target)),
                    metadata=BOB,
                ),
                "interaction.interaction_id",
            ),
        ):
            err = await expect_error(call, NOT_FOUND, field=field)
            assert error_info(err).reason == "INTERACTION_NOT_FOUND"
            assert error_info(err).metadata["interaction_id"] == target
            assert bad_request_field(err) == field
            assert err.details().startswith(f"{field}: ")
            messages.append(err.details().replace(target, "ID"))
        return messages

    assert await as_bob(iid) == await as_bob(missing)
