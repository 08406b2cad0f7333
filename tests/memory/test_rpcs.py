"""Every RPC of the memory service, end to end over a real channel and a real Redis."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.memory.conftest import ALICE, Memory
from tests.memory.helpers import expect_error


async def test_conversation_lifecycle(memory: Memory) -> None:
    stub = memory.stub
    created = (
        await stub.CreateConversation(pb.CreateConversationRequest(name="first"), metadata=ALICE)
    ).conversation
    assert created.name == "first"
    assert created.user == "alice"
    assert created.interaction_count == 0
    assert created.create_time == created.update_time
    assert created.create_time.seconds > 1_600_000_000

    got = (
        await stub.GetConversation(
            pb.GetConversationRequest(conversation_id=created.conversation_id), metadata=ALICE
        )
    ).conversation
    assert got == created

    await asyncio.sleep(0.005)  # update_time has millisecond resolution
    renamed = (
        await stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=created.conversation_id, name="renamed"),
            metadata=ALICE,
        )
    ).conversation
    assert renamed.name == "renamed"
    assert renamed.create_time == created.create_time
    assert renamed.update_time.ToNanoseconds() > created.update_time.ToNanoseconds()

    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == [created.conversation_id]
    assert listed.conversations[0].name == "renamed"
    assert listed.next_page_token == ""

    await stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=created.conversation_id), metadata=ALICE
    )
    await expect_error(
        stub.GetConversation(
            pb.GetConversationRequest(conversation_id=created.conversation_id), metadata=ALICE
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert list(listed.conversations) == []


async def test_interactions(memory: Memory) -> None:
    stub = memory.stub
    conv = (
        await stub.CreateConversation(pb.CreateConversationRequest(name="c"), metadata=ALICE)
    ).conversation
    info = struct_pb2.Struct()
    info.update({"hits": ["a", "b"], "usage": {"tokens": 42}, "ok": True})
    created = (
        await stub.CreateInteraction(
            pb.CreateInteractionRequest(
                conversation_id=conv.conversation_id,
                input="what is gRPC? ✓",
                prompt_template="Answer: {question}",
                response="a framework",
                origin="smollm2",
                additional_info=info,
            ),
            metadata=ALICE,
        )
    ).interaction
    assert created.conversation_id == conv.conversation_id
    assert created.input == "what is gRPC? ✓"
    assert created.additional_info == info
    assert created.create_time.seconds > 0

    got = (
        await stub.GetInteraction(
            pb.GetInteractionRequest(interaction_id=created.interaction_id), metadata=ALICE
        )
    ).interaction
    assert got == created

    second = (
        await stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=conv.conversation_id, input="and then?"),
            metadata=ALICE,
        )
    ).interaction
    assert not second.HasField("additional_info")
    assert second.interaction_id > created.interaction_id

    listed = await stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=conv.conversation_id), metadata=ALICE
    )
    assert [i.interaction_id for i in listed.interactions] == [
        second.interaction_id,
        created.interaction_id,
    ]
    assert listed.interactions[1] == created
    assert listed.next_page_token == ""

    after = (
        await stub.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.conversation_id), metadata=ALICE
        )
    ).conversation
    assert after.interaction_count == 2
    assert after.update_time.ToMilliseconds() >= second.create_time.ToMilliseconds()


async def test_conversations_listed_by_update_time(memory: Memory) -> None:
    stub = memory.stub
    ids = []
    for n in range(3):
        conv = (
            await stub.CreateConversation(
                pb.CreateConversationRequest(name=f"c{n}"), metadata=ALICE
            )
        ).conversation
        ids.append(conv.conversation_id)
        await asyncio.sleep(0.002)
    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == ids[::-1]

    # A new interaction moves the oldest conversation to the top.
    await stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=ids[0], input="hi"), metadata=ALICE
    )
    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == [ids[0], ids[2], ids[1]]
    assert listed.conversations[0].interaction_count == 1
    # Exactly one list entry per conversation (the old position was removed).
    assert await memory.redis.zcard(f"gensearch:{{u:{_digest('alice')}}}:convs") == 3


async def test_interaction_of_missing_conversation(memory: Memory) -> None:
    missing = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"
    for call in (
        memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=missing, input="x"), metadata=ALICE
        ),
        memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=missing), metadata=ALICE
        ),
        memory.stub.GetInteraction(
            pb.GetInteractionRequest(interaction_id=missing), metadata=ALICE
        ),
        memory.stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=missing, name="n"), metadata=ALICE
        ),
        memory.stub.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=missing), metadata=ALICE
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)


async def test_upper_case_ids_are_accepted(memory: Memory) -> None:
    conv = (
        await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    ).conversation
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.conversation_id.upper()), metadata=ALICE
    )
    assert got.conversation.conversation_id == conv.conversation_id


async def test_health_and_reflection(memory: Memory) -> None:
    health = health_pb2_grpc.HealthStub(memory.channel)
    for service in ("", "gensearch.memory.v1.MemoryService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(memory.channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for answer in reflection.ServerReflectionInfo(requests()):
        names = [s.name for s in answer.list_services_response.service]
    assert "gensearch.memory.v1.MemoryService" in names
    assert "grpc.health.v1.Health" in names


def _digest(user: str) -> str:
    import hashlib

    return hashlib.sha256(user.encode()).hexdigest()[:20]
