"""The bytes of replies one tenant has in flight (``max_reply_bytes_in_flight_per_tenant``,
held by the chassis): a noisy tenant whose large replies sit unread gets
RESOURCE_EXHAUSTED / RESPONSE_BYTES_IN_FLIGHT (ErrorInfo naming the setting, RetryInfo) for
one more, while another tenant's call goes through; once its replies are read, its calls
go through again. A real grpc.aio server and channels; replies are held in flight by a
client that does not read its stream (gRPC cannot send a message its client does not take,
so the server holds it until the client reads)."""

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

SERVICE = "gensearch.test.v1.ReplyBytesService"
MIB = 1024 * 1024
BIG = 8 * MIB  # far past what HTTP/2 flow control lets through unread
SETTING = "GENSEARCH_RETRIEVAL_MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT"
NOISY = (("authorization", "Bearer key-noisy"),)
QUIET = (("authorization", "Bearer key-quiet"),)
# Clients take messages of any size: the server's bound is what is under test. And they
# keep HTTP/2's initial 64 KiB stream window, so an unread 8 MiB message stays in the
# server's hands: with BDP probing (grpc's default) a client's transport grows the window
# from what arrives during a ping's round trip, which on a loaded machine is long enough
# to let a whole unread BIG through into the client's buffers (seen: both noisy streams
# sent, held 6 bytes, the bound never reached).
OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.http2.bdp_probe", 0)]


def _ident(b: bytes) -> bytes:
    return b


async def reply(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"r" * MIB


# Calls the Counted handler ran: a call refused before its work never gets there.
ran: list[bytes] = []


async def counted(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    ran.append(request)
    return b"c"


async def huge(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"h" * BIG


async def big_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"s" * BIG
    yield b"end"


def _register(_servicer: object, server: grpc.aio.Server) -> None:
    kw = {"request_deserializer": _ident, "response_serializer": _ident}
    handlers = {
        "Reply": grpc.unary_unary_rpc_method_handler(reply, **kw),
        "Huge": grpc.unary_unary_rpc_method_handler(huge, **kw),
        "Counted": grpc.unary_unary_rpc_method_handler(counted, **kw),
        "BigStream": grpc.unary_stream_rpc_method_handler(big_stream, **kw),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    settings = RetrievalSettings(
        api_keys=SecretStr("ann@noisy/reader:key-noisy,bob@quiet/reader:key-quiet"),
        max_reply_bytes_in_flight_per_tenant=2 * BIG,
    )
    server = GrpcServer(settings, port=0)
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    yield server, channel
    await channel.close()
    await server.stop(0)


async def _held(server: GrpcServer, tenant: str, size: int) -> None:
    """Waits until the server holds ``size`` bytes of the tenant's replies."""
    async with asyncio.timeout(30):  # a hang fails here, not at the suite's timeout
        while (held := server.reply_bytes.held(tenant)) != size:
            assert held <= 2 * BIG
            await asyncio.sleep(0.01)


async def test_a_tenants_unread_replies_refuse_its_next_and_not_another_tenants(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    # Room for half a MiB past two 8 MiB messages: a reply of 1 MiB is refused once built.
    limit = server.reply_bytes.limit = 2 * BIG + MIB // 2
    stream = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)
    unary = channel.unary_unary(f"/{SERVICE}/Reply", _ident, _ident)
    # Two unread 8 MiB messages: the noisy tenant's bound has no room for 1 MiB.
    held = [stream(b"", metadata=NOISY, timeout=60) for _ in range(2)]
    await _held(server, "noisy", 2 * BIG)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(b"", metadata=NOISY, timeout=30)
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info.reason == "RESPONSE_BYTES_IN_FLIGHT" and info.domain == "gensearch"
    assert dict(info.metadata) == {
        "limit_bytes": str(limit),
        "held_bytes": str(2 * BIG),
        "size_bytes": str(MIB),
        "setting": SETTING,
    }
    assert SETTING in (err.details() or "")
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1
    assert server.reply_bytes.held("noisy") == 2 * BIG  # the refused reply was dropped

    # Another tenant is not affected, its own large stream included.
    assert await unary(b"", metadata=QUIET, timeout=30) == b"r" * MIB
    quiet = [m async for m in stream(b"", metadata=QUIET, timeout=60)]
    assert [len(m) for m in quiet] == [BIG, 3]

    # Read, the noisy tenant's replies are sent: its calls go through again.
    for call in held:
        assert [len(m) async for m in call] == [BIG, 3]
    await _held(server, "noisy", 0)
    assert await unary(b"", metadata=NOISY, timeout=30) == b"r" * MIB
    await _held(server, "noisy", 0)  # a unary reply is given back when its call is done


async def test_a_tenants_first_reply_always_goes(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    """A bound below one reply refuses none that comes alone (max_message_bytes bounds it)."""
    server, channel = served
    server.reply_bytes.limit = MIB // 2
    unary = channel.unary_unary(f"/{SERVICE}/Reply", _ident, _ident)
    for _ in range(3):
        assert await unary(b"", metadata=NOISY, timeout=30) == b"r" * MIB
    await _held(server, "noisy", 0)


async def test_a_cancelled_stream_gives_its_bytes_back(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    call = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)(
        b"", metadata=NOISY, timeout=60
    )
    await _held(server, "noisy", BIG)
    call.cancel()
    await _held(server, "noisy", 0)


PROCESS_SETTING = "GENSEARCH_RETRIEVAL_MAX_REPLY_BYTES_IN_FLIGHT"


async def _serve(**limits: int) -> tuple[GrpcServer, grpc.aio.Channel]:
    settings = RetrievalSettings(
        api_keys=SecretStr("ann@noisy/reader:key-noisy,bob@quiet/reader:key-quiet"), **limits
    )
    server = GrpcServer(settings, port=0)
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)


async def test_tenants_within_their_own_bound_together_pass_the_process_bound() -> None:
    # Each tenant may hold 2 x 8 MiB; the server 3 x 8 MiB and half a MiB for all of them.
    total = 3 * BIG + MIB // 2
    server, channel = await _serve(
        max_reply_bytes_in_flight_per_tenant=2 * BIG, max_reply_bytes_in_flight=total
    )
    try:
        stream = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)
        unary = channel.unary_unary(f"/{SERVICE}/Reply", _ident, _ident)
        noisy = [stream(b"", metadata=NOISY, timeout=60) for _ in range(2)]
        await _held(server, "noisy", 2 * BIG)
        quiet = stream(b"", metadata=QUIET, timeout=60)
        await _held(server, "quiet", BIG)

        # The quiet tenant holds half its own bound, but the server has no room for 1 MiB.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(b"", metadata=QUIET, timeout=30)
        err = caught.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(err)
        assert info.reason == "RESPONSE_BYTES_IN_FLIGHT"
        # Nothing says what the server holds: it is mostly the noisy tenant's (the
        # refusal said 3 x 8 MiB, telling the quiet tenant the other was sent 16 MiB).
        assert dict(info.metadata) == {
            "limit_bytes": str(total),
            "size_bytes": str(MIB),
            "setting": PROCESS_SETTING,
        }
        assert PROCESS_SETTING in (err.details() or "")
        assert str(3 * BIG) not in (err.details() or "")
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None
        assert [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert server.reply_bytes.total == 3 * BIG  # the refused reply was dropped

        # Read, the replies are sent: the quiet tenant's calls go through again.
        for call in (*noisy, quiet):
            assert [len(m) async for m in call] == [BIG, 3]
        await _held(server, "noisy", 0)
        await _held(server, "quiet", 0)
        assert await unary(b"", metadata=QUIET, timeout=30) == b"r" * MIB
        await _held(server, "quiet", 0)  # given back when the call is done
        assert server.reply_bytes.total == 0
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_reply_past_the_process_bound_goes_when_none_is_in_flight() -> None:
    server, channel = await _serve(max_reply_bytes_in_flight=1024)
    try:
        stream = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)
        assert [len(m) async for m in stream(b"", metadata=NOISY, timeout=60)] == [BIG, 3]
        unary = channel.unary_unary(f"/{SERVICE}/Reply", _ident, _ident)
        assert await unary(b"", metadata=QUIET, timeout=30) == b"r" * MIB
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_refused_reply_is_freed_when_its_call_ends(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    """A refused reply's bytes go when its call ends, not at the next cyclic garbage
    collection: the refusal's traceback ends in a reference cycle with gRPC's call state,
    and its frames held the reply (and the request), so a burst of refused 16 MB replies
    stayed in the gateway's memory until the collector ran (docs/benchmarks.md, process
    memory). The collector is off here: what is still held after the call is in a cycle."""
    server, channel = served
    server.reply_bytes.limit = 2 * BIG + MIB  # not full: each Huge is built, then refused
    stream = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)
    unary = channel.unary_unary(f"/{SERVICE}/Huge", _ident, _ident)
    held = [stream(b"", metadata=NOISY, timeout=60) for _ in range(2)]
    await _held(server, "noisy", 2 * BIG)

    async def refused_thrice() -> None:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(b"", metadata=NOISY, timeout=30)
            assert error_info(caught.value).reason == "RESPONSE_BYTES_IN_FLIGHT"

    kept = await bytes_kept(refused_thrice)
    assert kept < BIG // 2, f"{kept} bytes kept after three refused {BIG}-byte replies"
    for call in held:
        assert [len(m) async for m in call] == [BIG, 3]


def _refused_before_the_work(
    err: grpc.aio.AioRpcError, limit: int, held: int | None, setting: str
) -> None:
    """``held``: the caller's tenant's bytes; None for the bound of all tenants, whose
    total is never told (it is mostly other tenants')."""
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info.reason == "RESPONSE_BYTES_IN_FLIGHT"
    # No size_bytes: no reply was built.
    expected = {"limit_bytes": str(limit), "setting": setting}
    if held is not None:
        expected["held_bytes"] = str(held)
    assert dict(info.metadata) == expected
    assert setting in (err.details() or "")
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    assert [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]


async def test_a_call_of_a_tenant_at_its_bound_is_refused_before_its_work(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    """A tenant whose replies in flight fill its bound could get no reply but an empty one:
    its next call is refused before the servicer runs (before, the servicer did the work,
    the gateway's calls to the services behind it, a write, and the reply was dropped)."""
    server, channel = served
    stream = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)
    call = channel.unary_unary(f"/{SERVICE}/Counted", _ident, _ident)
    held = [stream(b"", metadata=NOISY, timeout=60) for _ in range(2)]
    await _held(server, "noisy", 2 * BIG)  # the noisy tenant's bound (16 MiB) is full
    ran.clear()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"noisy", metadata=NOISY, timeout=30)
    assert ran == []  # the servicer never ran
    _refused_before_the_work(caught.value, 2 * BIG, 2 * BIG, SETTING)

    assert await call(b"quiet", metadata=QUIET, timeout=30) == b"c"  # another tenant's runs
    assert ran == [b"quiet"]
    for stream_call in held:
        assert [len(m) async for m in stream_call] == [BIG, 3]
    await _held(server, "noisy", 0)
    assert await call(b"noisy", metadata=NOISY, timeout=30) == b"c"
    assert ran == [b"quiet", b"noisy"]


async def test_a_call_while_the_server_is_at_its_bound_is_refused_before_its_work() -> None:
    server, channel = await _serve(
        max_reply_bytes_in_flight_per_tenant=2 * BIG, max_reply_bytes_in_flight=BIG
    )
    try:
        stream = channel.unary_stream(f"/{SERVICE}/BigStream", _ident, _ident)
        call = channel.unary_unary(f"/{SERVICE}/Counted", _ident, _ident)
        held = stream(b"", metadata=NOISY, timeout=60)
        await _held(server, "noisy", BIG)  # the server's bound (8 MiB) is full
        ran.clear()
        # The quiet tenant holds nothing of its own bound, but the server is full.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"quiet", metadata=QUIET, timeout=30)
        assert ran == []
        # The noisy tenant's 8 MiB are its own: neither said nor counted in the refusal.
        _refused_before_the_work(caught.value, BIG, None, PROCESS_SETTING)
        assert str(BIG) not in (caught.value.details() or "").replace(f"at {BIG} bytes", "")
        assert [len(m) async for m in held] == [BIG, 3]
        await _held(server, "noisy", 0)
        assert await call(b"quiet", metadata=QUIET, timeout=30) == b"c"
        assert ran == [b"quiet"]
    finally:
        await channel.close()
        await server.stop(0)
