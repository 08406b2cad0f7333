"""One tenant's share of a server's call slots (``max_concurrent_rpcs_per_tenant``): a
tenant flooding a server with calls that take their time gets RESOURCE_EXHAUSTED naming
the share's setting once it holds its share, while another tenant's calls, made during
the flood, are all answered. Before the share, the flood took every slot and the other
tenant's calls were refused ``MAX_CONCURRENT_RPCS``. A real grpc.aio server and channels."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from pydantic import SecretStr, ValidationError

from services.common.chassis import Admission
from services.common.errors import ResourceExhausted
from services.common.server import GrpcServer
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from tests.support.rpc import error_info
from tests.support.share_server import Gate, Served, ident, serving, unary
from tests.support.waiting import until

SERVICE = "gensearch.test.v1.ShareService"
KEYS = "ann@noisy/reader:key-noisy,bob@quiet/reader:key-quiet"
NOISY = (("authorization", "Bearer key-noisy"),)
QUIET = (("authorization", "Bearer key-quiet"),)
LIMIT, SHARE = 6, 3
SETTING = "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS_PER_TENANT"


@contextlib.asynccontextmanager
async def _serving(
    keys: str, admission: Admission | None = None, share: int | None = SHARE
) -> AsyncIterator[Served]:
    """A real server with the gateway's settings class (the share is its, the refusal
    names its variable) at LIMIT calls, ``share`` of them a tenant's (None: unset, the
    gateway's default, half of LIMIT), ``keys`` its API keys."""
    settings = GatewaySettings(
        api_keys=SecretStr(keys),
        max_concurrent_rpcs=LIMIT,
        max_concurrent_rpcs_per_tenant=share,
        metrics_port=None,
    )
    async with serving(settings, SERVICE, admission) as served:
        yield served


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with _serving(KEYS) as started:
        yield started


def _unary(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return unary(channel, SERVICE, name)


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
    assert dict(info.metadata) == {"limit": str(SHARE), "setting": SETTING, "scope": "tenant"}
    assert SETTING in (err.details() or "")


# Unset, the gateway's share is half of its limit, LIMIT // 2 == SHARE: the same flood
# holds it. Before call_share, the unset share stayed 500 whatever the limit, the flood
# held all LIMIT slots and the other tenant's calls were refused MAX_CONCURRENT_RPCS.
@pytest.mark.parametrize("share", [SHARE, None], ids=["set", "unset"])
async def test_a_flooding_tenant_gets_its_share_and_the_other_tenant_is_answered(
    share: int | None,
) -> None:
    assert LIMIT // 2 == SHARE
    async with _serving(KEYS, share=share) as (server, channel, gate):
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
    served: Served,
) -> None:
    server, channel, _ = served
    stream = channel.unary_stream(f"/{SERVICE}/HoldStream", ident, ident)
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


def test_the_gateways_share_follows_its_limit() -> None:
    """Unset, the gateway's share is half of its MAX_CONCURRENT_RPCS, none when that is 0
    (before: a fixed 500 whatever the limit, 500 with the limit off); the services behind
    it keep none (the gateway's per-hit fan-out is one tenant's)."""
    assert GatewaySettings().call_share() == GatewaySettings().max_concurrent_rpcs // 2 == 500
    assert GatewaySettings(max_concurrent_rpcs=4000).call_share() == 2000
    assert GatewaySettings(max_concurrent_rpcs=0).call_share() == 0
    assert (
        GatewaySettings(max_concurrent_rpcs=0, max_concurrent_rpcs_per_tenant=7).call_share() == 7
    )
    assert GenerationSettings().call_share() == 0


def test_a_share_above_the_limit_stops_the_gateway_naming_both_variables() -> None:
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(max_concurrent_rpcs=100, max_concurrent_rpcs_per_tenant=101)
    said = str(caught.value)
    assert "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS_PER_TENANT (101)" in said
    assert "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS (100)" in said
    # At the limit, and any share with the limit off, are taken.
    GatewaySettings(max_concurrent_rpcs=100, max_concurrent_rpcs_per_tenant=100)


@pytest.mark.parametrize(
    ("keys", "why"),
    [("", "no API keys configured"), ("ann@solo/reader:key-a,bob@solo/reader:key-b", "'solo'")],
    ids=["open", "one tenant"],
)
async def test_a_gateway_of_one_tenant_has_no_share(
    keys: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every caller one tenant (an open gateway: all are `default`): the share would hold
    that tenant below the server's own limit for no other tenant, so it is off, said once
    at start. Before, the SHARE+1st call was refused with the share's setting."""
    metadata = () if not keys else (("authorization", "Bearer key-a"),)
    caplog.set_level(logging.INFO, logger="gensearch.server")
    async with _serving(keys) as (_, channel, gate):
        held = [
            asyncio.ensure_future(_unary(channel, "Hold")(b"", metadata=metadata, timeout=30))
            for _ in range(LIMIT)
        ]

        async def all_held() -> bool:
            return gate.held == LIMIT or any(call.done() for call in held)

        await until(all_held, "every call held or one answered")
        assert [call.done() for call in held] == [False] * LIMIT
        # The server's own limit still holds, and says it is the server's.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _unary(channel, "Quick")(b"", metadata=metadata, timeout=10)
        info = error_info(caught.value)
        assert info.reason == "TOO_MANY_CONCURRENT_RPCS"
        assert info.metadata["scope"] == "server"
        assert info.metadata["setting"] == "GENSEARCH_GATEWAY_MAX_CONCURRENT_RPCS"
        gate.open.set()
        assert await asyncio.gather(*held) == [b"held"] * LIMIT
    said = [r.getMessage() for r in caplog.records if "_PER_TENANT is off" in r.getMessage()]
    assert len(said) == 1 and why in said[0], said


async def test_a_call_the_admission_guard_refuses_gives_its_share_back() -> None:
    """The share is taken before the admission guard (the quotas); a call the guard
    refuses gives back both its server slot and its tenant's share."""

    def refuse(method: str, context: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        raise ResourceExhausted("quota used", reason="QUOTA_EXCEEDED")

    async with _serving(KEYS, admission=refuse) as (server, channel, _):
        for _ in range(SHARE + 1):  # past the share: each refusal gave its count back
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _unary(channel, "Quick")(b"", metadata=NOISY, timeout=10)
            assert error_info(caught.value).reason == "QUOTA_EXCEEDED"
        assert server.call_slots.held_by("noisy") == 0 and server.call_slots.in_flight == 0


@pytest.mark.parametrize(
    ("share", "level"), [(SHARE, "WARNING"), (None, "INFO")], ids=["set", "unset"]
)
async def test_a_share_set_but_off_is_a_warning(
    share: int | None, level: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator who set the share asked for a bound the server does not apply: said at
    WARNING (it was INFO, among the start-up lines). The unset default stays INFO."""
    caplog.set_level(logging.INFO, logger="gensearch.server")
    settings = GatewaySettings(
        max_concurrent_rpcs=LIMIT, max_concurrent_rpcs_per_tenant=share, metrics_port=None
    )
    server = GrpcServer(settings, port=0)
    await server.start()
    await server.stop(0)
    said = [r.levelname for r in caplog.records if "_PER_TENANT is off" in r.getMessage()]
    assert said == [level]
