"""A reflection stream whose client asks and never reads is cut at STREAM_SEND_TIMEOUT, as
every stream of our services is (services/common/stream_idle.py): DEADLINE_EXCEEDED,
reason STREAM_STALLED, and its reflection slot is given back.

Reflection needs no key. Its replies were written by gRPC from the servicer's generator,
with no send timeout: a client that sent requests and never read their replies left the
stream waiting at its write for as long as it kept its connection open, holding one of
the server's REFLECTION_MAX_STREAMS slots; that many such streams, from anyone, and
grpcurl, buf curl and every reflection-based tool got RESOURCE_EXHAUSTED for good. The
idle limit did not help: it only runs while the stream waits for a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from tests.support.rpc import error_info

# A client whose flow-control window stays at HTTP/2's 64 KiB (gRPC's BDP probing grows
# it as a connection is used): replies it does not read fill it soon.
CLIENT_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]
# Far more reply bytes than the client's window and both sides' buffers hold.
ASKED = 2000


async def _reflection_answers(port: int) -> bool:
    """Whether a fresh reflection stream is answered (False: refused, the slots full)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=10)
        # No request, half-closed at once: admitted, the stream ends OK with no reply;
        # refused, RESOURCE_EXHAUSTED (a request written to a refused stream failed on the
        # client's side, INTERNAL, hiding the server's status).
        await call.done_writing()
        code = await call.code()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), (
            code,
            await call.details(),
        )
        return code == grpc.StatusCode.OK


async def test_a_reflection_stream_whose_client_never_reads_is_cut_and_its_slot_freed() -> None:
    server = GrpcServer(
        CommonSettings(  # type: ignore[call-arg]
            reflection_max_streams=1, stream_send_timeout=0.5, stream_idle_timeout=60
        ),
        port=0,
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1alpha.ServerReflection"
        )

        async def asking() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            for _ in range(ASKED):
                yield ask

        stalled = stub.ServerReflectionInfo(asking())  # no deadline: nothing else ends it
        # The first reply read: the stream holds the only slot; then it reads no more.
        assert (await stalled.read()).HasField("file_descriptor_response")
        # The stalled stream holds the only slot until the server cuts it: then a fresh
        # stream is answered (polled, bounded: before, it never was).
        end = asyncio.get_running_loop().time() + 30
        while not await _reflection_answers(port):
            assert asyncio.get_running_loop().time() < end, "the stalled stream kept its slot"
            await asyncio.sleep(0.1)
        # Read on, the client gets what gRPC held for it, then the status saying why.
        try:
            while await stalled.read() is not grpc.aio.EOF:
                pass
            raise AssertionError("the stalled stream ended without an error")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            info = error_info(err)
            assert info.reason == "STREAM_STALLED"
            assert info.metadata["setting"] == "GENSEARCH_STREAM_SEND_TIMEOUT"
    finally:
        await channel.close()
        await server.stop(0)
