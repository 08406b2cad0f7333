"""A finish reason no protobuf string can carry (half a UTF-16 surrogate pair, as JSON
"\\ud83d") or of any length still ends the answer normally (real gRPC, a loopback fake
provider). Before, the lone surrogate failed Generate and StreamGenerate with INTERNAL."""

from __future__ import annotations

from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, user
from tests.support.fake_openai import FakeOpenAI


async def test_a_malformed_finish_reason_is_made_sendable(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.finish_reason_override = "st\ud83dop" + "p" * 1000
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert reply.text == "hi"
    assert reply.finish_reason.startswith("st\ufffdop") and len(reply.finish_reason) == 64
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=10
        )
    ]
    assert "".join(c.delta for c in chunks) == "hi"
    assert chunks[-1].finish_reason == reply.finish_reason


async def test_a_finish_reason_too_long_to_be_one_is_unknown(
    service: Service, fake: FakeOpenAI
) -> None:
    """Each finish reason was redacted whole before it was cut to 64 characters: a stream
    may send one per chunk, each as long as a line may be (megabytes), and redaction costs
    in the text's length on the event loop. One past MAX_FINISH_REASON_READ is no finish
    reason a client can use: it is reported as "unknown", unread."""
    fake.finish_reason_override = "stop" + "p" * 5000
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert (reply.text, reply.finish_reason) == ("hi", "unknown")
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=10
        )
    ]
    assert chunks[-1].finish_reason == "unknown"
