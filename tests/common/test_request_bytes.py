"""The bytes of requests a server holds for all its calls (``max_request_bytes_in_flight``,
held by the chassis): tenants whose requests are each within every per-call limit, held
together past the bound, get RESOURCE_EXHAUSTED / REQUEST_BYTES_IN_FLIGHT (ErrorInfo
naming the setting, RetryInfo) for one more; a request while none is held always goes; a
client stream holds one message at a time. A real grpc.aio server and channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr

from services.common.server import GrpcServer
from services.retrieval.settings import RetrievalSettings
from tests.support.allocations import bytes_kept
from tests.support.rpc import error_info

SERVICE = "gensearch.test.v1.RequestBytesService"
MIB = 1024 * 1024
SETTING = "GENSEARCH_RETRIEVAL_MAX_REQUEST_BYTES_IN_FLIGHT"
ALICE = (("authorization", "Bearer key-a"),)
BOB = (("authorization", "Bearer key-b"),)


def _ident(b: bytes) -> bytes:
    return b


class Gate:
    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()


GATE = Gate()


async def held(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    GATE.entered.set()
    await GATE.open.wait()
    return str(len(request)).encode()


async def quick(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return str(len(request)).encode()


async def total(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(sum([len(r) async for r in requests])).encode()


def _register(_servicer: object, server: grpc.aio.Server) -> None:
    kw = {"request_deserializer": _ident, "response_serializer": _ident}
    handlers = {
        "Held": grpc.unary_unary_rpc_method_handler(held, **kw),
        "Quick": grpc.unary_unary_rpc_method_handler(quick, **kw),
        "Total": grpc.stream_unary_rpc_method_handler(total, **kw),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    global GATE
    GATE = Gate()
    settings = RetrievalSettings(
        api_keys=SecretStr("ann@a/reader:key-a,bob@b/reader:key-b"),
        max_request_bytes_in_flight=4 * MIB,
    )
    server = GrpcServer(settings, port=0)
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel
    GATE.open.set()
    await channel.close()
    await server.stop(0)


async def _holds(server: GrpcServer, size: int) -> None:
    async with asyncio.timeout(30):  # a hang fails here, not at the suite's timeout
        while (held := server.request_bytes.held) != size:
            assert held >= 0  # never given back twice
            await asyncio.sleep(0.01)


def _assert_refused(err: grpc.aio.AioRpcError, held: int, size: int) -> None:
    """``held``: what the other calls hold, another tenant's: never told (the refusal said
    it to the byte, what another tenant was sending)."""
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info.reason == "REQUEST_BYTES_IN_FLIGHT" and info.domain == "gensearch"
    assert dict(info.metadata) == {
        "limit_bytes": str(4 * MIB),
        "size_bytes": str(size),
        "setting": SETTING,
    }
    assert SETTING in (err.details() or "")
    assert str(held) not in (err.details() or "").replace(f"({size} bytes)", "")
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    assert [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]


async def test_requests_of_two_tenants_held_past_the_bound_refuse_the_later(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    slow = channel.unary_unary(f"/{SERVICE}/Held", _ident, _ident)
    quick_call = channel.unary_unary(f"/{SERVICE}/Quick", _ident, _ident)
    stream = channel.stream_unary(f"/{SERVICE}/Total", _ident, _ident)
    first = asyncio.ensure_future(slow(b"a" * (3 * MIB), metadata=ALICE, timeout=60))
    await GATE.entered.wait()
    await _holds(server, 3 * MIB)

    # Each request is within max_request_bytes (4 MiB); together they pass the bound.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quick_call(b"b" * (2 * MIB), metadata=BOB, timeout=30)
    _assert_refused(caught.value, 3 * MIB, 2 * MIB)
    # A client stream's message is refused the same way.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(iter([b"s" * (2 * MIB)]), metadata=BOB, timeout=30)
    _assert_refused(caught.value, 3 * MIB, 2 * MIB)
    assert server.request_bytes.held == 3 * MIB  # the refused ones hold nothing

    GATE.open.set()
    assert await first == str(3 * MIB).encode()
    await _holds(server, 0)
    assert await quick_call(b"b" * (2 * MIB), metadata=BOB, timeout=30) == str(2 * MIB).encode()
    await _holds(server, 0)


async def test_a_request_goes_when_none_is_held_and_a_stream_holds_one_message(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    settings = server.settings.validated_copy(max_request_bytes_in_flight=1024)
    lone = GrpcServer(settings, port=0)
    lone.add_service(_register, None, SERVICE)
    port = await lone.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as small:
            quick_call = small.unary_unary(f"/{SERVICE}/Quick", _ident, _ident)
            big = b"q" * (3 * MIB)
            assert await quick_call(big, metadata=ALICE, timeout=30) == str(3 * MIB).encode()
    finally:
        await lone.stop(0)
    # Three 3 MiB messages through a 4 MiB bound: each is given back when the next is asked.
    stream = channel.stream_unary(f"/{SERVICE}/Total", _ident, _ident)
    messages = iter([b"m" * (3 * MIB)] * 3)
    assert await stream(messages, metadata=ALICE, timeout=60) == str(9 * MIB).encode()
    await _holds(server, 0)


async def test_a_refused_request_is_freed_when_its_call_ends(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    """A refused request's bytes go when its call ends, not at the next cyclic garbage
    collection (the frames of the refusal's traceback held it, in a cycle with gRPC's call
    state: test_reply_bytes.py has the same for replies). The collector is off here."""
    server, channel = served
    first = asyncio.ensure_future(
        channel.unary_unary(f"/{SERVICE}/Held", _ident, _ident)(
            b"a" * (3 * MIB), metadata=ALICE, timeout=30
        )
    )
    await _holds(server, 3 * MIB)
    quick = channel.unary_unary(f"/{SERVICE}/Quick", _ident, _ident)
    payload = b"b" * (3 * MIB)

    async def refused_thrice() -> None:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await quick(payload, metadata=BOB, timeout=30)
            _assert_refused(caught.value, 3 * MIB, 3 * MIB)

    kept = await bytes_kept(refused_thrice)
    assert kept < MIB, f"{kept} bytes kept after three refused {3 * MIB}-byte requests"
    GATE.open.set()
    assert await first == str(3 * MIB).encode()
