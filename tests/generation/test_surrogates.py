"""An answer escaping half a UTF-16 surrogate pair (JSON "\\ud83d", as from a server that
cut an emoji between two tokens) is delivered with U+FFFD in its place (real gRPC, a
loopback fake provider). Before, no protobuf string could carry it: Generate, the stream
and Ask failed with INTERNAL."""

from __future__ import annotations

from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, user
from tests.support.fake_openai import FakeOpenAI

# The fake JSON-encodes with ensure_ascii, so these go on the wire as \ud83d escapes; it
# streams one word a chunk, so the lone half is a chunk of its own.
REPLY = "smile \ud83d \ud83d\ude00 done"


async def test_lone_surrogates_become_replacement_characters(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = REPLY
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert reply.text == "smile \ufffd \U0001f600 done"  # the pair is joined, the half replaced
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=10
        )
    ]
    assert "".join(c.delta for c in chunks) == "smile \ufffd \U0001f600 done"
    assert chunks[-1].finish_reason == "stop"
