"""Idle connections cannot take a service down (issue 12).

An attacker opened ~20,000 TCP connections to the gateway and sent nothing: every one held
a file descriptor until gRPC's 120 s handshake timeout, the process ran out of them, and new
clients' health checks timed out. Here the gateway runs as its own process with a small
soft limit of open files (its hard limit unchanged), so a thousand sockets are enough to
show the attack: the service raises its soft limit to the hard one at start, closes sockets
that never speak HTTP/2 after ``handshake_timeout`` and HTTP/2 connections without calls
after ``max_connection_idle``, and health keeps answering throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from services.devlaunch.processes import free_port
from tests.support.processes import wait_serving

SOFT_FILE_LIMIT = 256
IDLE_SOCKETS = 1000
# The client preface of HTTP/2 and an empty SETTINGS frame: a connection that opened
# HTTP/2 properly and then makes no call.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _low_soft_limit() -> None:  # runs in the child, before exec
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_FILE_LIMIT, hard))


@pytest.fixture
async def gateway() -> AsyncIterator[str]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE_SOCKETS * 2 + 100:
        pytest.skip(f"the hard limit of open files ({hard}) is too low for this test")
    port = free_port()
    nowhere = f"127.0.0.1:{free_port()}"  # downstream channels connect lazily
    env = {
        **os.environ,
        "GENSEARCH_GATEWAY_PORT": str(port),
        "GENSEARCH_GATEWAY_METRICS_PORT": "0",
        "GENSEARCH_GATEWAY_MEMORY_ADDR": nowhere,
        "GENSEARCH_GATEWAY_RETRIEVAL_ADDR": nowhere,
        "GENSEARCH_GATEWAY_GENERATION_ADDR": nowhere,
        "GENSEARCH_GATEWAY_HANDSHAKE_TIMEOUT": "2",
        "GENSEARCH_GATEWAY_MAX_CONNECTION_IDLE": "2",
        "GENSEARCH_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.gateway",
        env=env,
        preexec_fn=_low_soft_limit,
        stdout=asyncio.subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        await wait_serving(address, proc, service="gensearch.gateway.v1.GatewayService", timeout=60)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 15)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _open_idle(address: str, count: int, hello: bytes = b"") -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if hello:
            sock.sendall(hello)
        sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes ``sock`` within ``within`` seconds (whatever it sends
    first, e.g. its SETTINGS and a GOAWAY)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


async def _health(address: str, timeout: float) -> None:
    """A fresh client gets a SERVING answer within ``timeout`` (a new connection each
    time); DEADLINE_EXCEEDED otherwise."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_answers_while_idle_sockets_pile_up(gateway: str) -> None:
    sockets = await asyncio.to_thread(_open_idle, gateway, IDLE_SOCKETS)
    try:
        # Before the fix the gateway ran out of descriptors at its soft limit (256): this
        # check then waited for gRPC's 120 s handshake timeout, past this deadline (the
        # deadline is the bound; its margin is for a loaded machine).
        await _health(gateway, timeout=30)
        # The silent sockets are closed after handshake_timeout (2 s here), freeing their
        # descriptors (before the fix: 120 s).
        closed = await asyncio.to_thread(
            lambda: sum(_closed_by_server(s, within=10) for s in sockets[:20])
        )
        assert closed == 20
    finally:
        for sock in sockets:
            sock.close()
    await _health(gateway, timeout=30)


async def test_idle_http2_connections_are_closed(gateway: str) -> None:
    sockets = await asyncio.to_thread(_open_idle, gateway, 20, HTTP2_HELLO)
    try:
        # max_connection_idle is 2 s here: GOAWAY, then the connection closes.
        closed = await asyncio.to_thread(
            lambda: sum(_closed_by_server(s, within=10) for s in sockets)
        )
        assert closed == len(sockets)
    finally:
        for sock in sockets:
            sock.close()


async def test_connections_past_max_connections_are_closed_and_the_open_ones_served() -> None:
    """``max_connections``: a client holding the server's connections (here one gRPC
    channel and one HTTP/2 connection that makes no call) leaves a new client's connection
    closed by gRPC as it is accepted (UNAVAILABLE, no ErrorInfo: no call was made), while
    the open channel is still served; once a connection closes, a new client gets in.
    Before, connections were unbounded: each held a descriptor and ~17 KB even idle."""
    settings = CommonSettings(max_connections=2)
    server = GrpcServer(settings, port=0)
    address = f"127.0.0.1:{await server.start()}"
    held = _own_connection(address)
    idle: list[socket.socket] = []
    try:
        await _health(address, timeout=10)  # a client that came and went: nothing held
        await _check(held)
        idle = _open_idle(address, 1, HTTP2_HELLO)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with _own_connection(address) as late:
                await _check(late)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await _check(held)  # the connections already open are served as before
        idle.pop().close()
        async with _own_connection(address) as later:
            await _check(later, ready=True)  # in once the server saw the close
    finally:
        for sock in idle:
            sock.close()
        await held.close()
        await server.stop(0)


async def _check(channel: grpc.aio.Channel, ready: bool = False) -> None:
    """A health check on ``channel``; with ``ready``, waiting (20 s at most) for a
    connection gRPC closed at once to be let in."""
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=20 if ready else 5, wait_for_ready=ready
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _own_connection(address: str) -> grpc.aio.Channel:
    """A channel with a connection of its own: channels of one process to one address
    otherwise share one (gRPC's global subchannel pool), and a "new client" would ride on
    the held one's connection."""
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
