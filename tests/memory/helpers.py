"""Small helpers shared by the memory tests."""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.redis_client import RedisClient
from tests.memory.conftest import Target
from tests.support.processes import descendants
from tests.support.rpc import error_info


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, field: str | None = None
) -> grpc.aio.AioRpcError:
    err = await rpc_error(call)
    assert err.code() == code, (err.code(), err.details())
    info = error_info(err)
    assert info.domain == "gensearch"
    if field is not None:
        assert info.metadata.get("field") == field, (info, err.details())
    return err


async def conversation_with_turns(
    stub: pb_grpc.MemoryServiceStub,
    name: str,
    count: int,
    who: tuple[tuple[str, str], ...],
) -> tuple[str, list[str]]:
    """A new conversation ``name`` of ``who`` with ``count`` turns, written one after the
    other, whose input and request_id are ``name`` and their number (``name0`` first): its
    id and the turns' ids, oldest first."""
    made = await stub.CreateConversation(pb.CreateConversationRequest(name=name), metadata=who)
    cid = made.conversation.conversation_id
    iids = []
    for n in range(count):
        turn = pb.CreateInteractionRequest(
            conversation_id=cid, input=f"{name}{n}", request_id=f"{name}{n}"
        )
        iids.append((await stub.CreateInteraction(turn, metadata=who)).interaction.interaction_id)
    return cid, iids


def redis_pid(data_dir: Path) -> int:
    """The pid of the server this test process started for ``data_dir``: among our own
    descendants (by pid, never by name: the binary may be redis-server or valkey-server),
    the one whose working directory is the data directory (Redis changes into --dir)."""
    wanted = str(data_dir.resolve())
    for pid in descendants(os.getpid()):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == wanted:
                return pid
        except OSError:
            continue
    raise AssertionError(f"no redis process serving {wanted}")


def script_server(target: Target, tag: str) -> tuple[str, int]:
    """Host and port of the server that runs the scripts of the owner of ``tag``: the
    standalone one, or the cluster node holding its slot (tests/support/script_keys.py)."""
    if target.cluster is not None:
        return "127.0.0.1", target.cluster.node_for(tag).port
    url = urlsplit(target.url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


# The conversation hash's fields charged by their length (lua/usage.lua's conversation_bytes).
CHARGED_FIELDS = ("name", "summary", "unfolded_deleted")


async def usage_bytes(client: RedisClient, tag: str, cid: str) -> tuple[int, int, int]:
    """The owner's usage hash's field for ``cid`` and its total, and the bytes measured
    from the conversation's keys (lua/usage.lua: 256 of overhead per conversation and per
    turn; a conversation's name, summary and ids of its last deleted unfolded turns)."""
    conv = f"{tag}:conv:{cid}"
    measured = 256 + sum([await client.hstrlen(conv, f) for f in CHARGED_FIELDS])
    for iid in await client.zrange(f"{conv}:ints", 0, -1):
        key = f"{tag}:int:{iid.decode()}"
        measured += 256 + await client.hstrlen(key, "data") + await client.hstrlen(key, "traces")
    field, total = await client.hmget(f"{tag}:usage", [cid, "total"])
    return int(field), int(total), measured
