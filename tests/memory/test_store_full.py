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


def _full_lines(caplog: pytest.LogCaptureFixture, level: int, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gensearch.memory.store" and r.levelno == level
        and r.getMessage().startswith(start)
    ]  # fmt: skip


async def test_a_full_redis_is_one_warning_and_its_end_one_info_line(
    redis_server: RedisProcess, memory: Memory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis at its maxmemory was one ERROR per refused call: a full store under load
    buried the log. Now one WARNING per outage (again every 30 s while it lasts, the
    outage helper's pace), none at ERROR, and one INFO line once a write succeeds again:
    not on a read, which a full Redis answers all along."""
    created = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name="before"), metadata=ALICE
    )
    cid = created.conversation.conversation_id
    caplog.set_level(logging.INFO, "gensearch.memory.store")
    await memory.redis.config_set("maxmemory", 1)
    try:
        for _ in range(4):
            err = await rpc_error(
                memory.stub.CreateInteraction(
                    pb.CreateInteractionRequest(conversation_id=cid, input="q"), metadata=ALICE
                )
            )
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        # A read is answered, and ends nothing: writes are still refused.
        await memory.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
        )
        err = await rpc_error(
            memory.stub.CreateInteraction(
                pb.CreateInteractionRequest(conversation_id=cid, input="q"), metadata=ALICE
            )
        )
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    finally:
        await memory.redis.config_set("maxmemory", 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    full = _full_lines(caplog, logging.WARNING, "memory store full")
    assert len(full) == 1, full
    assert "maxmemory" in full[0]
    assert not _full_lines(caplog, logging.INFO, "memory store takes writes again")
    for _ in range(3):
        await memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="q"), metadata=ALICE
        )
    assert len(_full_lines(caplog, logging.INFO, "memory store takes writes again")) == 1
