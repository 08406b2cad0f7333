"""IPv6 hosts: every address gensearch joins from a host and a port puts an IPv6 literal
in brackets (services/common/hostport.py); ``::1:50051`` is no address gRPC or a URL
parser can use."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.hostport import join_host_port
from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from services.devlaunch.redis_server import RedisProcess
from tests.support.network import has_ipv6_loopback

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1:50051"),
        ("memory.svc", "memory.svc:50051"),
        ("::1", "[::1]:50051"),
        ("::", "[::]:50051"),
        ("fe80::1%eth0", "[fe80::1%eth0]:50051"),
        ("[::1]", "[::1]:50051"),  # already in brackets: kept
    ],
)
def test_join_host_port(host: str, address: str) -> None:
    assert join_host_port(host, 50051) == address


@needs_ipv6
async def test_a_service_bound_to_ipv6_loopback_serves_there() -> None:
    # The bind address was "::1:0": gRPC could not bind it ("could not bind ::1:0").
    server = GrpcServer(CommonSettings(), port=0, metrics_port=0, host="::1")
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(join_host_port("::1", port)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # The metrics endpoint listens on the same host.
        assert server.metrics_port
        url = f"http://{join_host_port('::1', server.metrics_port)}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            assert answer.status == 200
    finally:
        await server.stop(0)


@needs_ipv6
async def test_a_bracketed_ipv6_host_setting_serves_grpc_and_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GENSEARCH_HOST=[::1]: gRPC bound it, then the metrics server stopped the service
    # with a traceback (socket.gaierror): it takes no brackets. The setting is kept bare.
    monkeypatch.setenv("GENSEARCH_HOST", "[::1]")
    settings = CommonSettings()
    assert settings.host == "::1"
    server = GrpcServer(settings, port=0, metrics_port=0)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(join_host_port("::1", port)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        url = f"http://{join_host_port('::1', server.metrics_port)}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            assert answer.status == 200
    finally:
        await server.stop(0)


@needs_ipv6
async def test_the_dev_redis_on_ipv6_loopback(tmp_path: Path) -> None:
    """The launcher's free port probe was an IPv4 socket (no ``::1`` there) and its URL
    ``redis://::1:PORT/0`` did not parse."""
    server = RedisProcess(tmp_path / "redis", host="::1")
    await server.start()
    try:
        assert server.url.startswith("redis://[::1]:")
        client = aioredis.from_url(server.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        await server.stop()
