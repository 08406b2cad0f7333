"""Health checking and reflection answer bytes that are no request message as our own
methods do: INVALID_ARGUMENT, reason MALFORMED_REQUEST, naming the message type (and the
field, for a string that is not UTF-8), with a google.rpc.ErrorInfo.

Both need no key, so anyone could send them. Before, grpc.aio answered UNKNOWN quoting
protobuf's exception ("Unexpected <class 'google.protobuf.message.DecodeError'>: ...",
no ErrorInfo) and logged an ERROR with a traceback for every such call (found probing the
stack as a generic gRPC client). A real grpc.aio server of the chassis, a real channel
sending raw bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from tests.support.rpc import error_info

# (path, request message type, server streaming, client streaming)
METHODS = [
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest", False, False),
    ("/grpc.health.v1.Health/Watch", "grpc.health.v1.HealthCheckRequest", True, False),
    ("/grpc.health.v1.Health/List", "grpc.health.v1.HealthListRequest", False, False),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflectionRequest",  # v1's name, though parsed as v1alpha's
        True,
        True,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflectionRequest",
        True,
        True,
    ),
]
# A varint cut short, and a length running past the end: no message type parses either.
NEVER_PROTOBUF = [b"\x08\xff", b"\x0a\x10ab"]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer(CommonSettings(), port=0)  # type: ignore[call-arg]
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(0)


async def _refusal(
    channel: grpc.aio.Channel, path: str, data: bytes, server_streaming: bool, streaming: bool
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in channel.stream_stream(path)(iter([data]), timeout=10):
                pass
        elif server_streaming:
            async for _ in channel.unary_stream(path)(data, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(data, timeout=10)
    return caught.value


async def test_bytes_that_are_no_protobuf_are_malformed_request(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    for path, message_type, server_streaming, streaming in METHODS:
        for data in NEVER_PROTOBUF:
            err = await _refusal(channel, path, data, server_streaming, streaming)
            where = (path, data)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, err.details())
            assert "DecodeError" not in (err.details() or ""), where
            info = error_info(err)
            assert info.reason == "MALFORMED_REQUEST", (where, info)
            assert info.metadata["message_type"] == message_type, (where, info)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_a_service_name_that_is_not_utf8_is_named(channel: grpc.aio.Channel) -> None:
    """HealthCheckRequest.service (field 1) holding bytes that are not UTF-8."""
    err = await _refusal(channel, "/grpc.health.v1.Health/Check", b"\x0a\x02\xff\xfe", False, False)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info.reason == "MALFORMED_REQUEST", info
    assert info.metadata["field"] == "service", info


async def test_a_good_request_still_answers(channel: grpc.aio.Channel) -> None:
    reply = await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert reply == b"\x08\x01"  # status: SERVING


async def test_a_service_not_served_is_not_found_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    """The health protocol's NOT_FOUND for a name the server does not serve, now with a
    message naming ``service`` and an ErrorInfo, as every other refusal; before, the
    status had neither (an empty message)."""
    request = b"\x0a\x04nope"  # service: "nope"
    err = await _refusal(channel, "/grpc.health.v1.Health/Check", request, False, False)
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    assert "service" in (err.details() or "") and "nope" in (err.details() or ""), err.details()
    info = error_info(err)
    assert info.reason == "NOT_FOUND", info
    assert info.metadata["field"] == "service", info
