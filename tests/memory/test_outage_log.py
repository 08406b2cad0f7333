"""An operator's view of a Redis outage in the memory service's log: one WARNING when it
starts (what redis-py said, without the URL's password), not one per call, and one INFO
line when Redis answers again; at most one warning every 30 s, however it flaps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.common.auth import DEFAULT_TENANT
from services.common.errors import Unavailable
from services.common.redis_client import connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.servicer import MemoryServicer
from services.memory.settings import MemorySettings
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import store_lines

ALICE = Owner(DEFAULT_TENANT, "alice")
CALLS = 5


async def _fail(store: MemoryStore, calls: int) -> None:
    for _ in range(calls):
        with pytest.raises(Unavailable) as caught:
            await store.list_conversations(ALICE, 10, None)
        assert caught.value.reason == "STORE_UNAVAILABLE"


async def test_a_redis_outage_is_one_line_and_its_end_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(tmp_path / "redis")  # not started yet: nothing on its port
    url = server.url.replace("redis://", "redis://:not-the-password-123@", 1)
    store = MemoryStore(connect(url, cluster=False, socket_timeout=1, connect_timeout=1))
    caplog.set_level(logging.INFO, "gensearch.memory.store")
    try:
        await _fail(store, CALLS)
        down = store_lines(caplog, logging.WARNING, "memory store unavailable")
        assert len(down) == 1, [r.getMessage() for r in down]
        assert "GENSEARCH_MEMORY_REDIS_URL" in down[0].getMessage()
        assert "onnect" in getattr(down[0], "error", "")  # what redis-py said, for the operator
        assert "not-the-password-123" not in caplog.text

        await server.start()
        try:
            await store.close()
            # Redis asks for no password: redis-py's AUTH is refused, so the URL without it.
            store = MemoryStore(
                connect(server.url, cluster=False, socket_timeout=1, connect_timeout=1)
            )
            await _fail_then_recover(store, server, caplog)
        finally:
            await server.stop()
    finally:
        await store.close()


async def _fail_then_recover(
    store: MemoryStore, server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    await store.list_conversations(ALICE, 10, None)
    assert not store_lines(caplog, logging.INFO, "memory store reachable again")  # no outage yet
    await server.stop()
    await _fail(store, CALLS)
    assert len(store_lines(caplog, logging.WARNING, "memory store unavailable")) == 1
    await server.start()
    for _ in range(CALLS):
        await store.list_conversations(ALICE, 10, None)
    assert len(store_lines(caplog, logging.INFO, "memory store reachable again")) == 1
    await server.stop()
    # A second outage within 30 s of the first's warning: no second one (a flapping Redis,
    # or a cluster with one node down, is a warning and an "again" line every 30 s at most).
    await _fail(store, CALLS)
    assert len(store_lines(caplog, logging.WARNING, "memory store unavailable")) == 1
    await server.start()


async def test_the_page_token_secret_unreachable_is_not_a_warning_per_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without GENSEARCH_MEMORY_PAGE_TOKEN_SECRET and Redis down since the start, every
    call needing the page-token key asked Redis again and logged 'page-token secret
    unreachable' as a WARNING of its own, beside the store's one line for the outage."""
    server = RedisProcess(tmp_path / "redis")  # never started: nothing on its port
    store = MemoryStore(connect(server.url, cluster=False, socket_timeout=1, connect_timeout=1))
    servicer = MemoryServicer(store, MemorySettings(redis_url=server.url))
    caplog.set_level(logging.INFO, "gensearch.memory")
    try:
        for _ in range(CALLS):
            with pytest.raises(Unavailable):
                await servicer.page_tokens()
    finally:
        await store.close()
    secret = [
        r
        for r in caplog.records
        if r.name == "gensearch.memory" and r.getMessage().startswith("page-token secret")
    ]
    assert len(secret) == 1, [r.getMessage() for r in secret]
    assert "GENSEARCH_MEMORY_PAGE_TOKEN_SECRET" in secret[0].getMessage()
