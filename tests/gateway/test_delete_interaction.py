"""DeleteInteraction through the gateway (MemoryService, forwarded with the caller's
identity): the whole stack on loopback, real gRPC, memory on a real Redis standalone and
on a real three-master Redis Cluster, its keyword search index on qdrant-edge."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from tests.gateway.conftest import Stack, StackFactory
from tests.support.redis_cluster import LocalCluster
from tests.support.rpc import error_info

KEYS = ",".join(
    [
        "rita@acme/reader:key-rita-acme",
        "bob@globex/admin:key-bob-globex",
        "rita@globex/admin:key-rita-globex",
    ]
)
Who = tuple[tuple[str, str], ...]


def key(name: str) -> Who:
    return (("authorization", f"Bearer key-{name}"),)


# A reader: every role may keep, change and delete its own turns (as UpdateInteraction).
RITA, BOB, RITA_OF_GLOBEX = key("rita-acme"), key("bob-globex"), key("rita-globex")


def _memory(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {
        "search_index": "keyword",
        "data_dir": tmp_path / "memory",
        "search_retry_seconds": 0.2,
        **more,
    }


async def test_delete_interaction_through_the_gateway(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    await _deletes(await stack_factory(shared={"api_keys": KEYS}, memory=_memory(tmp_path)))


async def test_delete_interaction_through_the_gateway_on_a_cluster(
    stack_factory: StackFactory, tmp_path: Path, cluster: LocalCluster
) -> None:
    memory = _memory(tmp_path, redis_url=cluster.url, redis_cluster=True)
    await _deletes(await stack_factory(shared={"api_keys": KEYS}, memory=memory))


async def _turn(stack: Stack, cid: str, text: str) -> str:
    made = await stack.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=cid, input=text, response="noted"),
        metadata=RITA,
    )
    return made.interaction.interaction_id


async def _search(stack: Stack, query: str) -> list[str]:
    found = await stack.memory.SearchInteractions(
        mem_pb.SearchInteractionsRequest(query=query), metadata=RITA
    )
    return [hit.interaction.interaction_id for hit in found.hits]


async def _used(stack: Stack) -> int:
    return (await stack.memory.CheckStorage(mem_pb.CheckStorageRequest(), metadata=RITA)).used_bytes


async def _not_found(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    info = error_info(err)
    assert info.reason == "INTERACTION_NOT_FOUND"
    assert info.metadata["field"] == "interaction_id"
    return err


async def _deletes(stack: Stack) -> None:
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=RITA)
    cid = made.conversation.conversation_id
    kept = await _turn(stack, cid, "lighthouse keepers")
    before = await _used(stack)
    doomed = await _turn(stack, cid, "lighthouse lenses")
    for _ in range(1200):
        if set(await _search(stack, "lighthouse")) == {kept, doomed}:
            break
        await asyncio.sleep(0.05)
    assert set(await _search(stack, "lighthouse")) == {kept, doomed}
    assert await _used(stack) > before

    # Another tenant's user, and the same user name in another tenant: NOT_FOUND, as for a
    # missing turn, and the turn is still there.
    for other in (BOB, RITA_OF_GLOBEX):
        await _not_found(
            stack.memory.DeleteInteraction(
                mem_pb.DeleteInteractionRequest(interaction_id=doomed), metadata=other
            )
        )
    await stack.memory.GetInteraction(
        mem_pb.GetInteractionRequest(interaction_id=doomed), metadata=RITA
    )

    await stack.memory.DeleteInteraction(
        mem_pb.DeleteInteractionRequest(interaction_id=doomed), metadata=RITA
    )

    await _not_found(
        stack.memory.GetInteraction(
            mem_pb.GetInteractionRequest(interaction_id=doomed), metadata=RITA
        )
    )
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid), metadata=RITA
    )
    assert [i.interaction_id for i in listed.interactions] == [kept]
    # The turn's bytes are freed; its id stays with the conversation, charged to its owner,
    # until a summary covers it (unfolded_deleted: a fold running meanwhile must not write
    # the deleted turn into the summary; docs/memory.md).
    assert await _used(stack) == before + len(doomed)
    assert await _search(stack, "lighthouse") == [kept]
    # A retry after success (the gateway does not retry it on its own): NOT_FOUND.
    await _not_found(
        stack.memory.DeleteInteraction(
            mem_pb.DeleteInteractionRequest(interaction_id=doomed), metadata=RITA
        )
    )
