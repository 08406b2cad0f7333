"""Abuse of the tenant's share of call slots (``max_concurrent_rpcs_per_tenant``): the
ways a call can end early (refused credentials, deadline cuts, cancelled client streams,
a servicer that fails) give back both the server's slot and the tenant's, and an
identity the gateway forwards is counted in the forwarded tenant's share. A real
grpc.aio server and channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from pydantic import SecretStr

from services.common.server import GrpcServer
from services.generation.settings import GenerationSettings
from tests.support.rpc import error_info
from tests.support.share_server import Served, ident, serving, unary
from tests.support.waiting import until

SERVICE = "gensearch.test.v1.ShareAbuseService"
TOKEN = "internal-token-abuse"
SHARE = 2
SETTING = "GENSEARCH_GENERATION_MAX_CONCURRENT_RPCS_PER_TENANT"


def _forwarded(tenant: str) -> tuple[tuple[str, str], ...]:
    return (
        ("x-gensearch-internal-token", TOKEN),
        ("x-gensearch-user", "ann"),
        ("x-gensearch-tenant", tenant),
        ("x-gensearch-role", "reader"),
    )


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    # A service behind the gateway, with a share set (its default is none): the gateway's
    # calls carry the caller's identity, forwarded.
    settings = GenerationSettings(
        internal_token=SecretStr(TOKEN),
        max_concurrent_rpcs=10,
        max_concurrent_rpcs_per_tenant=SHARE,
        metrics_port=None,
    )
    async with serving(settings, SERVICE) as started:
        yield started


def _unary(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return unary(channel, SERVICE, name)


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
    served: Served,
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
    served: Served,
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
        upload = channel.stream_unary(f"/{SERVICE}/Upload", ident, ident)(
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
