"""Fixtures shared by every test: real Redis servers on free ports, settings, data dirs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.common import logs
from services.devlaunch.redis_server import RedisProcess
from tests.support.otlp_collector import collector_fixture  # noqa: F401  (`collector`)
from tests.support.redis_cluster import LocalCluster
from tests.support.spans import spans_fixture  # noqa: F401  (the `spans` fixture)

# Model weights come from packages on disk, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_caller_keys_from_another_test() -> Iterator[None]:
    """Each test starts with no caller's key hidden in its context: a synchronous test that
    hides one (logs.hide_in_this_call) sets it in the main thread's context, which every
    later test (and the tasks of an async one) would otherwise inherit."""
    token = logs._call_secrets.set(None)
    yield
    logs._call_secrets.reset(token)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """A real Redis-protocol server on a free loopback port, AOF in a temp dir."""
    server = RedisProcess(tmp_path / "redis", appendfsync="always")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def own_cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A 3-node Redis Cluster of this test's own, for tests that kill a node or move slots,
    which the shared session cluster must not see."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()
