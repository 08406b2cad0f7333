"""A client that reaches no gateway says where it tried and what to check.

Before, both clients raised ``UnavailableError`` with gRPC's own text alone ("failed to
connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50050: Failed to connect to
remote host: Connection refused"): no word of the stack, the address's origin or TLS. Now
the message names the address and the likely cause, and ends with gRPC's text. Real
sockets on loopback, real channels; no stack is needed.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.client import AsyncGensearch, Gensearch, _unreachable, errors
from grpc_health.v1 import health

from tests.support.unreachable import (
    UnavailableHealth,
    closing_address,
    refusing_address,
    serving_health,
)

__all__ = ["closing_address", "refusing_address"]  # the fixtures

# The class a caller catches for every UNAVAILABLE, unchanged.
UNAVAILABLE = errors.UnavailableError
GRPC_TEXT = "(gRPC: failed to connect to all addresses; last error: "


def assert_unreachable(err: errors.GensearchError, address: str, hint: str) -> None:
    assert type(err) is errors.UnavailableError  # the class a caller catches stays
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "UNAVAILABLE"
    assert err.message.startswith(f"cannot reach the gateway at {address}"), err.message
    assert hint in err.message, err.message
    # gRPC's own detail is kept, at the end.
    assert GRPC_TEXT in err.message and err.message.endswith(")"), err.message
    assert str(err).startswith(f"UNAVAILABLE: cannot reach the gateway at {address}")


async def async_health_refusal(address: str, **options: Any) -> errors.UnavailableError:
    """The error the async client's health call raises at ``address``, not retried."""
    async with AsyncGensearch(address, retry=None, **options) as client:
        with pytest.raises(errors.UnavailableError) as caught:
            await client.health()
    return caught.value


def blocking_health_refusal(address: str | None) -> errors.UnavailableError:
    """The error the blocking client's health call raises at ``address`` (None: the
    client's own default or GENSEARCH_ADDRESS), not retried."""
    with Gensearch(address, retry=None) as client, pytest.raises(UNAVAILABLE) as caught:
        client.health()
    return caught.value


async def test_async_client_at_a_closed_port_says_to_start_the_stack(
    refusing_address: str,
) -> None:
    err = await async_health_refusal(refusing_address)
    assert_unreachable(err, refusing_address, "is the stack up (`make run`)")
    assert "connection refused" in err.message.lower()


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
    err = blocking_health_refusal(refusing_address)
    assert_unreachable(err, refusing_address, "is the stack up (`make run`)")


def test_address_from_the_environment_is_named_so(
    refusing_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_ADDRESS", refusing_address)
    err = blocking_health_refusal(None)
    assert_unreachable(err, f"{refusing_address} (from GENSEARCH_ADDRESS)", "make run")


async def test_async_client_at_a_server_that_is_not_grpc_names_tls_and_the_port(
    closing_address: str,
) -> None:
    err = await async_health_refusal(closing_address)
    assert_unreachable(err, closing_address, "credentials=grpc.ssl_channel_credentials()")
    assert "check the port" in err.message


def test_blocking_client_at_a_server_that_is_not_grpc_names_tls_and_the_port(
    closing_address: str,
) -> None:
    err = blocking_health_refusal(closing_address)
    assert_unreachable(err, closing_address, "credentials=grpc.ssl_channel_credentials()")


async def test_tls_client_at_a_plaintext_server_says_to_drop_credentials() -> None:
    async with serving_health(health.aio.HealthServicer()) as address:
        tls = grpc.ssl_channel_credentials()
        err = await async_health_refusal(address, credentials=tls)
    assert_unreachable(err, address, "does not speak TLS: drop `credentials`")


async def test_an_unavailable_sent_by_a_server_keeps_its_own_message() -> None:
    servicer = UnavailableHealth("failed to connect to all addresses of the upstream")
    async with serving_health(servicer) as address:
        err = await async_health_refusal(address)
    assert err.reason == "SOMETHING_DOWN"
    assert err.message == "failed to connect to all addresses of the upstream"


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
