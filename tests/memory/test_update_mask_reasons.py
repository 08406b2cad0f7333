"""One rule for the update_mask paths every Update* RPC refuses (services/memory/
update_masks.py): a real field of the resource that the RPC never changes is
FIELD_NOT_UPDATABLE; a path naming no field (or a form of path not supported) is
INVALID_UPDATE_MASK. UpdateConversation answered INVALID_UPDATE_MASK for both and
UpdateInteraction FIELD_NOT_UPDATABLE for both. The gateway forwards both RPCs unchanged
(tests/gateway/test_update_mask_reasons.py)."""

from __future__ import annotations

import grpc
import pytest
from gensearch.client.errors import (
    FieldNotUpdatableError,
    InvalidUpdateMaskError,
    from_rpc_error,
)
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import field_mask_pb2

from tests.memory.conftest import ALICE, Memory
from tests.memory.helpers import expect_error
from tests.support.rpc import error_info

# path -> the reason its refusal carries.
CONVERSATION_PATHS = {
    "create_time": "FIELD_NOT_UPDATABLE",
    "conversation_id": "FIELD_NOT_UPDATABLE",
    "interaction_count": "FIELD_NOT_UPDATABLE",
    "summary.text": "FIELD_NOT_UPDATABLE",  # a real field's subfield
    "nmae": "INVALID_UPDATE_MASK",
    "*": "INVALID_UPDATE_MASK",
}
INTERACTION_PATHS = {
    "input": "FIELD_NOT_UPDATABLE",
    "response": "FIELD_NOT_UPDATABLE",
    "create_time": "FIELD_NOT_UPDATABLE",
    "additional_infox": "INVALID_UPDATE_MASK",
    "*": "INVALID_UPDATE_MASK",
    "additional_info.a.b": "INVALID_UPDATE_MASK",  # a key inside a key: not supported
}
ERROR_CLASSES = {
    "FIELD_NOT_UPDATABLE": FieldNotUpdatableError,
    "INVALID_UPDATE_MASK": InvalidUpdateMaskError,
}


async def _refusal(call: object, reason: str, path: str) -> None:
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "update_mask")  # type: ignore[arg-type]
    info = error_info(err)
    assert info.reason == reason, (path, info.reason, err.details())
    assert info.metadata["path"] == path
    assert path in (err.details() or "")
    assert isinstance(from_rpc_error(err), ERROR_CLASSES[reason])


@pytest.mark.parametrize(("path", "reason"), CONVERSATION_PATHS.items())
async def test_update_conversation_refusals(memory: Memory, path: str, reason: str) -> None:
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    request = pb.UpdateConversationRequest(
        conversation_id=made.conversation.conversation_id,
        name="new",
        update_mask=field_mask_pb2.FieldMask(paths=["name", path]),
    )
    await _refusal(memory.stub.UpdateConversation(request, metadata=ALICE), reason, path)
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=made.conversation.conversation_id),
        metadata=ALICE,
    )
    assert got.conversation.name == ""  # nothing of a refused update landed


async def _new_input_of_a_new_turn(memory: Memory, *paths: str) -> pb.UpdateInteractionRequest:
    """An update giving a turn made for it a new input, with ``paths`` as its mask (none:
    no mask)."""
    made = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            new_conversation=pb.CreateConversationRequest(), input="q", response="a"
        ),
        metadata=ALICE,
    )
    return pb.UpdateInteractionRequest(
        interaction=pb.Interaction(interaction_id=made.interaction.interaction_id, input="x"),
        update_mask=field_mask_pb2.FieldMask(paths=paths) if paths else None,
    )


@pytest.mark.parametrize(("path", "reason"), INTERACTION_PATHS.items())
async def test_update_interaction_refusals(memory: Memory, path: str, reason: str) -> None:
    request = await _new_input_of_a_new_turn(memory, "additional_info", path)
    await _refusal(memory.stub.UpdateInteraction(request, metadata=ALICE), reason, path)


async def test_a_changed_fixed_field_without_a_mask_is_field_not_updatable(
    memory: Memory,
) -> None:
    """The same rule without a mask: the field exists and cannot change."""
    request = await _new_input_of_a_new_turn(memory)
    assert not request.HasField("update_mask")
    err = await expect_error(
        memory.stub.UpdateInteraction(request, metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "interaction.input",
    )
    assert error_info(err).reason == "FIELD_NOT_UPDATABLE"
