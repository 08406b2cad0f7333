"""tests/support/processes.py's ``wait_serving``, which every test and benchmark starting a
service process waits on: it must wait for *that* process serving *its* service.

Before, it asked health for "" (the server as a whole) at the address alone. A port picked
for a service (free only until the service binds it, seconds of imports later) could be
taken by another process's gRPC server in between, a parallel test's: that server answered,
the wait passed, the service failed to bind and exited, and the test talked to the wrong
server (the benchmarks' stack failed once in CI so)."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.processes import listening_ports, owned_ports_known, wait_serving

SERVICE = "gensearch.test.v1.Waited"

# A service process: a listening socket that is no gRPC (as the metrics endpoint), then a
# gRPC server on a port of its own choosing whose health knows SERVICE.
SERVING_CHILD = f"""
import asyncio, socket
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set({SERVICE!r}, health_pb2.HealthCheckResponse.SERVING)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def _child(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.DEVNULL
    )


@pytest.fixture
async def squatter() -> AsyncIterator[int]:
    """Another process's gRPC server (here this test's own), SERVING for "" and SERVICE."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    yield port
    await server.stop(0)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@pytest.mark.skipif(not owned_ports_known(), reason="no /proc socket tables here")
async def test_a_port_served_by_another_process_is_not_the_service_serving(
    squatter: int,
) -> None:
    # The service process, not yet listening (importing): the port picked for it is
    # another server's, which answers health for "" and even for the service's name.
    proc = await _child("import time; time.sleep(600)")
    try:
        with pytest.raises(AssertionError, match="not SERVING"):
            await wait_serving(f"127.0.0.1:{squatter}", proc, service=SERVICE, timeout=1.5)
    finally:
        await _stop(proc)


@pytest.mark.skipif(not owned_ports_known(), reason="no /proc socket tables here")
async def test_port_zero_finds_the_port_the_process_serves_its_service_on() -> None:
    proc = await _child(SERVING_CHILD)
    try:
        port = await wait_serving("127.0.0.1:0", proc, service=SERVICE, timeout=60)
        # Its own two listening sockets, the one serving gRPC chosen.
        assert port in listening_ports(proc.pid) and len(listening_ports(proc.pid)) == 2
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # The same process at its known port passes too; a name it does not serve does not.
        assert await wait_serving(f"127.0.0.1:{port}", proc, service=SERVICE) == port
        with pytest.raises(AssertionError, match="not SERVING"):
            await wait_serving(f"127.0.0.1:{port}", proc, service="x.Other", timeout=1)
    finally:
        await _stop(proc)


async def test_a_service_that_exits_fails_the_wait() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await _child("raise SystemExit(3)")
    await proc.wait()
    with pytest.raises(AssertionError, match="exited with 3"):
        await wait_serving(f"127.0.0.1:{port}", proc, service=SERVICE, timeout=5)
