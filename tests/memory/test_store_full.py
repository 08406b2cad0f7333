"""A Redis at its maxmemory (noeviction, as deploy/ runs it) refuses writes: the memory
service answers UNAVAILABLE (STORE_UNAVAILABLE), not INTERNAL, says why in its log, and
writes again once Redis has room."""

from __future__ import annotations

import logging

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.devlaunch.redis_server import RedisProcess
from tests.memory.conftest import ALICE, Memory
from tests.memory.helpers import rpc_error
from tests.support.rpc import error_info


async def test_a_full_redis_is_unavailable_and_recovers(
    redis_server: RedisProcess, memory: Memory, caplog: pytest.LogCaptureFixture
) -> None:
    created = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name="before"), metadata=ALICE
    )
    cid = created.conversation.conversation_id
    assert await memory.redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    await memory.redis.config_set("maxmemory", 1)  # every write is now past it
    try:
        with caplog.at_level(logging.WARNING, logger="gensearch.memory.store"):
            err = await rpc_error(
                memory.stub.CreateInteraction(
                    pb.CreateInteractionRequest(conversation_id=cid, input="q"), metadata=ALICE
                )
            )
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert error_info(err).reason == "STORE_UNAVAILABLE"
        assert "maxmemory" not in (err.details() or "")  # Redis's own words stay in the log
        assert any("maxmemory" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        await memory.redis.config_set("maxmemory", 0)
    answer = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="q"), metadata=ALICE
    )
    assert answer.interaction.interaction_id
