"""GENSEARCH_MAX_CONNECTION_AGE: the server sends GOAWAY after that many seconds, so a
client balancing over DNS (the gateway's dns:///generation-headless target) reconnects,
resolves again and finds replicas the autoscaler added. Real server, real channel."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import GrpcServer
from services.common.settings import CommonSettings


async def _state_after_call(max_connection_age: float, wait: float) -> grpc.ChannelConnectivity:
    settings = CommonSettings(max_connection_age=max_connection_age)
    server = GrpcServer(settings, port=0, host="127.0.0.1")
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while loop.time() < deadline:
                if channel.get_state() != grpc.ChannelConnectivity.READY:
                    break
                await asyncio.sleep(0.05)
            state = channel.get_state()
            # The channel reconnects on the next call and keeps working.
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            return state
    finally:
        await server.stop(0)


async def test_connections_are_recycled_after_max_age() -> None:
    state = await _state_after_call(0.3, wait=5.0)
    assert state != grpc.ChannelConnectivity.READY


async def test_connections_live_on_without_max_age() -> None:
    assert CommonSettings().max_connection_age == 0
    state = await _state_after_call(0, wait=1.0)
    assert state == grpc.ChannelConnectivity.READY
