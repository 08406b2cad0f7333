"""The client's writes to conversations through the real gateway stack: UpdateConversation
(by field mask), UpdateInteraction (additional_info, whole or by key), DeleteInteraction and
UpdateConversationSummary (a compare-and-set); and that writes are never retried."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from gensearch.client import AsyncGensearch, Gensearch, RetryPolicy, errors, types
from gensearch.gateway.v1 import gateway_service_pb2_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc

from tests.cli.conftest import RunningStack


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def test_update_conversation_changes_only_what_is_passed(client: AsyncGensearch) -> None:
    conversations = client.conversations
    made = await conversations.create("trip", ttl=timedelta(hours=2), max_turns=5)

    fewer = await conversations.update(made.id, max_turns=3)
    assert isinstance(fewer, types.Conversation) and fewer.id == made.id
    assert fewer.max_turns == 3
    # Not in the mask, so unchanged (an empty name or ttl was not sent as a change).
    assert fewer.name == "trip" and fewer.ttl == timedelta(hours=2) and fewer.expire_time

    forever = await conversations.update(made.id, ttl=timedelta(0))
    assert forever.expire_time is None and not forever.ttl and forever.max_turns == 3

    renamed = await conversations.update(made.id, name="Lisbon", summary_disabled=True)
    assert renamed.name == "Lisbon" and renamed.summary_disabled and renamed.max_turns == 3
    got = await conversations.get(made.id)
    assert (got.name, got.summary_disabled, got.max_turns) == ("Lisbon", True, 3)

    with pytest.raises(ValueError, match="at least one field"):
        await conversations.update(made.id)  # nothing to change: a mistake, said at once
    cleared = await conversations.update(made.id, name="")  # "" is a change: in the mask
    assert cleared.name == "" and cleared.max_turns == 3
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await conversations.update(made.id, max_turns=-1)
    assert caught.value.field == "max_turns"
    with pytest.raises(errors.ConversationNotFoundError):
        await conversations.update(str(uuid.uuid4()), name="gone")


async def test_update_interaction_replaces_or_sets_keys(client: AsyncGensearch) -> None:
    conversations = client.conversations
    conv = await conversations.create("ratings")
    turn = await conversations.add_interaction(
        conv.id, "Best time to visit?", "Spring.",
        additional_info={"rating": 1, "draft": True, "lang": "en"},
    )  # fmt: skip
    assert turn.update_time is None

    # Only the keys named change: rating set, draft removed (absent from the value), lang kept.
    keyed = await conversations.update_interaction(
        turn.id, {"rating": 5, "ignored": "x"}, keys=["rating", "draft"]
    )
    assert keyed.additional_info == {"rating": 5, "lang": "en"}
    assert keyed.update_time is not None and keyed.input == "Best time to visit?"
    assert (await conversations.get_interaction(turn.id)).additional_info == {
        "rating": 5,
        "lang": "en",
    }

    whole = await conversations.update_interaction(turn.id, {"tags": ["a", "b"]})
    assert whole.additional_info == {"tags": ["a", "b"]}

    with pytest.raises(TypeError):
        await conversations.update_interaction(turn.id, {"rating": 2}, keys="rating")
    with pytest.raises(ValueError, match="keys"):
        await conversations.update_interaction(turn.id, {"rating": 2}, keys=[])
    with pytest.raises(errors.InteractionNotFoundError):
        await conversations.update_interaction(str(uuid.uuid4()), {"rating": 2})


async def test_delete_interaction_removes_one_turn(client: AsyncGensearch) -> None:
    conversations = client.conversations
    conv = await conversations.create("pruned")
    kept = await conversations.add_interaction(conv.id, "Keep this?", "Yes.")
    gone = await conversations.add_interaction(conv.id, "Drop this?", "Yes.")

    assert await conversations.delete_interaction(gone.id) is None

    with pytest.raises(errors.InteractionNotFoundError):
        await conversations.get_interaction(gone.id)
    assert [t.id for t in await conversations.interactions(conv.id)] == [kept.id]
    # Not retried, and a second call is told it is gone.
    with pytest.raises(errors.InteractionNotFoundError):
        await conversations.delete_interaction(gone.id)


async def test_update_summary_is_a_compare_and_set(client: AsyncGensearch) -> None:
    conversations = client.conversations
    conv = await conversations.create("long talk")
    first, second = [
        (await conversations.add_interaction(conv.id, f"question {i}", f"answer {i}")).id
        for i in range(2)
    ]
    summarised = await conversations.update_summary(
        conv.id, "They asked a first question.", through_interaction_id=first,
        summarised_turns=1, prompt_tokens=30, completion_tokens=7,
    )  # fmt: skip
    summary = summarised.summary
    assert isinstance(summary, types.ConversationSummary)
    assert summary.text == "They asked a first question."
    assert summary.through_interaction_id == first and summary.summarised_turns == 1
    assert summary.prompt_tokens == 30 and summary.folds == 1

    # A writer that still believes there is no summary loses: ABORTED, with what it covers now.
    with pytest.raises(errors.SummaryChangedError) as caught:
        await conversations.update_summary(conv.id, "stale", through_interaction_id=second)
    assert isinstance(caught.value, errors.AbortedError)
    assert caught.value.metadata["through_interaction_id"] == first

    folded = await conversations.update_summary(
        conv.id, "Two questions.", through_interaction_id=second,
        expected_through_interaction_id=first, summarised_turns=1,
    )  # fmt: skip
    assert folded.summary and folded.summary.text == "Two questions."
    assert folded.summary.through_interaction_id == second and folded.summary.folds == 2

    disabled = await conversations.create("no summary", summary_disabled=True)
    turn = (await conversations.add_interaction(disabled.id, "q", "a")).id
    with pytest.raises(errors.FailedPreconditionError):
        await conversations.update_summary(disabled.id, "x", through_interaction_id=turn)


async def test_a_summary_read_before_a_turn_was_deleted_is_refused(
    client: AsyncGensearch,
) -> None:
    """expected_unfolded_deletions: a summary made from turns read before one of them was
    deleted (the conversation's unfolded_deletions changed since) is refused, so it
    cannot carry the deleted turn's words; read again, it is stored."""
    conversations = client.conversations
    conv = await conversations.create("deleted talk")
    first, second = [
        (await conversations.add_interaction(conv.id, f"question {i}", f"answer {i}")).id
        for i in range(2)
    ]
    read = await conversations.get(conv.id)
    assert read.unfolded_deletions == 0
    await conversations.delete_interaction(first)
    with pytest.raises(errors.SummaryChangedError):
        await conversations.update_summary(
            conv.id, "Both questions.", through_interaction_id=second,
            expected_unfolded_deletions=read.unfolded_deletions,
        )  # fmt: skip
    read = await conversations.get(conv.id)
    assert read.unfolded_deletions == 1 and read.summary is None
    stored = await conversations.update_summary(
        conv.id, "The second question.", through_interaction_id=second,
        expected_unfolded_deletions=read.unfolded_deletions,
    )  # fmt: skip
    assert stored.summary and stored.summary.text == "The second question."


def test_writes_from_the_blocking_client(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address) as client:
        conv = client.conversations.create("sync")
        assert client.conversations.update(conv.id, name="renamed").name == "renamed"
        turn = client.conversations.add_interaction(conv.id, "q", "a")
        updated = client.conversations.update_interaction(turn.id, {"ok": True})
        assert updated.additional_info == {"ok": True}


# --- writes are not retried ------------------------------------------------------------------


class _Unavailable(
    memory_service_pb2_grpc.MemoryServiceServicer, gateway_service_pb2_grpc.GatewayServiceServicer
):
    """A real gRPC server whose every answer is UNAVAILABLE, counting the attempts."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def _refuse(self, name: str, context: grpc.aio.ServicerContext) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    async def GetConversation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._refuse("GetConversation", context)

    async def UpdateConversation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._refuse("UpdateConversation", context)

    async def UpdateInteraction(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._refuse("UpdateInteraction", context)

    async def UpdateConversationSummary(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._refuse("UpdateConversationSummary", context)

    async def GenerateOnObjects(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._refuse("GenerateOnObjects", context)


async def test_writes_and_generation_are_not_retried_reads_are() -> None:
    servicer = _Unavailable()
    server = grpc.aio.server()
    memory_service_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server)
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=10))
    cid = str(uuid.uuid4())
    try:
        async with AsyncGensearch(f"127.0.0.1:{port}", retry=retry, timeout=20) as client:
            calls = (
                client.conversations.update(cid, name="x"),
                client.conversations.update_interaction(cid, {"a": 1}),
                client.conversations.update_summary(cid, "s", through_interaction_id=cid),
                client.generate.on_objects([{"a": 1}], single_prompt="{a}"),
                client.conversations.get(cid),
            )
            for call in calls:
                with pytest.raises(errors.UnavailableError):
                    await call
    finally:
        await server.stop(0)
    assert servicer.calls == {
        "UpdateConversation": 1,
        "UpdateInteraction": 1,
        "UpdateConversationSummary": 1,
        "GenerateOnObjects": 1,
        "GetConversation": 3,  # a read: retried by the channel's policy
    }


async def test_check_storage_says_memory_limits_and_checks_a_summary(
    client: AsyncGensearch,
) -> None:
    """check_storage returns memory's limits on a turn (InteractionLimits, None from a
    memory older than them) and, with summary=True, checks a new summary as
    UpdateConversationSummary counts it (a conversation is required)."""
    conversations = client.conversations
    conv = await conversations.create("limits")
    usage = await conversations.check_storage(conv.id, turn_bytes=10)
    assert isinstance(usage.limits, types.InteractionLimits)
    assert usage.limits.max_text_bytes == 1024 * 1024  # the stack's memory: defaults
    assert usage.limits.max_traces == 16
    assert 0 < usage.limits.max_interaction_bytes < 3 * 1024 * 1024
    summary = await conversations.check_storage(conv.id, turn_bytes=100, summary=True)
    assert summary.used_bytes == usage.used_bytes  # nothing written
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await conversations.check_storage(turn_bytes=1, summary=True)
    assert caught.value.field == "conversation_id"
    assert usage.interaction is None
    stored = await conversations.add_interaction(conv.id, input="q", request_id="turn-1")
    found = await conversations.check_storage(turn_bytes=10, request_id="turn-1")
    assert isinstance(found.interaction, types.Interaction)
    assert found.interaction.interaction_id == stored.interaction_id
    assert (
        await conversations.check_storage(turn_bytes=10, request_id="turn-2")
    ).interaction is None
