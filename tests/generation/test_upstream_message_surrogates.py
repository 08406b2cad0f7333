"""A provider's error message with half a UTF-16 surrogate pair (JSON "\\ud83d") is quoted
with a replacement character (real gRPC, a loopback fake provider). Before, the status
could not be encoded as UTF-8: the caller got a bare UNKNOWN/INTERNAL without ErrorInfo
instead of INVALID_ARGUMENT / UPSTREAM_REJECTED_REQUEST."""

from __future__ import annotations

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info


async def test_a_rejection_quoting_a_lone_surrogate_keeps_its_status(
    service: Service, fake: FakeOpenAI
) -> None:
    body = {"error": {"message": "bad \ud83d input", "type": "invalid_request_error"}}
    fake.enqueue(Behaviour.error(400, body=body))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "UPSTREAM_REJECTED_REQUEST"
    assert "bad \ufffd input" in (caught.value.details() or "")

    fake.enqueue(Behaviour.error(400, body=body))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=10
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "UPSTREAM_REJECTED_REQUEST"
