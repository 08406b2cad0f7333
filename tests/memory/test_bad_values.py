"""Input that once reached clients as INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED: NaN and
too-deep values in ``additional_info``, requests nested past protobuf's parsing limit, and
pages of large interactions (each test failed before issue 12)."""

from __future__ import annotations

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import struct_pb2

from services.memory.settings import MIB
from tests.memory.conftest import ALICE, Memory, MemoryFactory, make_settings
from tests.memory.helpers import expect_error
from tests.support.rpc import error_info

# Validation and one Lua script: a standalone server shows them.
BACKENDS = ("standalone",)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _conversation(memory: Memory) -> str:
    answer = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    return answer.conversation.conversation_id


def nest(struct: struct_pb2.Struct, levels: int) -> None:
    """``levels`` objects inside one another, built in place (copying a message that deep
    would make protobuf parse it, and refuse)."""
    for _ in range(levels - 1):
        struct = struct.fields["a"].struct_value
    struct.fields["x"].number_value = 1


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_a_number_json_cannot_hold_is_refused(memory: Memory, number: float) -> None:
    request = pb.CreateInteractionRequest(conversation_id=await _conversation(memory))
    request.additional_info.fields["scores"].list_value.values.add().number_value = 1.0
    request.additional_info.fields["scores"].list_value.values.add().number_value = number
    err = await expect_error(
        memory.stub.CreateInteraction(request, metadata=ALICE), INVALID, "additional_info.scores[1]"
    )
    assert error_info(err).reason == "NUMBER_NOT_FINITE"


async def test_nesting_is_limited_and_what_is_stored_reads_back(memory: Memory) -> None:
    cid = await _conversation(memory)
    limit = memory.settings.max_value_depth
    ok = pb.CreateInteractionRequest(conversation_id=cid, input="at the limit")
    nest(ok.additional_info, limit)
    stored = await memory.stub.CreateInteraction(ok, metadata=ALICE)
    # The deepest value accepted still parses inside every response that carries it.
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=stored.interaction.interaction_id), metadata=ALICE
    )
    assert got.interaction.additional_info == ok.additional_info
    listed = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert listed.interactions[0].additional_info == ok.additional_info

    deeper = pb.CreateInteractionRequest(conversation_id=cid)
    nest(deeper.additional_info, limit + 1)
    err = await expect_error(
        memory.stub.CreateInteraction(deeper, metadata=ALICE),
        INVALID,
        "additional_info" + ".a" * limit,
    )
    assert error_info(err).reason == "NESTING_TOO_DEEP"


@pytest.mark.parametrize("levels", [34, 49])
async def test_a_request_too_deep_to_parse_is_invalid_not_unknown(
    memory: Memory, levels: int
) -> None:
    """Past protobuf's own limit the request cannot even be parsed: grpc-python used to
    answer UNKNOWN quoting the Python exception."""
    request = pb.CreateInteractionRequest(conversation_id=await _conversation(memory))
    nest(request.additional_info, levels)
    err = await expect_error(memory.stub.CreateInteraction(request, metadata=ALICE), INVALID)
    info = error_info(err)
    assert info.reason == "NESTING_TOO_DEEP"
    assert info.metadata["message_type"] == "gensearch.memory.v1.CreateInteractionRequest"
    assert "DecodeError" not in (err.details() or "")


async def test_undecodable_bytes_are_invalid_argument(memory: Memory) -> None:
    call = memory.channel.unary_unary("/gensearch.memory.v1.MemoryService/GetConversation")
    err = await expect_error(call(b"\xff\xff\xff", metadata=ALICE), INVALID)
    assert error_info(err).reason == "MALFORMED_REQUEST"


async def test_an_unauthenticated_malformed_request_is_unauthenticated(memory: Memory) -> None:
    call = memory.channel.unary_unary("/gensearch.memory.v1.MemoryService/GetConversation")
    await expect_error(call(b"\xff\xff\xff"), grpc.StatusCode.UNAUTHENTICATED)


async def test_pages_of_large_interactions_stop_at_the_byte_budget(memory: Memory) -> None:
    """17 turns of ~0.9 MB: a page of 10 (9 MB) was more than a client with gRPC's
    default 4 MiB receive limit takes, so ListInteractions failed RESOURCE_EXHAUSTED. Pages
    now stop at max_page_bytes and the next continues right after, newest first."""
    cid = await _conversation(memory)
    ids = []
    for n in range(17):
        request = pb.CreateInteractionRequest(
            conversation_id=cid, input=f"{n} " + "q" * 450_000, response="a" * 450_000
        )
        ids.append((await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction)
    listed: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid, page_size=100, page_token=token),
            metadata=ALICE,
        )
        assert page.ByteSize() <= memory.settings.max_page_bytes
        listed.extend(i.interaction_id for i in page.interactions)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert listed == [i.interaction_id for i in reversed(ids)]
    assert pages >= 6


async def test_an_interaction_larger_than_a_page_is_refused(
    memory_factory: MemoryFactory,
) -> None:
    memory = await memory_factory(max_page_bytes=64 * 1024)
    request = pb.CreateInteractionRequest(
        conversation_id=await _conversation(memory), input="q" * 20_000, response="a" * 50_000
    )
    err = await expect_error(
        memory.stub.CreateInteraction(request, metadata=ALICE), INVALID, "response"
    )
    assert error_info(err).reason == "INTERACTION_TOO_LARGE"


def test_the_page_budget_stays_below_the_message_limit() -> None:
    assert make_settings("redis://127.0.0.1:1").page_bytes == 3 * MIB
    lowered = make_settings("redis://127.0.0.1:1", max_message_bytes=2 * MIB)
    assert lowered.page_bytes == 2 * MIB * 7 // 8


async def test_summary_totals_stop_at_the_int64_maximum(memory: Memory) -> None:
    # Each fold adds its counts to the conversation's totals (HINCRBY). Two folds of int64's
    # maximum overflowed it: the script failed after writing the summary's text, and the
    # caller got INTERNAL "memory store error" for counts it was allowed to send.
    top = 2**63 - 1
    cid = await _conversation(memory)
    turns = []
    for n in range(3):
        made = await memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input=f"q{n}", response="a"),
            metadata=ALICE,
        )
        turns.append(made.interaction.interaction_id)
    through = ""
    for n, turn in enumerate(turns[:2]):
        done = await memory.stub.UpdateConversationSummary(
            pb.UpdateConversationSummaryRequest(
                conversation_id=cid,
                text=f"fold {n}",
                expected_through_interaction_id=through,
                through_interaction_id=turn,
                summarised_turns=top,
                prompt_tokens=top,
                completion_tokens=top - 1,
            ),
            metadata=ALICE,
        )
        through = turn
    summary = done.conversation.summary
    assert summary.text == "fold 1" and summary.through_interaction_id == turns[1]
    assert (summary.summarised_turns, summary.prompt_tokens, summary.completion_tokens) == (
        top,
        top,
        top,
    )
    assert summary.folds == 2
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert got.conversation.summary == summary


async def test_a_value_with_no_kind_is_refused(memory: Memory) -> None:
    """A ``google.protobuf.Value`` with none of its kinds set is valid protobuf but no JSON
    value: stored as sent, it made every JSON read of the conversation fail (grpcurl's
    ListInteractions: "Failed to format response message 1: nil Value"). It is refused,
    naming its path, wherever memory keeps a value; nothing is written."""
    cid = await _conversation(memory)
    unset = pb.CreateInteractionRequest(conversation_id=cid, input="q")
    unset.additional_info.fields["x"].CopyFrom(struct_pb2.Value())
    in_list = pb.CreateInteractionRequest(conversation_id=cid, input="q")
    in_list.additional_info.fields["hits"].list_value.values.add().number_value = 1
    in_list.additional_info.fields["hits"].list_value.values.add()
    in_trace = pb.CreateInteractionRequest(conversation_id=cid, input="q")
    in_trace.traces.add(step=pb.STEP_OTHER).output.fields["y"].struct_value.fields["z"].CopyFrom(
        struct_pb2.Value()
    )
    for request, field in (
        (unset, "additional_info.x"),
        (in_list, "additional_info.hits[1]"),
        (in_trace, "traces[0].output.y.z"),
    ):
        err = await expect_error(
            memory.stub.CreateInteraction(request, metadata=ALICE), INVALID, field
        )
        assert error_info(err).reason == "VALUE_NOT_SET"
    listed = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert list(listed.interactions) == []

    iid = (
        await memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="q"), metadata=ALICE
        )
    ).interaction.interaction_id
    update = pb.UpdateInteractionRequest(interaction=pb.Interaction(interaction_id=iid))
    update.interaction.additional_info.fields["k"].CopyFrom(struct_pb2.Value())
    update.update_mask.paths.append("additional_info.k")
    err = await expect_error(
        memory.stub.UpdateInteraction(update, metadata=ALICE),
        INVALID,
        "interaction.additional_info.k",
    )
    assert error_info(err).reason == "VALUE_NOT_SET"
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert not got.interaction.HasField("additional_info")
