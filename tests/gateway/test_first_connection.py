"""A gateway started before the services it forwards to are up: a call on a channel that
has never connected waits for its first connection (``downstream_connect_wait``, never past
the call's deadline) instead of failing, writes included; a service that does not come up
still answers UNAVAILABLE. See docs/gateway.md#channels-to-the-other-services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.retrieval.__main__ import build_server as build_retrieval
from services.retrieval.settings import RetrievalSettings
from tests.gateway.conftest import ALICE, DIM, TOKEN, Stack, StackFactory
from tests.support.rpc import error_info


class Refuser:
    """A loopback listener that accepts and hangs up before HTTP/2: to a gRPC channel, a
    failed connection attempt (not merely a port nobody listens on yet)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.attempted = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _hang_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        self.attempted.set()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._hang_up, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def refuser() -> AsyncIterator[Refuser]:
    listener = Refuser()
    yield listener
    await listener.stop()


def _create(name: str) -> ret_pb.CreateCollectionRequest:
    return ret_pb.CreateCollectionRequest(
        collection=ret_pb.Collection(
            name=name,
            properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
            vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
        )
    )


async def _retrieval_comes_up(stack: Stack, refuser: Refuser, port: int, tmp_path: Path) -> None:
    """The refusing listener gives its port to a real retrieval service."""
    await refuser.stop()
    late = await build_retrieval(
        RetrievalSettings(data_dir=tmp_path / "late", internal_token=TOKEN, grace_period=0.5),
        port=port,
    )
    stack.servers["late-retrieval"] = late  # stopped with the stack
    await late.start()


async def test_a_write_waits_for_a_service_that_comes_up(
    stack_factory: StackFactory, refuser: Refuser, tmp_path: Path
) -> None:
    port = await refuser.start()
    stack = await stack_factory(retrieval_addr=f"127.0.0.1:{port}", downstream_connect_wait=60)
    # CreateCollection is not retried by the channel: without the wait, the failed first
    # connection attempt would fail it at once.
    create = asyncio.ensure_future(
        stack.retrieval.CreateCollection(_create("Late"), metadata=ALICE, timeout=60)
    )
    await asyncio.wait_for(refuser.attempted.wait(), 30)  # the gateway's attempt failed
    await _retrieval_comes_up(stack, refuser, port, tmp_path)

    made = await create
    assert made.collection.name == "Late"
    got = await stack.retrieval.GetCollection(
        ret_pb.GetCollectionRequest(name="Late"), metadata=ALICE, timeout=30
    )
    assert got.collection.name == "Late"


@pytest.mark.parametrize(("wait", "served"), [(30.0, True), (0.0, False)])
async def test_a_service_up_a_second_after_the_first_call(
    stack_factory: StackFactory, refuser: Refuser, tmp_path: Path, wait: float, served: bool
) -> None:
    """The wait is what serves the call: with it, the service that comes up a second after
    the gateway's first call answers that call; without it (0), the call fails as soon as
    the channel's first connection attempt has."""
    port = await refuser.start()
    stack = await stack_factory(
        retrieval_addr=f"127.0.0.1:{port}",
        downstream_connect_wait=wait,
        # Attempts every half second, so the one after the service is up comes well
        # within the wait.
        downstream_reconnect_backoff_max=0.5,
    )
    # A wait of 30 s (was 6): starting a retrieval service can take a loaded machine
    # several seconds, and the call must not run out of wait before it is up.
    create = asyncio.ensure_future(
        stack.retrieval.CreateCollection(_create("Late"), metadata=ALICE, timeout=60)
    )
    await asyncio.wait_for(refuser.attempted.wait(), 30)  # the gateway's first attempt failed
    await asyncio.sleep(1.0)
    if not served:
        # Without the wait it has failed already (bounded, not assumed within the second).
        await asyncio.wait([create], timeout=30)
        assert create.done()
    await _retrieval_comes_up(stack, refuser, port, tmp_path)
    if served:
        assert (await create).collection.name == "Late"
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_service_that_does_not_come_up_is_unavailable(
    stack_factory: StackFactory, refuser: Refuser
) -> None:
    """UNAVAILABLE once the wait is over: not at the first failed attempt (there was a
    wait), not at the call's deadline (it ended)."""
    port = await refuser.start()
    stack = await stack_factory(retrieval_addr=f"127.0.0.1:{port}", downstream_connect_wait=1.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.CreateCollection(_create("Never"), metadata=ALICE, timeout=60)
    assert 1.5 <= loop.time() - start < 30
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "DOWNSTREAM_UNAVAILABLE"
    assert refuser.attempts >= 1  # it did try


async def test_a_new_gateway_does_not_inherit_another_channels_failures(
    stack_factory: StackFactory, refuser: Refuser, tmp_path: Path
) -> None:
    """Two gateways in one process (``gensearch up``, these tests). Unless told otherwise,
    gRPC shares a subchannel, with its reconnect backoff, among a process's channels with
    the same target and arguments: the second gateway's first call would fail in the
    backoff of the first gateway's failed attempts. No connection wait here, so only a
    connection of the channel's own can save that call."""
    port = await refuser.start()
    target = f"127.0.0.1:{port}"
    first = await stack_factory(retrieval_addr=target, downstream_connect_wait=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first.retrieval.CreateCollection(_create("Early"), metadata=ALICE, timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Built while the first gateway's channel keeps failing (and backing off longer).
    second = await stack_factory(retrieval_addr=target, downstream_connect_wait=0)
    await refuser.stop()
    late = await build_retrieval(
        RetrievalSettings(data_dir=tmp_path / "late", internal_token=TOKEN, grace_period=0.5),
        port=port,
    )
    second.servers["late-retrieval"] = late  # stopped with the stack
    await late.start()

    made = await second.retrieval.CreateCollection(_create("Fresh"), metadata=ALICE, timeout=30)
    assert made.collection.name == "Fresh"


async def test_reconnect_attempts_to_a_down_service_stay_frequent(
    stack_factory: StackFactory, refuser: Refuser
) -> None:
    """The reconnect backoff is capped (``downstream_reconnect_backoff_max``): a service
    that is down is dialled again at that pace, so it is reached soon after it is back.
    With gRPC's own backoff (1 s, then x1.6 each time, up to 120 s) the same window sees
    about three attempts."""
    port = await refuser.start()
    stack = await stack_factory(
        retrieval_addr=f"127.0.0.1:{port}",
        downstream_connect_wait=0,
        downstream_reconnect_backoff_max=0.2,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.retrieval.CreateCollection(_create("Down"), metadata=ALICE, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    first = refuser.attempts
    # Eight more attempts, waited for (polled) within 20 s rather than counted after a
    # fixed 4 s, which a loaded machine could spend on fewer: at the 0.2 s cap they take
    # under 2 s; with gRPC's own backoff even the shortest jittered waits (0.8 s, x1.6)
    # allow at most six in 20 s.
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while refuser.attempts - first < 8:
        assert loop.time() < end, f"{refuser.attempts - first} attempts in 20 s"
        await asyncio.sleep(0.05)
