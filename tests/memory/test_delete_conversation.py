"""DeleteConversation in batches of declared keys (store.delete_conversation): a long
conversation takes several script runs, a call that failed between them is finished by a
retry, and a turn written between the read and the delete is deleted too."""

from __future__ import annotations

from typing import Any

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT
from services.common.errors import NotFound, Unavailable
from services.memory import store as store_module
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import Memory

ALICE = Owner(DEFAULT_TENANT, "alice")


async def _conversation(store: MemoryStore, turns: int, name: str = "d") -> str:
    cid = (await store.create_conversation(ALICE, name)).conversation_id
    for n in range(turns):
        await store.create_interaction(ALICE, cid, pb.Interaction(input=f"t{n}"), f"{name}{n}")
    return cid


async def _left(memory: Memory, store: MemoryStore, cid: str) -> list[str]:
    """The owner's keys of a conversation, its turns or their request ids."""
    tag = store.tag(ALICE)
    found = [
        bytes(key).decode() async for key in memory.redis.scan_iter(match=f"{tag}:*", count=1000)
    ]
    return sorted(k for k in found if cid in k or ":int:" in k or ":req:" in k)


async def test_a_conversation_longer_than_a_batch_is_deleted_whole(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    store = MemoryStore(memory.redis)
    keep = await _conversation(store, 1, "keep")
    cid = await _conversation(store, 10)
    runs: list[object] = []
    script = store._delete_conversation

    async def counted(**kwargs: Any) -> object:
        runs.append(await script(**kwargs))
        return runs[-1]

    store._delete_conversation = counted  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)
    assert runs == [3, 3, 1]  # 4 + 4 + 2 turns
    left = await _left(memory, store, cid)
    assert [k for k in left if cid in k] == []
    assert len([k for k in left if ":int:" in k]) == 1  # keep's only
    assert len([k for k in left if ":req:" in k]) == 1
    with pytest.raises(NotFound):
        await store.delete_conversation(ALICE, cid)
    usage = await store.check_storage(ALICE, "", 0)
    assert usage.conversations == 1
    await store.delete_conversation(ALICE, keep)
    assert await _left(memory, store, keep) == []


async def test_a_delete_that_failed_after_its_first_run_is_finished_by_a_retry(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DELETE_BATCH", 4)
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 10)
    script = store._delete_conversation

    async def then_fail(**kwargs: Any) -> object:
        await script(**kwargs)  # the real run, on the real Redis; its answer lost
        raise Unavailable("lost", reason="STORE_UNAVAILABLE")

    store._delete_conversation = then_fail  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await store.delete_conversation(ALICE, cid)
    # Gone for every reader from the first run on, though turns are still stored.
    with pytest.raises(NotFound):
        await store.get_conversation(ALICE, cid)
    assert (await store.list_conversations(ALICE, 10, None)).items == []
    assert len([k for k in await _left(memory, store, cid) if ":int:" in k]) == 6
    store._delete_conversation = script  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)  # OK, not NOT_FOUND: it finished it
    assert await _left(memory, store, cid) == []
    with pytest.raises(NotFound):
        await store.delete_conversation(ALICE, cid)


async def test_a_turn_written_between_the_read_and_the_delete_is_deleted_too(
    memory: Memory,
) -> None:
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 3)
    read = store._turn_requests
    written: list[str] = []

    async def then_write(**kwargs: Any) -> object:
        out = await read(**kwargs)
        if not written:
            made = await store.create_interaction(ALICE, cid, pb.Interaction(input="x"), "late")
            written.append(made.interaction_id)
        return out

    store._turn_requests = then_write  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)
    assert written
    assert await _left(memory, store, cid) == []


async def test_a_writer_that_writes_after_every_read_cannot_hold_the_delete_off(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run removes the conversation whatever was written since the read (no
    compare-and-retry a busy conversation could starve): later writes find it gone."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 2)
    store = MemoryStore(memory.redis)
    cid = await _conversation(store, 3)
    read = store._turn_requests
    answers: list[str] = []

    async def then_write(**kwargs: Any) -> object:
        out = await read(**kwargs)
        try:
            await store.create_interaction(
                ALICE, cid, pb.Interaction(input="x"), f"w{len(answers)}"
            )
            answers.append("written")
        except NotFound:
            answers.append("gone")
        return out

    store._turn_requests = then_write  # type: ignore[assignment]
    await store.delete_conversation(ALICE, cid)
    assert answers[0] == "written"
    assert answers[1:] and set(answers[1:]) == {"gone"}
    assert await _left(memory, store, cid) == []
    assert (await store.list_conversations(ALICE, 10, None)).items == []
