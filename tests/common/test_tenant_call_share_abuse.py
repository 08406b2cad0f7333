"""Abuse of the tenant's share of call slots (``max_concurrent_rpcs_per_tenant``): the
ways a call can end early (refused credentials, deadline cuts, cancelled client streams,
a servicer that fails) give back both the server's slot and the tenant's, and an
identity the gateway forwards is counted in the forwarded tenant's share. A real
grpc.aio server and channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from pydantic import SecretStr

from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from tests.support.rpc import error_info
from tests.support.waiting import until

SERVICE = "gensearch.test.v1.ShareAbuseService"
TOKEN = "internal-token-abuse"
SHARE = 2
SETTING = "GENSEARCH_GENERATION_MAX_CONCURRENT_RPCS_PER_TENANT"


def _ident(b: bytes) -> bytes:
    return b


def _forwarded(tenant: str) -> tuple[tuple[str, str], ...]:
    return (
        ("x-gensearch-internal-token", TOKEN),
        ("x-gensearch-user", "ann"),
        ("x-gensearch-tenant", tenant),
        ("x-gensearch-role", "reader"),
    )


class Gate:
    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.held = 0

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.held += 1
        await self.open.wait()
        return b"held"

    async def upload(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        async for _ in requests:
            self.held += 1
        return b"read"

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("a servicer's own bug")


async def quick(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"quick"


@contextlib.asynccontextmanager
async def _serving(
    settings: CommonSettings,
) -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel, Gate]]:
    gate = Gate()

    def register(_servicer: object, server: grpc.aio.Server) -> None:
        kw = {"request_deserializer": _ident, "response_serializer": _ident}
        handlers = {
            "Hold": grpc.unary_unary_rpc_method_handler(gate.hold, **kw),
            "Quick": grpc.unary_unary_rpc_method_handler(quick, **kw),
            "Fail": grpc.unary_unary_rpc_method_handler(gate.fail, **kw),
            "Upload": grpc.stream_unary_rpc_method_handler(gate.upload, **kw),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    server = GrpcServer(settings, port=0)
    server.add_service(register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel, gate
    finally:
        gate.open.set()
        await channel.close()
        await server.stop(0)


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel, Gate]]:
    # A service behind the gateway, with a share set (its default is none): the gateway's
    # calls carry the caller's identity, forwarded.
    settings = GenerationSettings(
        internal_token=SecretStr(TOKEN),
        max_concurrent_rpcs=10,
        max_concurrent_rpcs_per_tenant=SHARE,
        metrics_port=None,
    )
    async with _serving(settings) as serving:
        yield serving


def _unary(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}", _ident, _ident)


async def _status(call: object) -> grpc.aio.AioRpcError:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("answered")


def _nothing_held(server: GrpcServer) -> bool:
    slots = server.call_slots
    return slots.in_flight == 0 and slots.held_by("acme") == slots.held_by("globex") == 0


def _now(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


async def test_the_share_counts_the_forwarded_tenant(
    served: tuple[GrpcServer, grpc.aio.Channel, Gate],
) -> None:
    server, channel, gate = served
    held = [
        asyncio.ensure_future(_unary(channel, "Hold")(b"", metadata=_forwarded("acme"), timeout=30))
        for _ in range(SHARE)
    ]
    await until(_now(lambda: gate.held == SHARE), "the share held")
    assert server.call_slots.held_by("acme") == SHARE
    err = await _status(_unary(channel, "Quick")(b"", metadata=_forwarded("acme"), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error_info(err).metadata) == {
        "limit": str(SHARE),
        "setting": SETTING,
        "scope": "tenant",
    }
    # Another tenant forwarded by the same gateway (same token) has its own share.
    other = _unary(channel, "Quick")(b"", metadata=_forwarded("globex"), timeout=10)
    assert await other == b"quick"
    gate.open.set()
    assert await asyncio.gather(*held) == [b"held"] * SHARE
    await until(_now(lambda: _nothing_held(server)), "every slot given back")


async def test_early_ends_give_back_the_share(
    served: tuple[GrpcServer, grpc.aio.Channel, Gate],
) -> None:
    server, channel, gate = served
    for _ in range(20):
        # A wrong internal token, a forwarded tenant that is no tenant name: refused
        # before the share is taken.
        bad = (("x-gensearch-internal-token", "wrong"), *_forwarded("acme")[1:])
        err = await _status(_unary(channel, "Quick")(b"", metadata=bad, timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        err = await _status(_unary(channel, "Quick")(b"", metadata=_forwarded(""), timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # A servicer's failure.
        err = await _status(_unary(channel, "Fail")(b"", metadata=_forwarded("acme"), timeout=10))
        assert err.code() == grpc.StatusCode.INTERNAL
        # A deadline cut.
        err = await _status(_unary(channel, "Hold")(b"", metadata=_forwarded("acme"), timeout=0.3))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A client stream cancelled mid-upload, and a unary call cancelled while held.
        upload = channel.stream_unary(f"/{SERVICE}/Upload", _ident, _ident)(
            metadata=_forwarded("acme"), timeout=30
        )
        await upload.write(b"x")
        held = _unary(channel, "Hold")(b"", metadata=_forwarded("acme"), timeout=30)

        def both_in(target: int = gate.held + 2) -> bool:
            return gate.held >= target

        await until(_now(both_in), "both calls in the servicer")
        upload.cancel()
        held.cancel()
        await until(_now(lambda: _nothing_held(server)), "every slot given back")
    assert await _unary(channel, "Quick")(b"", metadata=_forwarded("acme"), timeout=10) == b"quick"
    assert _nothing_held(server)


async def test_a_gateway_given_fewer_slots_keeps_a_share_below_them() -> None:
    """GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS lowered to 6, the share left unset: a flood of
    one tenant holds half of them, and the other tenant's calls made during it are
    answered. Failed before: the share stayed 500, the flood held all 6 slots and the
    other tenant's calls were refused naming MAX_CONCURRENT_RPCS."""
    limit = 6
    settings = GatewaySettings(
        api_keys=SecretStr("ann@noisy/reader:key-noisy,bob@quiet/reader:key-quiet"),
        max_concurrent_rpcs=limit,
        metrics_port=None,
    )
    noisy = (("authorization", "Bearer key-noisy"),)
    quiet = (("authorization", "Bearer key-quiet"),)
    setting = "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS_PER_TENANT"
    async with _serving(settings) as (server, channel, gate):
        flood = [
            asyncio.ensure_future(_unary(channel, "Hold")(b"", metadata=noisy, timeout=30))
            for _ in range(2 * limit)
        ]
        await until(
            _now(lambda: sum(call.done() for call in flood) + gate.held == len(flood)),
            "the flood settled: each call held or answered",
        )
        refused = [call.exception() for call in flood if call.done()]
        assert refused and all(isinstance(err, grpc.aio.AioRpcError) for err in refused)
        for err in refused:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert dict(error_info(err).metadata) == {
                "limit": str(limit // 2),
                "setting": setting,
                "scope": "tenant",
            }
        assert server.call_slots.held_by("noisy") == gate.held == limit // 2
        others = [
            _unary(channel, "Quick")(b"", metadata=quiet, timeout=10) for _ in range(limit // 2)
        ]
        assert await asyncio.gather(*others) == [b"quick"] * (limit // 2)
        gate.open.set()
        await asyncio.gather(*(call for call in flood if not call.done()))
