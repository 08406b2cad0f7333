"""An operator's view of a Qdrant outage in the retrieval service's log: one WARNING when it
starts (unreachable, or answering errors such as a wrong API key's 401), not one per call
(before, none at all after start: each call answered UNAVAILABLE with nothing but its
access line), and one INFO line when Qdrant answers again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from qdrant_client import AsyncQdrantClient

from services.common.errors import Unavailable
from services.devlaunch.processes import free_port
from services.retrieval.server_store import ServerStore

CALLS = 5
LOGGER = "gensearch.retrieval.qdrant"


class FakeQdrant:
    """The two GET endpoints ServerStore.schemas needs; ``up`` False answers 503."""

    def __init__(self) -> None:
        self.up = True
        self.port = 0

    async def _root(self, _: web.Request) -> web.Response:
        return web.json_response({"title": "qdrant", "version": "1.15.0"})

    async def _collections(self, _: web.Request) -> web.Response:
        if not self.up:
            return web.json_response({"status": {"error": "down"}}, status=503)
        return web.json_response({"result": {"collections": []}, "status": "ok", "time": 0.0})


@pytest.fixture
async def fake_qdrant() -> AsyncIterator[FakeQdrant]:
    fake = FakeQdrant()
    app = web.Application()
    app.router.add_get("/", fake._root)
    app.router.add_get("/collections", fake._collections)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    fake.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", fake.port).start()
    try:
        yield fake
    finally:
        await runner.cleanup()


def _lines(caplog: pytest.LogCaptureFixture, level: int, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and r.getMessage().startswith(start)
    ]


async def _fail(store: ServerStore, calls: int) -> None:
    for _ in range(calls):
        with pytest.raises(Unavailable):
            await store.schemas()


async def test_an_unreachable_qdrant_is_one_line_not_one_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ServerStore(AsyncQdrantClient(url=f"http://127.0.0.1:{free_port()}", timeout=1))
    caplog.set_level(logging.INFO, LOGGER)
    try:
        await _fail(store, CALLS)
    finally:
        await store.close()
    down = _lines(caplog, logging.WARNING, "vector store unavailable")
    assert len(down) == 1, down
    assert "GENSEARCH_RETRIEVAL_QDRANT_URL" in down[0]


async def test_a_failing_qdrant_is_one_line_and_its_return_another(
    fake_qdrant: FakeQdrant, caplog: pytest.LogCaptureFixture
) -> None:
    store = ServerStore(
        AsyncQdrantClient(url=f"http://127.0.0.1:{fake_qdrant.port}", check_compatibility=False)
    )
    caplog.set_level(logging.INFO, LOGGER)
    try:
        assert await store.schemas() == []
        assert not _lines(caplog, logging.INFO, "vector store reachable again")
        fake_qdrant.up = False
        await _fail(store, CALLS)
        assert len(_lines(caplog, logging.WARNING, "vector store unavailable")) == 1
        fake_qdrant.up = True
        for _ in range(CALLS):
            assert await store.schemas() == []
        assert len(_lines(caplog, logging.INFO, "vector store reachable again")) == 1
        fake_qdrant.up = False
        await _fail(store, CALLS)  # within 30 s of the first warning: at most one per 30 s
        assert len(_lines(caplog, logging.WARNING, "vector store unavailable")) == 1
    finally:
        await store.close()
