"""Loopback places where a client reaches no gateway, shared by the Python and Go
clients' tests: a port nothing listens on, a TCP server that closes each connection at
once, and a gRPC server that answers UNAVAILABLE itself (with ErrorInfo)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """A loopback port bound and never listened on: every connection is refused, and no
    other program can take the port while the test runs."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{bound.getsockname()[1]}"


@pytest.fixture
def closing_address() -> Iterator[str]:
    """A plain TCP server (no gRPC, no TLS) that closes each connection at once. On a
    thread: the blocking client's call holds the test's thread while it waits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept_and_close() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(5)


class UnavailableHealth(health_pb2_grpc.HealthServicer):
    """A server answering UNAVAILABLE itself, with ErrorInfo reason SOMETHING_DOWN, in
    ``message``: words that look like a failed connection to a client's transport."""

    def __init__(self, message: str) -> None:
        self._message = message

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="SOMETHING_DOWN", domain="gensearch"))
        status = status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message=self._message, details=[detail]
        )
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")


@contextlib.asynccontextmanager
async def serving_health(servicer: health_pb2_grpc.HealthServicer) -> AsyncIterator[str]:
    """A plaintext gRPC server on loopback with ``servicer`` as its health service; yields
    its address and stops it on the way out."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield address
    finally:
        await server.stop(0)
