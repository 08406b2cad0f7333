"""A client that reaches no gateway says where it tried and what to check.

Before, both clients raised ``UnavailableError`` with gRPC's own text alone ("failed to
connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50050: Failed to connect to
remote host: Connection refused"): no word of the stack, the address's origin or TLS. Now
the message names the address and the likely cause, and ends with gRPC's text. Real
sockets on loopback, real channels; no stack is needed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import grpc
import pytest
from gensearch.client import AsyncGensearch, Gensearch, _unreachable, errors
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

# The class a caller catches for every UNAVAILABLE, unchanged.
UNAVAILABLE = errors.UnavailableError
GRPC_TEXT = "(gRPC: failed to connect to all addresses; last error: "


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


def assert_unreachable(err: errors.GensearchError, address: str, hint: str) -> None:
    assert type(err) is errors.UnavailableError  # the class a caller catches stays
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "UNAVAILABLE"
    assert err.message.startswith(f"cannot reach the gateway at {address}"), err.message
    assert hint in err.message, err.message
    # gRPC's own detail is kept, at the end.
    assert GRPC_TEXT in err.message and err.message.endswith(")"), err.message
    assert str(err).startswith(f"UNAVAILABLE: cannot reach the gateway at {address}")


async def test_async_client_at_a_closed_port_says_to_start_the_stack(
    refusing_address: str,
) -> None:
    async with AsyncGensearch(refusing_address, retry=None) as client:
        with pytest.raises(errors.UnavailableError) as caught:
            await client.health()
    assert_unreachable(caught.value, refusing_address, "is the stack up (`make run`)")
    assert "connection refused" in caught.value.message.lower()


async def test_a_retried_read_at_a_closed_port_ends_with_the_same_message(
    refusing_address: str,
) -> None:
    # The default RetryPolicy retries reads on UNAVAILABLE; the last attempt's error is
    # the one explained.
    async with AsyncGensearch(refusing_address) as client:
        with pytest.raises(errors.UnavailableError) as caught:
            await client.collections.list()
    assert_unreachable(caught.value, refusing_address, "`make run`")


def test_blocking_client_at_a_closed_port_says_to_start_the_stack(refusing_address: str) -> None:
    with Gensearch(refusing_address, retry=None) as client, pytest.raises(UNAVAILABLE) as caught:
        client.health()
    assert_unreachable(caught.value, refusing_address, "is the stack up (`make run`)")


def test_address_from_the_environment_is_named_so(
    refusing_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_ADDRESS", refusing_address)
    with Gensearch(retry=None) as client, pytest.raises(UNAVAILABLE) as caught:
        client.health()
    assert_unreachable(caught.value, f"{refusing_address} (from GENSEARCH_ADDRESS)", "make run")


async def test_async_client_at_a_server_that_is_not_grpc_names_tls_and_the_port(
    closing_address: str,
) -> None:
    async with AsyncGensearch(closing_address, retry=None) as client:
        with pytest.raises(errors.UnavailableError) as caught:
            await client.health()
    assert_unreachable(caught.value, closing_address, "credentials=grpc.ssl_channel_credentials()")
    assert "check the port" in caught.value.message


def test_blocking_client_at_a_server_that_is_not_grpc_names_tls_and_the_port(
    closing_address: str,
) -> None:
    with Gensearch(closing_address, retry=None) as client, pytest.raises(UNAVAILABLE) as caught:
        client.health()
    assert_unreachable(caught.value, closing_address, "credentials=grpc.ssl_channel_credentials()")


async def test_tls_client_at_a_plaintext_server_says_to_drop_credentials() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        tls = grpc.ssl_channel_credentials()
        async with AsyncGensearch(address, retry=None, credentials=tls) as client:
            with pytest.raises(errors.UnavailableError) as caught:
                await client.health()
    finally:
        await server.stop(0)
    assert_unreachable(caught.value, address, "does not speak TLS: drop `credentials`")


class _UnavailableHealth(health_pb2_grpc.HealthServicer):
    """A server answering UNAVAILABLE itself, with ErrorInfo, in words that look like a
    failed connection."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="SOMETHING_DOWN", domain="gensearch"))
        status = status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message="failed to connect to all addresses of the upstream",
            details=[detail],
        )
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")


async def test_an_unavailable_sent_by_a_server_keeps_its_own_message() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_UnavailableHealth(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        async with AsyncGensearch(address, retry=None) as client:
            with pytest.raises(errors.UnavailableError) as caught:
                await client.health()
    finally:
        await server.stop(0)
    assert caught.value.reason == "SOMETHING_DOWN"
    assert caught.value.message == "failed to connect to all addresses of the upstream"


def test_the_default_address_and_an_unresolved_host_are_named() -> None:
    # No real call: a stack may be serving the default address on this machine, and a
    # name lookup depends on the machine's DNS. gRPC's text as its resolver words it.
    detail = "errors resolving gatewy:50050: [field:hostname lookup error:Domain name not found]"
    message = _unreachable.explain(detail, _unreachable.Target("gatewy:50050", "default", False))
    assert message == (
        "cannot reach the gateway at gatewy:50050 (the default: pass `address` or set "
        f"GENSEARCH_ADDRESS): its host name does not resolve: check the address (gRPC: {detail})"
    )


def test_a_stream_cut_mid_way_is_not_taken_for_a_failed_connection() -> None:
    # A gateway that went away mid-call: the connection had been made (docs: "When the
    # gateway goes away"), so gRPC's text stays as it is.
    target = _unreachable.Target("127.0.0.1:50050", "address", False)
    assert _unreachable.explain("Stream removed (Socket closed)", target) is None
