"""A downstream service whose HTTP/2 connection refuses a call (RST_STREAM REFUSED_STREAM:
its ``max_concurrent_streams`` reached, or the server going away) is not unreachable: the
gateway logged 'the memory service is unreachable ... (GENSEARCH_GATEWAY_MEMORY_ADDR)' and
told its caller 'the memory service is unavailable' for a service that was up and
answering. Now the caller still gets UNAVAILABLE / DOWNSTREAM_UNAVAILABLE (the call never
ran: safe to retry) saying it was refused and naming the service's setting, and the log
says the same, once per 30 s. Real gRPC client (the gateway's own), a real HTTP/2 server
on loopback that refuses every stream (tests/support/resetting_http2.py)."""

from __future__ import annotations

import logging

import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.auth import DEFAULT_TENANT, Identity, Role, forwarded_identity
from services.common.errors import Unavailable
from services.gateway.clients.base import ServiceClient
from services.gateway.clients.caller import Caller
from services.gateway.clients.memory import MemoryClient
from services.gateway.clients.retrieval import RetrievalClient
from services.gateway.settings import GatewaySettings
from tests.support.resetting_http2 import resetting_server

LOGGER = "gensearch.gateway.downstream"
TOKEN = "internal-test-token"
ALICE = Identity("alice", DEFAULT_TENANT, Role.READER)
CALLS = 3


@pytest.mark.parametrize(
    ("client_class", "method", "request_message"),
    [
        (MemoryClient, "ListConversations", mem_pb.ListConversationsRequest()),
        (RetrievalClient, "ListCollections", ret_pb.ListCollectionsRequest()),
    ],
    ids=["memory", "retrieval"],
)
async def test_a_refused_stream_is_a_refusal_not_an_unreachable_service(
    caplog: pytest.LogCaptureFixture,
    client_class: type[ServiceClient],
    method: str,
    request_message: object,
) -> None:
    caller = Caller(who=ALICE, identity=forwarded_identity(ALICE, TOKEN))
    caplog.set_level(logging.INFO, LOGGER)
    async with resetting_server() as server:
        client = client_class(server.target, GatewaySettings())
        service = client.service
        setting = f"GENSEARCH_{service.upper()}_MAX_CONCURRENT_STREAMS"
        try:
            for _ in range(CALLS):
                with pytest.raises(Unavailable) as caught:
                    await client.unary(method, request_message, caller, 10)
                err = caught.value
                assert err.reason == "DOWNSTREAM_UNAVAILABLE"  # retryable, as before
                assert err.metadata == {"service": service, "setting": setting}
                assert "refused the call" in err.message, err.message
                assert "never ran" in err.message, err.message
        finally:
            await client.close()
        # Each call reached the server and was refused (gRPC's retry policy sends a refused
        # one again: three times with the gateway's default policy).
        assert server.resets >= CALLS
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert not any("unreachable" in text for _, text in lines), lines
    warned = [text for level, text in lines if level == logging.WARNING]
    assert len(warned) == 1, lines  # one per 30 s, not one per refused call
    assert "REFUSED_STREAM" in warned[0] and setting in warned[0], warned
    assert f"GENSEARCH_GATEWAY_{service.upper()}_ADDR" not in warned[0], warned
