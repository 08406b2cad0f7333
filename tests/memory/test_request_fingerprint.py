"""A request_id reused for another request (docs/memory.md, request_fingerprint): memory
keeps a fingerprint of the request beside the turn stored with the key, and a write or a
CheckStorage with the key and another fingerprint is INVALID_ARGUMENT / REQUEST_ID_REUSED
naming request_id, nothing stored: a retry sends the same request, as Stripe's
idempotency keys and AIP-155 ask. On a real Redis and a real Redis Cluster, through real
gRPC (the claim's atomic look-up through the store itself)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import struct_pb2

from services.common.auth import DEFAULT_TENANT
from services.common.errors import InvalidArgument
from services.memory import keys
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import ALICE, Memory
from tests.memory.helpers import expect_error
from tests.support.rpc import error_info


async def _conversation(memory: Memory) -> str:
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    return made.conversation.conversation_id


async def _count(memory: Memory, cid: str) -> int:
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    return got.conversation.interaction_count


async def _reused(call: Any) -> None:
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "request_id")
    assert error_info(err).reason == "REQUEST_ID_REUSED"


def _turn(cid: str, **fields: Any) -> pb.CreateInteractionRequest:
    values: dict[str, Any] = {
        "conversation_id": cid,
        "input": "desert?",
        "prompt_template": "Answer: {question}",
        "response": "Arrakis.",
        "origin": "m1",
        "request_id": "k",
        **fields,
    }
    return pb.CreateInteractionRequest(**values)


def _info(**values: Any) -> struct_pb2.Struct:
    info = struct_pb2.Struct()
    info.update(values)
    return info


async def test_a_key_reused_with_other_content_is_refused(memory: Memory) -> None:
    """CreateInteraction with a request_id already used: the same request (a retry)
    answers with the stored turn as before; other content (input, response, template,
    origin, additional_info) is REQUEST_ID_REUSED, nothing stored. It answered with the
    stored turn, as if the second write had been made. Only the conversation may be named
    otherwise (new_conversation: the turn, wherever it is)."""
    cid = await _conversation(memory)
    request = _turn(cid, additional_info=_info(hits=["a"]))
    first = (await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction
    again = (await memory.stub.CreateInteraction(request, metadata=ALICE)).interaction
    assert again == first
    for other in (
        {"input": "hacker?"},
        {"response": "Caladan."},
        {"prompt_template": "Be brief: {question}"},
        {"origin": "m2"},
        {"additional_info": _info(hits=["b"])},
        {"additional_info": None},
    ):
        changed = pb.CreateInteractionRequest()
        changed.CopyFrom(request)
        for name, value in other.items():
            if value is None:
                changed.ClearField(name)
            elif isinstance(value, struct_pb2.Struct):
                getattr(changed, name).CopyFrom(value)
            else:
                setattr(changed, name, value)
        await _reused(memory.stub.CreateInteraction(changed, metadata=ALICE))
    assert await _count(memory, cid) == 1
    starting = pb.CreateInteractionRequest()
    starting.CopyFrom(request)
    starting.ClearField("conversation_id")
    starting.new_conversation.name = "elsewhere"
    again = (await memory.stub.CreateInteraction(starting, metadata=ALICE)).interaction
    assert again == first
    listed = await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [(c.conversation_id, c.interaction_count) for c in listed.conversations] == [(cid, 1)]


async def test_a_client_fingerprint_names_the_request(memory: Memory) -> None:
    """With request_fingerprint (the gateway's Ask digest), attempts of one request whose
    content differs (each attempt's own answer) are one: the stored turn comes back; the
    key with another fingerprint is REQUEST_ID_REUSED, in CreateInteraction and in
    CheckStorage (with or without a claim), before anything is reserved or stored.
    CheckStorage without a fingerprint compares nothing, as before."""
    cid = await _conversation(memory)
    first = (
        await memory.stub.CreateInteraction(_turn(cid, request_fingerprint="ask-1"), metadata=ALICE)
    ).interaction
    other_answer = _turn(cid, response="Arrakis, also Dune.", request_fingerprint="ask-1")
    again = (await memory.stub.CreateInteraction(other_answer, metadata=ALICE)).interaction
    assert again == first
    await _reused(
        memory.stub.CreateInteraction(_turn(cid, request_fingerprint="ask-2"), metadata=ALICE)
    )
    # Without one, the write's content is its fingerprint: not the client's.
    await _reused(memory.stub.CreateInteraction(_turn(cid), metadata=ALICE))
    for claim in ({}, {"claim_token": "attempt-2", "claim_seconds": 30}):
        check = pb.CheckStorageRequest(
            conversation_id=cid, bytes=1, request_id="k", request_fingerprint="ask-2", **claim
        )
        await _reused(memory.stub.CheckStorage(check, metadata=ALICE))
        for same in ("ask-1", ""):
            check.request_fingerprint = same
            found = await memory.stub.CheckStorage(check, metadata=ALICE)
            assert found.interaction == first and not found.request_id_in_use
    assert await _count(memory, cid) == 1


async def test_a_turn_stored_before_fingerprints_is_returned(memory: Memory) -> None:
    """A turn stored with its request_id before memory kept fingerprints has none: a
    write or a check with its key answers with it as before (the gateway still compares
    the question)."""
    cid = await _conversation(memory)
    first = (await memory.stub.CreateInteraction(_turn(cid), metadata=ALICE)).interaction
    found = [key async for key in memory.redis.scan_iter(match=f"*:int:{first.interaction_id}")]
    assert len(found) == 1
    assert await memory.redis.hdel(found[0], "request_fingerprint") == 1
    again = await memory.stub.CreateInteraction(_turn(cid, response="other"), metadata=ALICE)
    assert again.interaction == first
    check = pb.CheckStorageRequest(
        conversation_id=cid, bytes=1, request_id="k", request_fingerprint="ask-9"
    )
    assert (await memory.stub.CheckStorage(check, metadata=ALICE)).interaction == first
    assert await _count(memory, cid) == 1


async def test_a_turn_stored_without_a_client_fingerprint_is_not_compared_with_one(
    memory: Memory,
) -> None:
    """A turn written without request_fingerprint (an Ask's, through a gateway older than
    the field) has its content's: a client's fingerprint is not compared with it (the
    gateway compares the question, as before), so a retry through a newer gateway still
    gets it, whichever was upgraded first. A write without one is still compared."""
    cid = await _conversation(memory)
    first = (await memory.stub.CreateInteraction(_turn(cid), metadata=ALICE)).interaction
    check = pb.CheckStorageRequest(
        conversation_id=cid, bytes=1, request_id="k", request_fingerprint="ask-1"
    )
    assert (await memory.stub.CheckStorage(check, metadata=ALICE)).interaction == first
    newer = _turn(cid, response="a newer attempt's answer", request_fingerprint="ask-1")
    assert (await memory.stub.CreateInteraction(newer, metadata=ALICE)).interaction == first
    await _reused(memory.stub.CreateInteraction(_turn(cid, response="other"), metadata=ALICE))
    assert await _count(memory, cid) == 1


async def test_a_claim_that_finds_the_turn_compares_its_fingerprint(memory: Memory) -> None:
    """The claim's own look-up (a turn stored since CheckStorage looked): the same
    comparison in the same atomic step, nothing reserved when it fails."""
    store = MemoryStore(memory.redis)
    owner = Owner(DEFAULT_TENANT, "alice")
    cid = (await store.create_conversation(owner, "c")).conversation_id
    made = await store.create_interaction(
        owner, cid, pb.Interaction(input="q"), "k", fingerprint="f1"
    )
    with pytest.raises(InvalidArgument) as err:
        await store.claim_request(owner, "k", "token", 30, "f2")
    assert (err.value.reason, err.value.field) == ("REQUEST_ID_REUSED", "request_id")
    tag = store.tag(owner)
    for apart in (False, True):  # whichever of the shared tag's owners the caller is
        assert await memory.redis.exists(keys.claim(tag, "k", apart=apart)) == 0
    held = await store.claim_request(owner, "k", "token", 30, "f1")
    assert isinstance(held, pb.Interaction) and held.interaction_id == made.interaction_id


@pytest.mark.parametrize("bad", ["start_time", "infinite_input"])
async def test_a_keyed_turn_with_an_invalid_trace_names_the_trace(memory: Memory, bad: str) -> None:
    """A turn with request_id whose trace holds what JSON cannot carry (a Timestamp past
    year 9999, an infinite number) is refused naming the trace, as without a key: its
    content fingerprint (canonical JSON) is taken once the turn is valid, never INTERNAL."""
    cid = await _conversation(memory)
    turn = _turn(cid)
    trace = turn.traces.add(step=pb.STEP_RETRIEVAL)
    if bad == "start_time":
        trace.start_time.seconds = 10**12
    else:
        trace.input.update({"score": float("inf")})
    err = await expect_error(
        memory.stub.CreateInteraction(turn, metadata=ALICE), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_info(err).metadata["field"].startswith("traces[0]."), err.details()
    assert await _count(memory, cid) == 0


async def test_a_key_in_use_for_another_request_is_reused_not_in_use(memory: Memory) -> None:
    """While an attempt holds a request_id (CheckStorage's claim, the first Ask still
    answering), an attempt with another request_fingerprint is INVALID_ARGUMENT /
    REQUEST_ID_REUSED, as it will be once the turn is stored: retrying it can never
    succeed. The same request, or one with no fingerprint to compare, is told the key is
    in use (retry later), and so is any attempt while the holder kept no fingerprint.
    Before, every one of them was told REQUEST_ID_IN_USE. The holder's fingerprint goes
    with its claim (released here)."""
    cid = await _conversation(memory)

    def check(token: str, given: str, **more: Any) -> pb.CheckStorageRequest:
        return pb.CheckStorageRequest(
            conversation_id=cid, bytes=1, request_id="k", request_fingerprint=given,
            claim_token=token, claim_seconds=30, **more,
        )  # fmt: skip

    held = await memory.stub.CheckStorage(check("attempt-1", "ask-1"), metadata=ALICE)
    assert held.limits.max_text_bytes and not held.request_id_in_use
    await _reused(memory.stub.CheckStorage(check("attempt-2", "ask-2"), metadata=ALICE))
    for same in ("ask-1", ""):
        answer = await memory.stub.CheckStorage(check("attempt-2", same), metadata=ALICE)
        assert answer.request_id_in_use
    release = check("attempt-1", "", release_claim=True)
    release.ClearField("claim_seconds")
    await memory.stub.CheckStorage(release, metadata=ALICE)
    assert [key async for key in memory.redis.scan_iter(match="*claim*")] == []
    # A holder that kept no fingerprint: nothing to compare, in use.
    await memory.stub.CheckStorage(check("attempt-3", ""), metadata=ALICE)
    answer = await memory.stub.CheckStorage(check("attempt-4", "ask-2"), metadata=ALICE)
    assert answer.request_id_in_use
    assert await _count(memory, cid) == 0
