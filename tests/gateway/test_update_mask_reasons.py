"""The gateway forwards memory's Update* RPCs: their update_mask refusals reach the
client with memory's one rule (tests/memory/test_update_mask_reasons.py): a real field
that cannot change is FIELD_NOT_UPDATABLE, a path naming no field INVALID_UPDATE_MASK."""

from __future__ import annotations

import grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from google.protobuf import field_mask_pb2

from tests.gateway.conftest import ALICE, Stack
from tests.support.rpc import error_info


async def _reason(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert error_info(err).metadata["field"] == "update_mask"
        return error_info(err).reason
    raise AssertionError("the update was not refused")


async def test_update_mask_reasons_through_the_gateway(stack: Stack) -> None:
    made = await stack.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(
            new_conversation=mem_pb.CreateConversationRequest(), input="q", response="a"
        ),
        metadata=ALICE,
    )
    cid, iid = made.interaction.conversation_id, made.interaction.interaction_id

    def conversation(path: str) -> object:
        return stack.memory.UpdateConversation(
            mem_pb.UpdateConversationRequest(
                conversation_id=cid, update_mask=field_mask_pb2.FieldMask(paths=[path])
            ),
            metadata=ALICE,
        )

    def interaction(path: str) -> object:
        return stack.memory.UpdateInteraction(
            mem_pb.UpdateInteractionRequest(
                interaction=mem_pb.Interaction(interaction_id=iid),
                update_mask=field_mask_pb2.FieldMask(paths=[path]),
            ),
            metadata=ALICE,
        )

    assert await _reason(conversation("create_time")) == "FIELD_NOT_UPDATABLE"
    assert await _reason(conversation("nmae")) == "INVALID_UPDATE_MASK"
    assert await _reason(interaction("response")) == "FIELD_NOT_UPDATABLE"
    assert await _reason(interaction("responses")) == "INVALID_UPDATE_MASK"
