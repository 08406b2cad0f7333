"""Traces of an interaction (stored with it, paged, owner-only, bounded) and
UpdateInteraction (additional_info only, by field mask, owner-only), on the memory
service alone against real Redis, standalone and a 3-master cluster."""

from __future__ import annotations

import uuid

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tests.memory.conftest import ALICE, BOB, Memory, MemoryFactory
from tests.memory.helpers import expect_error
from tests.support.wire import add_unknown_field


def _struct(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def _traces() -> list[pb.Trace]:
    return [
        pb.Trace(
            step=pb.STEP_QUESTION_REWRITE,
            input=_struct(question="and it?"),
            output=_struct(query="dune year"),
        ),
        pb.Trace(
            step=pb.STEP_RETRIEVAL,
            input=_struct(query="dune year"),
            output=_struct(hits=[{"id": "a", "score": 0.9}, {"id": "b", "score": 0.5}]),
        ),
        pb.Trace(
            step=pb.STEP_GENERATION,
            input=_struct(model="m", messages=[{"role": "user", "content": "hi"}]),
            output=_struct(usage={"total_tokens": 12}),
        ),
    ]


async def _turn(memory: Memory, traces: list[pb.Trace], **fields: object) -> pb.Interaction:
    conv = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    made = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            conversation_id=conv.conversation.conversation_id,
            input="q",
            response="a",
            traces=traces,
            **fields,  # type: ignore[arg-type]
        ),
        metadata=ALICE,
    )
    return made.interaction


async def test_traces_are_stored_with_the_interaction_and_paged(memory: Memory) -> None:
    interaction = await _turn(memory, _traces())
    assert interaction.trace_count == 3
    iid = interaction.interaction_id

    first = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(interaction_id=iid, page_size=2), metadata=ALICE
    )
    assert [t.step for t in first.traces] == [pb.STEP_QUESTION_REWRITE, pb.STEP_RETRIEVAL]
    assert [t.trace_number for t in first.traces] == [0, 1]
    assert first.next_page_token
    second = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(
            interaction_id=iid, page_size=2, page_token=first.next_page_token
        ),
        metadata=ALICE,
    )
    assert [t.step for t in second.traces] == [pb.STEP_GENERATION]
    assert second.next_page_token == ""
    hits = json_format.MessageToDict(first.traces[1].output)["hits"]
    assert hits == [{"id": "a", "score": 0.9}, {"id": "b", "score": 0.5}]
    assert not any(t.truncated for t in [*first.traces, *second.traces])

    # The interaction read back carries a count, not the traces: lists stay small.
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert got.interaction.trace_count == 3

    # Owner-only: bob gets NOT_FOUND, exactly as for a missing interaction, and may not use
    # alice's page token.
    await expect_error(
        memory.stub.ListInteractionTraces(
            pb.ListInteractionTracesRequest(interaction_id=iid), metadata=BOB
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        memory.stub.ListInteractionTraces(
            pb.ListInteractionTracesRequest(interaction_id=iid, page_token=first.next_page_token),
            metadata=BOB,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )


async def test_an_interaction_without_traces_lists_none(memory: Memory) -> None:
    interaction = await _turn(memory, [])
    page = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(interaction_id=interaction.interaction_id),
        metadata=ALICE,
    )
    assert list(page.traces) == [] and page.next_page_token == ""


async def test_traces_are_bounded(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_trace_bytes=2048, max_traces=3)
    huge = pb.Trace(
        step=pb.STEP_GENERATION,
        input=_struct(messages=[{"role": "user", "content": "x" * 50_000}], model="m"),
        output=_struct(usage={"total_tokens": 1}),
    )
    interaction = await _turn(memory, [huge])
    page = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(interaction_id=interaction.interaction_id),
        metadata=ALICE,
    )
    (trace,) = page.traces
    assert trace.truncated
    assert trace.ByteSize() <= 2048
    content = json_format.MessageToDict(trace.input)["messages"][0]["content"]
    assert content.endswith("…") and 100 < len(content) < 2048
    assert json_format.MessageToDict(trace.input)["model"] == "m"  # short strings kept

    await expect_error(
        _turn(memory, _traces() + _traces()), grpc.StatusCode.INVALID_ARGUMENT, "traces"
    )


async def test_update_interaction_changes_additional_info_only(memory: Memory) -> None:
    interaction = await _turn(memory, [], additional_info=_struct(keep=1, change="old"))
    iid = interaction.interaction_id

    # One key, by path: set one, remove one absent from the new value.
    updated = await memory.stub.UpdateInteraction(
        pb.UpdateInteractionRequest(
            interaction=pb.Interaction(
                interaction_id=iid, additional_info=_struct(change="new", added=True)
            ),
            update_mask=field_mask_pb2.FieldMask(
                paths=["additional_info.change", "additional_info.added"]
            ),
        ),
        metadata=ALICE,
    )
    info = json_format.MessageToDict(updated.interaction.additional_info)
    assert info == {"keep": 1, "change": "new", "added": True}
    assert updated.interaction.HasField("update_time")
    assert updated.interaction.input == "q" and updated.interaction.response == "a"
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert got.interaction == updated.interaction

    # The whole field (also the default of an empty mask).
    for mask in (["additional_info"], []):
        replaced = await memory.stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(
                    interaction_id=iid, additional_info=_struct(only=len(mask))
                ),
                update_mask=field_mask_pb2.FieldMask(paths=mask),
            ),
            metadata=ALICE,
        )
        assert json_format.MessageToDict(replaced.interaction.additional_info) == {
            "only": len(mask)
        }

    # Nothing else may change, whatever the new message carries.
    nested = "additional_info.a.b"  # a FieldMask's key b in a, not a key "a.b"
    for path in ("input", "response", "origin", "create_time", "additional_infox", "*", nested):
        await expect_error(
            memory.stub.UpdateInteraction(
                pb.UpdateInteractionRequest(
                    interaction=pb.Interaction(interaction_id=iid, input="forged"),
                    update_mask=field_mask_pb2.FieldMask(paths=[path, "additional_info"]),
                ),
                metadata=ALICE,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "update_mask",
        )
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert got.interaction.input == "q"

    # Someone else's interaction is NOT_FOUND and stays unchanged.
    await expect_error(
        memory.stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(interaction_id=iid, additional_info=_struct(x=1)),
            ),
            metadata=BOB,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    after = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert json_format.MessageToDict(after.interaction.additional_info) == {"only": 0}

    # The interaction to change is named.
    await expect_error(
        memory.stub.UpdateInteraction(
            pb.UpdateInteractionRequest(interaction=pb.Interaction()), metadata=ALICE
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "interaction.interaction_id",
    )


async def test_an_update_without_a_mask_changing_another_field_is_refused(
    memory: Memory,
) -> None:
    # Without a mask only additional_info was applied, replacing it whole: a request
    # changing the response answered OK, left the response as it was and wiped the
    # interaction's additional_info (here its rating).
    interaction = await _turn(memory, [], additional_info=_struct(rating=5))
    iid = interaction.interaction_id
    changes = {
        "input": pb.Interaction(input="forged"),
        "response": pb.Interaction(response="forged"),
        "origin": pb.Interaction(origin="forged"),
        "prompt_template": pb.Interaction(prompt_template="forged"),
        "conversation_id": pb.Interaction(conversation_id=str(uuid.uuid4())),
        "create_time": pb.Interaction(create_time=Timestamp(seconds=1)),
    }
    for field, change in changes.items():
        change.interaction_id = iid
        await expect_error(
            memory.stub.UpdateInteraction(
                pb.UpdateInteractionRequest(interaction=change), metadata=ALICE
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"interaction.{field}",
        )
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert got.interaction == interaction
    # The whole interaction as read, its additional_info changed: the rest is unchanged,
    # so it is no change (read, modify, write back).
    sent = pb.Interaction()
    sent.CopyFrom(got.interaction)
    sent.additional_info.CopyFrom(_struct(rating=4))
    updated = await memory.stub.UpdateInteraction(
        pb.UpdateInteractionRequest(interaction=sent), metadata=ALICE
    )
    assert json_format.MessageToDict(updated.interaction.additional_info) == {"rating": 4}


async def test_update_keeps_traces_and_concurrent_updates_all_land(memory: Memory) -> None:
    import asyncio

    interaction = await _turn(memory, _traces())
    iid = interaction.interaction_id

    async def set_key(n: int) -> None:
        await memory.stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(
                    interaction_id=iid, additional_info=_struct(**{f"k{n}": n})
                ),
                update_mask=field_mask_pb2.FieldMask(paths=[f"additional_info.k{n}"]),
            ),
            metadata=ALICE,
        )

    # Compare-and-set: concurrent updates of different keys lose none of them.
    await asyncio.gather(*(set_key(n) for n in range(6)))
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE
    )
    assert json_format.MessageToDict(got.interaction.additional_info) == {
        f"k{n}": n for n in range(6)
    }
    page = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(interaction_id=iid), metadata=ALICE
    )
    assert len(page.traces) == 3


async def test_deleting_the_conversation_deletes_its_traces(memory: Memory) -> None:
    interaction = await _turn(memory, _traces())
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=interaction.conversation_id),
        metadata=ALICE,
    )
    await expect_error(
        memory.stub.ListInteractionTraces(
            pb.ListInteractionTracesRequest(interaction_id=interaction.interaction_id),
            metadata=ALICE,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    keys = [k async for k in memory.redis.scan_iter(match="*")]
    assert not [k for k in keys if b":int:" in k]


async def test_a_trace_page_fits_the_page_budget(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(max_page_bytes=64 * 1024, max_trace_bytes=30_000)
    big = [
        pb.Trace(step=pb.STEP_OTHER, input=_struct(text=f"{n}" + "y" * 25_000)) for n in range(4)
    ]
    interaction = await _turn(memory, big)
    numbers: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await memory.stub.ListInteractionTraces(
            pb.ListInteractionTracesRequest(
                interaction_id=interaction.interaction_id, page_size=100, page_token=token
            ),
            metadata=ALICE,
        )
        pages += 1
        assert page.ByteSize() <= 64 * 1024
        numbers += [t.trace_number for t in page.traces]
        token = page.next_page_token
        if not token:
            break
    assert numbers == [0, 1, 2, 3] and pages == 2


async def test_bad_traces_name_the_field(memory: Memory) -> None:
    await expect_error(
        _turn(memory, [pb.Trace(step=pb.STEP_RETRIEVAL), pb.Trace(step=99)]),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "traces[1].step",
    )
    await expect_error(
        _turn(memory, [pb.Trace(step=pb.STEP_RETRIEVAL, output=_struct(score=float("nan")))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "traces[0].output.score",
    )


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        # The QA case: both used to be stored, and ListInteractionTraces could then not be
        # written as JSON ("Timestamp is not valid"), so grpcurl failed on every read.
        ({"start_time": Timestamp(seconds=10**13)}, "traces[1].start_time"),
        ({"start_time": Timestamp(seconds=-62_135_596_801)}, "traces[1].start_time"),
        ({"start_time": Timestamp(seconds=1, nanos=-1)}, "traces[1].start_time"),
        ({"start_time": Timestamp(seconds=1, nanos=1_000_000_000)}, "traces[1].start_time"),
        ({"duration": Duration(seconds=-5)}, "traces[1].duration"),
        ({"duration": Duration(seconds=5, nanos=-5)}, "traces[1].duration"),
        ({"duration": Duration(seconds=315_576_000_001)}, "traces[1].duration"),
    ],
)
async def test_invalid_trace_times_name_the_field(
    memory: Memory, bad: dict[str, object], field: str
) -> None:
    good = pb.Trace(step=pb.STEP_RETRIEVAL, start_time=Timestamp(seconds=1), duration=Duration())
    await expect_error(
        _turn(memory, [good, pb.Trace(step=pb.STEP_GENERATION, **bad)]),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )


async def test_the_widest_valid_trace_times_read_back_as_json(memory: Memory) -> None:
    edges = [
        pb.Trace(
            step=pb.STEP_OTHER,
            start_time=Timestamp(seconds=-62_135_596_800),
            duration=Duration(seconds=315_576_000_000),
        ),
        pb.Trace(
            step=pb.STEP_OTHER,
            start_time=Timestamp(seconds=253_402_300_799, nanos=999_999_999),
            duration=Duration(),
        ),
    ]
    turn = await _turn(memory, edges)
    listed = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(interaction_id=turn.interaction_id), metadata=ALICE
    )
    as_json = json_format.MessageToDict(listed)
    assert as_json["traces"][0]["startTime"] == "0001-01-01T00:00:00Z"
    assert as_json["traces"][1]["startTime"] == "9999-12-31T23:59:59.999999999Z"


async def test_unknown_fields_of_a_trace_are_not_kept(memory_factory: MemoryFactory) -> None:
    """A trace carrying a field its type does not declare (a client built from another
    .proto, or one padding on purpose) was stored with it: max_trace_bytes cut the trace's
    own input and output to nothing (truncated) and still kept the unknown bytes, 500 KB of
    them in a trace bounded to 2 KiB, served back on every read. Unknown fields are
    dropped before the trace is bounded: the trace keeps what it declares."""
    memory = await memory_factory(max_trace_bytes=2048)
    trace = pb.Trace(step=pb.STEP_OTHER, input=_struct(query="dune"))
    add_unknown_field(trace, 1000, b"x" * 500_000)
    add_unknown_field(trace.input, 1000, b"y" * 1000)
    interaction = await _turn(memory, [trace])
    page = await memory.stub.ListInteractionTraces(
        pb.ListInteractionTracesRequest(interaction_id=interaction.interaction_id),
        metadata=ALICE,
    )
    (stored,) = page.traces
    assert stored.ByteSize() <= 2048
    assert not stored.truncated
    assert json_format.MessageToDict(stored.input) == {"query": "dune"}
    assert stored.input.ByteSize() == _struct(query="dune").ByteSize()


async def test_unknown_fields_of_additional_info_are_not_kept(memory: Memory) -> None:
    """additional_info is kept as sent, and was kept with fields no Struct declares: bytes
    no JSON read shows, served back on every read of the turn (and counted against the
    owner's storage). Dropped when the turn is written and when it is updated."""
    info = _struct(keep=1)
    add_unknown_field(info, 1000, b"x" * 100_000)
    interaction = await _turn(memory, [], additional_info=info)
    assert interaction.additional_info == _struct(keep=1)
    got = await memory.stub.GetInteraction(
        pb.GetInteractionRequest(interaction_id=interaction.interaction_id), metadata=ALICE
    )
    assert got.interaction.additional_info.ByteSize() == _struct(keep=1).ByteSize()

    new = _struct(keep=2)
    add_unknown_field(new, 1000, b"y" * 100_000)
    updated = await memory.stub.UpdateInteraction(
        pb.UpdateInteractionRequest(
            interaction=pb.Interaction(
                interaction_id=interaction.interaction_id, additional_info=new
            )
        ),
        metadata=ALICE,
    )
    assert updated.interaction.additional_info.ByteSize() == _struct(keep=2).ByteSize()
