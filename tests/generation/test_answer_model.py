"""The model an answer names is reported only when it has a model name's shape; garbage
(a JSON object, a number, 300,000 characters, a newline) is replaced by the requested
model (real gRPC, a loopback fake provider). Before, a stream chunk naming an object
failed StreamGenerate with INTERNAL, and any length was echoed into replies and spans."""

from __future__ import annotations

from typing import Any

import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, user
from tests.support.fake_openai import FakeOpenAI


@pytest.mark.parametrize("model", [{"a": 1}, 123, "m" * 300_000, "bad\nname"])
async def test_a_malformed_answer_model_is_not_reported(
    service: Service, fake: FakeOpenAI, model: Any
) -> None:
    fake.model_override = model
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert (reply.text, reply.model) == ("hi", "fake-model")
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=10
        )
    ]
    assert "".join(c.delta for c in chunks) == "hi"
    assert chunks[-1].model == "fake-model"


async def test_a_model_name_the_answer_gives_is_reported(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.model_override = "fake-model-2024-08-06"
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert reply.model == "fake-model-2024-08-06"
