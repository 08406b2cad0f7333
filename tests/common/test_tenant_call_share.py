"""One tenant's share of a server's call slots (``max_concurrent_rpcs_per_tenant``): a
tenant flooding a server with calls that take their time gets RESOURCE_EXHAUSTED naming
the share's setting once it holds its share, while another tenant's calls, made during
the flood, are all answered. Before the share, the flood took every slot and the other
tenant's calls were refused ``MAX_CONCURRENT_RPCS``. A real grpc.aio server and channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from pydantic import SecretStr

from services.common.server import GrpcServer
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from tests.support.rpc import error_info
from tests.support.waiting import until

SERVICE = "gensearch.test.v1.ShareService"
KEYS = "ann@noisy/reader:key-noisy,bob@quiet/reader:key-quiet"
NOISY = (("authorization", "Bearer key-noisy"),)
QUIET = (("authorization", "Bearer key-quiet"),)
LIMIT, SHARE = 6, 3
SETTING = "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS_PER_TENANT"


def _ident(b: bytes) -> bytes:
    return b


class Gate:
    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.held = 0

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.held += 1
        await self.open.wait()
        return b"held"

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        yield b"first"
        await self.hold(request, context)


async def quick(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"quick"


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel, Gate]]:
    gate = Gate()

    def register(_servicer: object, server: grpc.aio.Server) -> None:
        kw = {"request_deserializer": _ident, "response_serializer": _ident}
        handlers = {
            "Hold": grpc.unary_unary_rpc_method_handler(gate.hold, **kw),
            "Quick": grpc.unary_unary_rpc_method_handler(quick, **kw),
            "HoldStream": grpc.unary_stream_rpc_method_handler(gate.stream, **kw),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    # The gateway's own settings class: the share is its, the refusal names its variable.
    settings = GatewaySettings(
        api_keys=SecretStr(KEYS),
        max_concurrent_rpcs=LIMIT,
        max_concurrent_rpcs_per_tenant=SHARE,
        metrics_port=None,
    )
    server = GrpcServer(settings, port=0)
    server.add_service(register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel, gate
    gate.open.set()
    await channel.close()
    await server.stop(0)


def _unary(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}", _ident, _ident)


async def _outcome(call: asyncio.Future[bytes]) -> bytes | grpc.aio.AioRpcError:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        return err


async def _flood(channel: grpc.aio.Channel, gate: Gate) -> list[asyncio.Future[bytes]]:
    """Three times the server's whole limit of the noisy tenant's calls, each held at the
    gate once admitted; returns once the share is held and every other call has ended."""
    flood = [
        asyncio.ensure_future(_unary(channel, "Hold")(b"", metadata=NOISY, timeout=30))
        for _ in range(3 * LIMIT)
    ]

    async def settled() -> bool:
        return gate.held == SHARE and sum(call.done() for call in flood) == len(flood) - SHARE

    await until(settled, "the flood settled: its share held, the rest answered")
    return flood


def _refused_by_the_share(err: BaseException | None) -> None:
    assert isinstance(err, grpc.aio.AioRpcError), err
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    info = error_info(err)
    assert info.reason == "TOO_MANY_CONCURRENT_RPCS" and info.domain == "gensearch"
    assert dict(info.metadata) == {"limit": str(SHARE), "setting": SETTING}
    assert SETTING in (err.details() or "")


async def test_a_flooding_tenant_gets_its_share_and_the_other_tenant_is_answered(
    served: tuple[GrpcServer, grpc.aio.Channel, Gate],
) -> None:
    server, channel, gate = served
    flood = await _flood(channel, gate)
    for call in flood:
        if call.done():
            _refused_by_the_share(call.exception())
    assert server.call_slots.held_by("noisy") == SHARE
    # During the flood, every slot but the flooder's share answers the other tenant.
    quiet = [
        _unary(channel, "Quick")(b"", metadata=QUIET, timeout=10) for _ in range(LIMIT - SHARE)
    ]
    assert await asyncio.gather(*quiet) == [b"quick"] * (LIMIT - SHARE)
    gate.open.set()
    held = [await call for call in flood if not call.done() or call.exception() is None]
    assert held == [b"held"] * SHARE
    # Every slot given back: the flooder's share is whole again.
    assert server.call_slots.in_flight == 0 and server.call_slots.held_by("noisy") == 0
    assert await _unary(channel, "Quick")(b"", metadata=NOISY, timeout=10) == b"quick"


async def test_streams_count_in_the_share_and_give_it_back_when_cancelled(
    served: tuple[GrpcServer, grpc.aio.Channel, Gate],
) -> None:
    server, channel, _ = served
    stream = channel.unary_stream(f"/{SERVICE}/HoldStream", _ident, _ident)
    streams = [stream(b"", metadata=NOISY, timeout=30) for _ in range(SHARE)]
    for call in streams:
        assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _unary(channel, "Quick")(b"", metadata=NOISY, timeout=10)
    _refused_by_the_share(caught.value)
    assert await _unary(channel, "Quick")(b"", metadata=QUIET, timeout=10) == b"quick"
    for call in streams:
        call.cancel()

    async def given_back() -> bool:
        return server.call_slots.held_by("noisy") == 0 and server.call_slots.in_flight == 0

    await until(given_back, "the cancelled streams gave their slots back")
    assert await _unary(channel, "Quick")(b"", metadata=NOISY, timeout=10) == b"quick"


def test_the_gateway_leaves_room_for_other_tenants_by_default() -> None:
    """A guard: the gateway's share is below its whole (its callers are tenants); the
    services behind it keep none (the gateway's per-hit fan-out is one tenant's)."""
    gateway = GatewaySettings()
    assert 0 < gateway.max_concurrent_rpcs_per_tenant < gateway.max_concurrent_rpcs
    assert GenerationSettings().max_concurrent_rpcs_per_tenant == 0
