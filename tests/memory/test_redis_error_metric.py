"""``gensearch_redis_errors_total``: a failing Redis is counted, by what it served and the
kind of failure (fixed label sets), not only logged (a real memory service, a real Redis
stopped under it)."""

from __future__ import annotations

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    OutOfMemoryError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import redis_errors
from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from tests.memory.conftest import ALICE, make_settings
from tests.memory.helpers import expect_error


def _count(store: str, kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "gensearch_redis_errors_total", {"store": store, "kind": kind}
    )
    return value or 0.0


async def test_a_memory_call_redis_failed_is_counted(redis_server: RedisProcess) -> None:
    await redis_server.stop()
    before = _count("memory", "connection")
    server = await build_server(make_settings(redis_server.url), port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            await expect_error(
                stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE),
                grpc.StatusCode.UNAVAILABLE,
            )
    finally:
        await server.stop(0)
    assert _count("memory", "connection") > before


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (RedisConnectionError("Error 111 connecting to 10.0.0.7:6379"), "connection"),
        (BusyLoadingError("LOADING"), "connection"),
        (ConnectionRefusedError(), "connection"),
        (RedisTimeoutError("Timeout reading from socket"), "timeout"),
        (TimeoutError(), "timeout"),
        (ClusterDownError("CLUSTERDOWN"), "cluster"),
        (MovedError("3999 127.0.0.1:6381"), "cluster"),
        (OutOfMemoryError("OOM command not allowed"), "refused"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "refused"),
        (ResponseError("ERR user script:1: tenant acme-secret-project"), "other"),
    ],
)
def test_the_kind_label_is_from_a_fixed_set(err: BaseException, kind: str) -> None:
    # Never the error's text: it names hosts, keys and script lines (a series each).
    assert redis_errors.kind(err) == kind
    assert kind in redis_errors.KINDS
