"""A StreamGenerate whose client stops reading is cut (services/common/stream_idle.py):
each message must be taken within STREAM_SEND_TIMEOUT (a deadline further away changes
nothing; tests/common/test_chassis.py), else the call
ends DEADLINE_EXCEEDED (STREAM_STALLED), its call slot is free and its upstream request is
closed, so the provider stops generating. Before, the stream waited at its write, its
upstream request open, for as long as the client kept its connection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY

from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

SEND = 2.0
IN_FLIGHT = {
    "server": "generation",
    "grpc_service": "gensearch.generation.v1.GenerationService",
    "grpc_method": "StreamGenerate",
}
# HTTP/2's 64 KiB window for good (gRPC's BDP probing would grow it as the stream goes).
CLIENT_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]


async def test_a_client_that_stops_reading_is_cut_and_its_upstream_closed(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    service = await start_service(
        [fake_provider(fake)], stream_send_timeout=SEND, max_answer_chars=16_000_000
    )
    # An answer of 10 MB in 20 kB words: far more than the client's window and the
    # sockets' buffers hold, so the provider is still sending when the stream stalls.
    fake.reply = " ".join("w" * 20_000 for _ in range(500))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.server.port}", options=CLIENT_OPTIONS)
    try:
        stub = pb_grpc.GenerationServiceStub(channel)
        call = stub.StreamGenerate(pb.StreamGenerateRequest(messages=[user("x")]))
        first = await call.read()
        assert first.delta
        await asyncio.wait_for(fake.disconnected.wait(), 30)  # the upstream request closed
        end = asyncio.get_running_loop().time() + 30
        while service.server.call_slots.in_flight:
            assert asyncio.get_running_loop().time() < end, "the stream was not cut"
            await asyncio.sleep(0.02)
        # Over for the metrics too (gensearch_grpc_server_in_flight), its client still away.
        assert REGISTRY.get_sample_value("gensearch_grpc_server_in_flight", IN_FLIGHT) == 0
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await call.read() is not grpc.aio.EOF:
                pass
        err = ended.value
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
        info = error_info(err)
        assert info.reason == "STREAM_STALLED"
        assert info.metadata["setting"] == "GENSEARCH_GENERATION_STREAM_SEND_TIMEOUT"
    finally:
        await channel.close()
