"""The chassis every service shares: errors, auth, health, reflection, metrics, shutdown.

A real grpc.aio server on a free port with a tiny generic service and a real channel.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from pydantic import SecretStr

from services.common.auth import current_user
from services.common.errors import InvalidArgument, NotFound
from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from tests.support.rpc import bad_request_field
from tests.support.rpc import error_info as _error_info

SERVICE = "gensearch.test.v1.TestService"


def _ident(b: bytes) -> bytes:
    return b


async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return current_user().encode()


async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    kind = request.decode()
    if kind == "invalid":
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if kind == "missing":
        raise NotFound("conversation not found", field="conversation_id")
    raise RuntimeError("secret internals /etc/passwd")


async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b"done"


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"one"
    raise InvalidArgument("bad after first", field="stream_field")


async def flood(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    while True:
        yield b"x" * 16384


async def trickle(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Three messages, ``request`` seconds apart: a slow producer, not a slow reader."""
    for i in range(3):
        if i:
            await asyncio.sleep(float(request.decode()))
        yield b"%d" % i


async def collect(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


async def chat(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request.upper()


def _register(_servicer: object, server: grpc.aio.Server) -> None:
    unary = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_ident, response_serializer=_ident
        )
        for name, fn in {"WhoAmI": whoami, "Fail": fail, "Slow": slow}.items()
    }
    unary["Stream"] = grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=_ident, response_serializer=_ident
    )
    unary["Flood"] = grpc.unary_stream_rpc_method_handler(
        flood, request_deserializer=_ident, response_serializer=_ident
    )
    unary["Trickle"] = grpc.unary_stream_rpc_method_handler(
        trickle, request_deserializer=_ident, response_serializer=_ident
    )
    unary["Collect"] = grpc.stream_unary_rpc_method_handler(
        collect, request_deserializer=_ident, response_serializer=_ident
    )
    unary["Chat"] = grpc.stream_stream_rpc_method_handler(
        chat, request_deserializer=_ident, response_serializer=_ident
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, unary),))


async def _start(metrics: bool = False, **settings: object) -> tuple[GrpcServer, grpc.aio.Channel]:
    server = GrpcServer(
        CommonSettings(**settings),  # type: ignore[arg-type]
        port=0,
        metrics_port=0 if metrics else None,
    )
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def _call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{method}", _ident, _ident)


@pytest.fixture
async def open_server() -> AsyncIterator[grpc.aio.Channel]:
    server, channel = await _start()
    yield channel
    await channel.close()
    await server.stop(0)


@pytest.fixture
async def keyed_server() -> AsyncIterator[grpc.aio.Channel]:
    server, channel = await _start(
        api_keys=SecretStr("alice:key-alice,bob:key-bob"),
        internal_token=SecretStr("internal-secret"),
    )
    yield channel
    await channel.close()
    await server.stop(0)


async def test_no_keys_means_anonymous(open_server: grpc.aio.Channel) -> None:
    assert await _call(open_server, "WhoAmI")(b"") == b"anonymous"


async def test_domain_error_becomes_rich_status(open_server: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(open_server, "Fail")(b"invalid")
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (err.details() or "")
    info = _error_info(err)
    assert (info.domain, info.reason, info.metadata["field"]) == (
        "gensearch",
        "INVALID_ARGUMENT",
        "page_size",
    )
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert bad.field_violations[0].field == "page_size"


async def test_not_found_maps_to_not_found(open_server: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(open_server, "Fail")(b"missing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert _error_info(caught.value).metadata["field"] == "conversation_id"


async def test_unexpected_exception_is_internal_without_internals(
    open_server: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(open_server, "Fail")(b"boom")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "passwd" not in (caught.value.details() or "")
    assert "Traceback" not in (caught.value.details() or "")


async def test_error_after_stream_started(open_server: grpc.aio.Channel) -> None:
    call = open_server.unary_stream(f"/{SERVICE}/Stream", _ident, _ident)(b"")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in call:
            received.append(item)
    assert received == [b"one"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(caught.value).metadata["field"] == "stream_field"


async def test_a_stream_dropped_while_it_waits_to_send_ends_cancelled_and_quietly(
    open_server: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    # The client stops reading, so the server's generator waits at its yield; when the
    # client cancels, gRPC leaves it there and it is finalized later in another task's
    # context. Before: OpenTelemetry logged "Failed to detach context" with a traceback,
    # and the access line said OK.
    caplog.set_level(logging.INFO)
    call = open_server.unary_stream(f"/{SERVICE}/Flood", _ident, _ident)(b"")
    await call.read()
    await asyncio.sleep(0.3)  # the flow-control window fills
    call.cancel()
    end = asyncio.get_running_loop().time() + 30  # polled: a loaded machine is slow to it
    while True:
        gc.collect()
        await asyncio.sleep(0.05)
        codes = [getattr(r, "code", None) for r in caplog.records if r.name == "gensearch.access"]
        if codes or asyncio.get_running_loop().time() > end:
            break
    assert codes == ["CANCELLED"]
    # (gRPC itself logs the failed send at ERROR; that one is not ours.)
    assert not [
        r
        for r in caplog.records
        if r.name.startswith(("opentelemetry", "gensearch")) and r.levelno >= logging.ERROR
    ]


SEND = 0.5  # STREAM_SEND_TIMEOUT in the tests below
# HTTP/2's 64 KiB window for good (gRPC's BDP probing would grow it as the stream goes).
STALLING_CLIENT = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]


async def _stalled_server() -> tuple[GrpcServer, grpc.aio.Channel]:
    server, channel = await _start(
        api_keys=SecretStr("alice:key-alice"),
        internal_token=SecretStr("internal-secret"),
        stream_send_timeout=SEND,
    )
    await channel.close()  # a client of its own instead, whose window stays small
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=STALLING_CLIENT)


async def _stalls(channel: grpc.aio.Channel, **kwargs: Any) -> grpc.aio.AioRpcError:
    """A Flood read once, then left unread for long enough to be cut; then read on: the
    error it ends with."""
    call = channel.unary_stream(f"/{SERVICE}/Flood", _ident, _ident)(b"", **kwargs)
    await call.read()
    await asyncio.sleep(6 * SEND)  # the window fills, the server's write blocks
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await call.read() is not grpc.aio.EOF:
            pass
    return ended.value


async def test_a_stalled_reader_is_cut_whatever_its_deadline() -> None:
    """A client that set a deadline an hour away and stopped reading is cut at the send
    timeout. Before, only a call without a deadline was: this one held its call slot (and,
    on the gateway, its tenant's quota slot) for the hour."""
    server, channel = await _stalled_server()
    try:
        err = await asyncio.wait_for(
            _stalls(channel, metadata=(("authorization", "Bearer key-alice"),), timeout=3600),
            30,
        )
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
        assert _error_info(err).reason == "STREAM_STALLED"
        assert server.call_slots.in_flight == 0
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_peer_services_stalled_stream_is_held_to_its_deadline() -> None:
    """The gateway's streams from a backend carry the internal token and their hit's
    budget: the gateway holds a hit back on purpose while its own client reads slowly
    (and cuts that client itself), so the backend leaves such a call to its deadline."""
    server, channel = await _stalled_server()
    try:
        err = await asyncio.wait_for(
            _stalls(channel, metadata=FORWARDED_CAROL, timeout=12 * SEND), 30
        )
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
        assert "took no stream message" not in (err.details() or "")
        assert "STREAM_STALLED" not in str(err.trailing_metadata())
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_slow_producer_is_never_cut() -> None:
    """Only a blocked write counts, never the servicer's wait for its next message (a slow
    LLM, a slow upstream): messages far apart, each read at once, on a call with a
    deadline and one without."""
    server, channel = await _stalled_server()
    try:
        trickle = channel.unary_stream(f"/{SERVICE}/Trickle", _ident, _ident)
        alice = (("authorization", "Bearer key-alice"),)
        for timeout in (None, 3600):
            got = [m async for m in trickle(b"%g" % (3 * SEND), metadata=alice, timeout=timeout)]
            assert got == [b"0", b"1", b"2"]
    finally:
        await channel.close()
        await server.stop(0)


_REFUSED_HEADER = {
    "MISSING_CREDENTIALS": "authorization",
    "INVALID_API_KEY": "authorization",
    "MALFORMED_CREDENTIALS": "authorization",
    "INVALID_INTERNAL_TOKEN": "x-gensearch-internal-token",
    "MISSING_FORWARDED_USER": "x-gensearch-user",
    "MISSING_FORWARDED_TENANT": "x-gensearch-tenant",
    "MISSING_FORWARDED_ROLE": "x-gensearch-role",
}


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        ((("authorization", "Bearer nope"),), "INVALID_API_KEY"),
        ((("authorization", "Basic key-alice"),), "MALFORMED_CREDENTIALS"),
        ((("authorization", "key-alice"),), "MALFORMED_CREDENTIALS"),
        ((("authorization", "Bearer "),), "MALFORMED_CREDENTIALS"),
        # A forged identity header without the internal token is not believed.
        ((("x-gensearch-user", "alice"),), "MISSING_CREDENTIALS"),
        (
            (("x-gensearch-internal-token", "wrong"), ("x-gensearch-user", "a")),
            "INVALID_INTERNAL_TOKEN",
        ),
        ((("x-gensearch-internal-token", "internal-secret"),), "MISSING_FORWARDED_USER"),
        (
            (("x-gensearch-internal-token", "internal-secret"), ("x-gensearch-user", "a")),
            "MISSING_FORWARDED_TENANT",
        ),
        (
            (
                ("x-gensearch-internal-token", "internal-secret"),
                ("x-gensearch-user", "a"),
                ("x-gensearch-tenant", "acme"),
                ("x-gensearch-role", "root"),
            ),
            "MISSING_FORWARDED_ROLE",
        ),
    ],
)
async def test_rejected_credentials(
    keyed_server: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(keyed_server, "WhoAmI")(b"", metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = _error_info(caught.value)
    assert info.reason == reason
    assert "key-alice" not in (caught.value.details() or "") + str(info)
    # Every refusal names the header at fault, as any other bad input names its field
    # (MISSING_CREDENTIALS, INVALID_API_KEY and INVALID_INTERNAL_TOKEN named none).
    assert info.metadata["field"] == _REFUSED_HEADER[reason]
    if reason == "MALFORMED_CREDENTIALS":
        assert caught.value.details() == (
            "malformed authorization header: expected 'Bearer <api key>'"
        )


async def test_api_key_and_forwarded_identity(keyed_server: grpc.aio.Channel) -> None:
    who = _call(keyed_server, "WhoAmI")
    assert await who(b"", metadata=(("authorization", "Bearer key-bob"),)) == b"bob"
    forwarded = (
        ("x-gensearch-internal-token", "internal-secret"),
        ("x-gensearch-user", "carol"),
        ("x-gensearch-tenant", "acme"),
        ("x-gensearch-role", "reader"),
    )
    assert await who(b"", metadata=forwarded) == b"carol"


FORWARDED_CAROL = (
    ("x-gensearch-internal-token", "internal-secret"),
    ("x-gensearch-user", "carol"),
    ("x-gensearch-tenant", "acme"),
    ("x-gensearch-role", "reader"),
)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer key-alice"),),
        (("x-gensearch-user", "alice"), ("x-gensearch-role", "admin")),
    ],
    ids=["nothing", "a key", "identity without token"],
)
async def test_a_backend_with_a_token_and_no_keys_takes_the_gateway_alone(
    metadata: tuple[tuple[str, str], ...], caplog: pytest.LogCaptureFixture
) -> None:
    """The keys on the gateway alone, the token on every service (the gateway authenticates,
    the services behind it trust what it forwards): a direct caller of a service without
    the token is refused, naming the token. Before, it was 'anonymous', admin of the tenant
    'default', on memory, retrieval and generation alike."""
    caplog.set_level(logging.WARNING, logger="gensearch.server")
    server, channel = await _start(internal_token=SecretStr("internal-secret"))
    try:
        who = _call(channel, "WhoAmI")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await who(b"", metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = _error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == (
            "MISSING_INTERNAL_TOKEN",
            "x-gensearch-internal-token",
        )
        assert "GENSEARCH_API_KEYS" in (caught.value.details() or "")
        # A gateway started without the token gets this relayed to its client: the fix
        # is on the gateway, which "call the gateway" alone did not say.
        assert "give the gateway the same GENSEARCH_INTERNAL_TOKEN" in (
            caught.value.details() or ""
        )
        assert "internal-secret" not in (caught.value.details() or "") + str(info)
        assert await who(b"", metadata=FORWARDED_CAROL) == b"carol"
        # Closed: nothing to warn about.
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await channel.close()
        await server.stop(0)


async def test_an_open_server_says_so_once_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """No keys and no token: every caller is served as anonymous, which one WARNING says
    at start, naming the settings that close it."""
    caplog.set_level(logging.INFO, logger="gensearch.server")
    server, channel = await _start()
    try:
        assert await _call(channel, "WhoAmI")(b"") == b"anonymous"
        assert await _call(channel, "WhoAmI")(b"") == b"anonymous"
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert f"on 127.0.0.1:{server.port}" in message
        for setting in (
            "GENSEARCH_API_KEYS",
            "GENSEARCH_API_KEYS_FILE",
            "GENSEARCH_INTERNAL_TOKEN",
        ):
            assert setting in message
    finally:
        await channel.close()
        await server.stop(0)


@pytest.mark.parametrize(
    "settings",
    [
        {"api_keys": SecretStr("alice:key-alice")},
        {"api_keys": SecretStr("alice:key-alice"), "internal_token": SecretStr("secret")},
    ],
    ids=["keys", "keys and token"],
)
async def test_a_server_with_keys_does_not_warn(
    settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gensearch.server")
    server, channel = await _start(**settings)
    await channel.close()
    await server.stop(0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_the_front_door_with_a_token_and_no_keys_stays_open_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gateway takes no forwarded identity, so its token (for the services behind it)
    closes nothing: with no keys it serves anonymous callers (`gensearch up`, `make run`)
    and says so, naming the keys alone."""
    caplog.set_level(logging.INFO, logger="gensearch.server")
    server = GrpcServer(
        CommonSettings(internal_token=SecretStr("internal-secret")),  # type: ignore[call-arg]
        port=0,
        accept_forwarded_identity=False,
    )
    server.add_service(_register, None, SERVICE)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _call(channel, "WhoAmI")(b"") == b"anonymous"
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert "GENSEARCH_API_KEYS" in warnings[0]
        assert "GENSEARCH_INTERNAL_TOKEN" not in warnings[0]
    finally:
        await server.stop(0)


async def test_health_and_reflection_need_no_key(keyed_server: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(keyed_server)
    for service in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(keyed_server)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield request

    names = set()
    async for reply in stub.ServerReflectionInfo(one()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_health_list_answers_without_an_error_log(
    keyed_server: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    # grpcio-health-checking's servicer leaves List unimplemented: any client, without a
    # key, got UNIMPLEMENTED quoting a Python exception, and the server logged an ERROR
    # with a traceback per call.
    health = health_pb2_grpc.HealthStub(keyed_server)
    with caplog.at_level(logging.ERROR):
        reply = await health.List(health_pb2.HealthListRequest())
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in reply.statuses.items()} == {
        "": serving,
        SERVICE: serving,
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_health_refuses_a_service_name_longer_than_any(
    keyed_server: grpc.aio.Channel,
) -> None:
    # No key is needed and a Watch stream stays open holding its request: a name of
    # megabytes kept some 17 MB of the process per stream, for anyone who could connect.
    health = health_pb2_grpc.HealthStub(keyed_server)
    limit = CommonSettings().health_max_service_bytes
    name = "x" * (limit + 1)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=name))
    for call in (health.Check(health_pb2.HealthCheckRequest(service=name)), watch.read()):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = _error_info(caught.value)
        assert info.reason == "FIELD_TOO_LARGE"
        assert info.metadata["setting"].endswith("HEALTH_MAX_SERVICE_BYTES")
        assert bad_request_field(caught.value) == "service"
    # A name at the limit is only unknown, as before.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="x" * limit))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_health_limits_are_settings() -> None:
    server, channel = await _start(health_max_service_bytes=64)
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="x" * 65))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(caught.value).metadata["limit_bytes"] == "64"
    await channel.close()
    await server.stop(0)


async def test_health_watch_streams_are_capped() -> None:
    # Each open Watch held ~24 KB and kept its connection from idling out, without a key.
    server, channel = await _start(health_max_watches=2)
    health = health_pb2_grpc.HealthStub(channel)
    open_ = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
    for watch in open_:
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Watch(health_pb2.HealthCheckRequest()).read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _error_info(caught.value).reason == "TOO_MANY_CONCURRENT_RPCS"
    open_[0].cancel()
    for _ in range(100):  # its slot is given back once the server sees the cancel
        again = health.Watch(health_pb2.HealthCheckRequest())
        try:
            await again.read()
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("a closed Watch stream kept its slot")
    again.cancel()
    open_[1].cancel()
    await channel.close()
    await server.stop(0)


async def test_health_and_reflection_refuse_large_metadata_with_error_info() -> None:
    # They ran outside the chassis: metadata past the setting (and below gRPC's own limit,
    # twice it) passed, and past that gRPC refused bare, with no ErrorInfo to say which
    # header or limit. Now the same check as every method of ours, and probes still pass.
    server, channel = await _start(max_metadata_bytes=8192)
    big = (("x-padding", "k" * 9000),)
    health = health_pb2_grpc.HealthStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    calls = {
        "Check": lambda md: health.Check(health_pb2.HealthCheckRequest(), metadata=md),
        "List": lambda md: health.List(health_pb2.HealthListRequest(), metadata=md),
        "Watch": lambda md: health.Watch(health_pb2.HealthCheckRequest(), metadata=md).read(),
        "ServerReflectionInfo": lambda md: reflection.ServerReflectionInfo(
            one(), metadata=md
        ).read(),
    }
    for name, call in calls.items():
        await call(())  # within the limit: as before
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(big)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, name
        info = _error_info(caught.value)
        assert info.reason == "METADATA_TOO_LARGE", name
        assert info.metadata["setting"] == "GENSEARCH_MAX_METADATA_BYTES", name
        assert info.metadata["limit_bytes"] == "8192", name
        assert bad_request_field(caught.value) == "x-padding", name
        assert name in (caught.value.details() or ""), caught.value.details()
    await channel.close()
    await server.stop(0)


async def test_reflection_streams_are_capped_and_a_silent_one_is_ended() -> None:
    # A reflection stream needs no key and stayed open, holding its connection, for as
    # long as its client neither sent nor half-closed: uncounted and unbounded, where the
    # chassis ends a silent client stream and health caps its Watch streams.
    server, channel = await _start(reflection_max_streams=2, stream_idle_timeout=60)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    open_ = [stub.ServerReflectionInfo() for _ in range(2)]
    try:
        for stream in open_:
            await stream.write(listing)
            assert (await stream.read()).list_services_response.service
        refused = stub.ServerReflectionInfo(timeout=10)  # before: open until this deadline
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = _error_info(caught.value)
        assert info.reason == "TOO_MANY_CONCURRENT_RPCS"
        setting = "GENSEARCH_REFLECTION_MAX_STREAMS"
        assert dict(info.metadata) == {"limit": "2", "setting": setting, "scope": "server"}
        await open_[0].done_writing()  # grpcurl's way: ask, half-close, read to the end
        assert await open_[0].read() == grpc.aio.EOF
        for _ in range(100):  # its slot is given back once the server sees the end
            again = stub.ServerReflectionInfo()
            open_.append(again)
            try:
                await again.write(listing)
                await again.read()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("an ended reflection stream kept its slot")
    finally:
        for stream in open_:
            stream.cancel()
        await channel.close()
        await server.stop(0)

    server, channel = await _start(stream_idle_timeout=0.2)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        silent = stub.ServerReflectionInfo(timeout=10)  # before: open until this deadline
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await silent.read()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _error_info(caught.value).reason == "STREAM_IDLE"
    finally:
        await channel.close()
        await server.stop(0)


async def _reaches_the_server(server: GrpcServer, call: asyncio.Future[bytes]) -> None:
    """Waits (polling, bounded) until ``call`` holds a call slot: it is in flight on the
    server, not still on its way over a channel that is connecting (a fixed 0.1 s sleep
    was not always enough on a loaded machine: stop() then refused the call)."""
    end = asyncio.get_running_loop().time() + 30
    while server.call_slots.in_flight < 1:
        assert not call.done(), call
        assert asyncio.get_running_loop().time() < end, "the call never reached the server"
        await asyncio.sleep(0.01)


async def test_graceful_shutdown_finishes_in_flight_calls() -> None:
    server, channel = await _start()
    health = health_pb2_grpc.HealthStub(channel)
    in_flight = asyncio.ensure_future(_call(channel, "Slow")(b"0.5"))
    await _reaches_the_server(server, in_flight)
    stopping = asyncio.ensure_future(server.stop(5))
    await asyncio.sleep(0.05)
    assert await in_flight == b"done"
    await stopping
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_during_the_grace_period_probes_are_refused_and_watchers_told() -> None:
    # What docs/operations.md#graceful-shutdown says: no Check answers NOT_SERVING once
    # stop() begins (the listener closes at once, so a probe fails to connect), a Watch
    # already open is told NOT_SERVING, and calls in flight still finish.
    server, channel = await _start()
    address = f"127.0.0.1:{server.port}"
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    # 3 s: still running after the probe below, however slowly a loaded machine makes it.
    in_flight = asyncio.ensure_future(_call(channel, "Slow")(b"3.0"))
    await _reaches_the_server(server, in_flight)
    stopping = asyncio.ensure_future(server.stop(10))
    not_serving = await asyncio.wait_for(watch.read(), 10)
    assert not_serving.status == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(address) as probe:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
    # UNAVAILABLE: no listener. About one run in eight, gRPC core took the connection in
    # the instant before its listener closed and ended the call CANCELLED as the server
    # stops taking calls: a failed probe either way, never a NOT_SERVING answer.
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert not in_flight.done()
    assert await in_flight == b"done"
    await stopping
    await channel.close()


async def test_health_goes_not_serving_before_stop() -> None:
    server, channel = await _start()
    await server.health.enter_graceful_shutdown()
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await channel.close()
    await server.stop(0)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_follow_grpc_prometheus_conventions() -> None:
    server, channel = await _start(metrics=True)
    unary = {"grpc_type": "unary", "grpc_service": SERVICE}
    failed = {**unary, "grpc_method": "Fail", "grpc_code": "InvalidArgument"}
    before = _sample("grpc_server_handled_total", **failed)
    await _call(channel, "WhoAmI")(b"")
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(channel, "Fail")(b"invalid")
    # One failed call is counted once, with the Go spelling of its code (a moment after the
    # client has its status: the servicer's abort sends it before the chassis counts).
    for _ in range(500):
        if _sample("grpc_server_handled_total", **failed) > before:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert _sample("grpc_server_handled_total", **failed) == before + 1

    async def three() -> AsyncIterator[bytes]:
        for item in (b"a", b"b", b"c"):
            yield item

    replies = channel.stream_stream(f"/{SERVICE}/Chat", _ident, _ident)(three())
    assert [r async for r in replies] == [b"A", b"B", b"C"]
    chat = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "Chat"}

    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    body = (await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())).decode()
    labels = f'grpc_method="WhoAmI",grpc_service="{SERVICE}",grpc_type="unary"'
    assert f"grpc_server_started_total{{{labels}}}" in body
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}}' in body
    assert f'grpc_server_handling_seconds_bucket{{{labels},le="0.005"}}' in body
    assert f"grpc_server_msg_received_total{{{labels}}}" in body
    assert f"grpc_server_msg_sent_total{{{labels}}}" in body
    # Our own gauge, beside them: calls in progress by serving process.
    in_flight = f'grpc_method="WhoAmI",grpc_service="{SERVICE}",server="test"'
    assert f"gensearch_grpc_server_in_flight{{{in_flight}}} 0.0" in body
    for name in ("grpc_server_msg_received_total", "grpc_server_msg_sent_total"):
        assert (
            f'{name}{{grpc_method="Chat",grpc_service="{SERVICE}",grpc_type="bidi_stream"}}' in body
        )
    assert _sample("grpc_server_msg_received_total", **chat) >= 3
    assert (
        _sample(
            "gensearch_grpc_server_in_flight",
            server="test",
            grpc_service=SERVICE,
            grpc_method="WhoAmI",
        )
        == 0
    )
    await channel.close()
    await server.stop(0)


async def _cut_and_left(**settings: Any) -> tuple[GrpcServer, grpc.aio.Channel, Any]:
    """A server (``settings``) whose Flood stream a client read once, then neither read on
    nor left: the stream has been cut (its call slot is free); returns the call, unread."""
    server, channel = await _start(
        api_keys=SecretStr("alice:key-alice"), stream_send_timeout=SEND, **settings
    )
    await channel.close()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=STALLING_CLIENT)
    alice = (("authorization", "Bearer key-alice"),)
    call = channel.unary_stream(f"/{SERVICE}/Flood", _ident, _ident)(b"", metadata=alice)
    await call.read()
    end = asyncio.get_running_loop().time() + 30  # polled: a loaded machine is slow to it
    while server.call_slots.in_flight:
        assert asyncio.get_running_loop().time() < end, "the stalled stream was not cut"
        await asyncio.sleep(0.05)
    return server, channel, call


async def test_a_cut_stream_left_unread_holds_its_reply_bytes_while_its_connection_lives() -> None:
    """Measured: once cut, the call's status waits behind the message gRPC was sending, so
    the message's bytes stay counted (its tenant's MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT) and
    its HTTP/2 stream open for as long as the client neither reads nor leaves. Keepalive
    does not end it (the client's library answers pings), nor MAX_CONNECTION_AGE alone
    (gRPC's grace after its GOAWAY is unlimited). Its call slot is free."""
    server, channel, call = await _cut_and_left(max_connection_age=SEND)
    try:
        await asyncio.sleep(8 * SEND)  # the connection's age passed long ago
        assert server.reply_bytes.total > 0
        assert server.call_slots.in_flight == 0
        assert not call.done()
    finally:
        await channel.close()
    # The client gone, all of it is given back.
    end = asyncio.get_running_loop().time() + 30
    while server.reply_bytes.total:
        assert asyncio.get_running_loop().time() < end, "reply bytes held after the client left"
        await asyncio.sleep(0.05)
    await server.stop(0)


async def test_max_connection_age_grace_frees_a_cut_stream_left_unread() -> None:
    """MAX_CONNECTION_AGE with MAX_CONNECTION_AGE_GRACE: the connection of a client that
    neither reads nor leaves is closed at age + grace, and the cut stream's reply bytes
    (held while its status waited behind them) are given back, the client still holding
    its call unread."""
    server, channel, call = await _cut_and_left(
        max_connection_age=SEND, max_connection_age_grace=SEND
    )
    try:
        end = asyncio.get_running_loop().time() + 30  # polled: a loaded machine is slow
        while server.reply_bytes.total:
            assert asyncio.get_running_loop().time() < end, "reply bytes still held"
            await asyncio.sleep(0.05)
        assert server.call_slots.in_flight == 0
        # The call ended under the client too, the connection closed under it.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
    finally:
        await channel.close()
        await server.stop(0)
