"""A provider reporting impossible token counts (negative, or past what an int32 holds)
still answers: its usage is estimated instead (real gRPC, a loopback fake provider).

Before, a negative count failed the call with INTERNAL (a Prometheus counter refuses a
negative increment) and a count over 2**31 - 1 too (the int32 Usage field refused it)."""

from __future__ import annotations

from typing import Any

import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, user
from tests.support.fake_openai import FakeOpenAI

IMPLAUSIBLE = [
    {"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12},
    {"prompt_tokens": 99_999_999_999, "completion_tokens": 3, "total_tokens": 100_000_000_002},
    {"prompt_tokens": 3, "completion_tokens": 2**31, "total_tokens": 2**31 + 3},
]


@pytest.mark.parametrize("usage", IMPLAUSIBLE)
async def test_implausible_usage_is_estimated(
    service: Service, fake: FakeOpenAI, usage: dict[str, Any]
) -> None:
    fake.usage_override = usage
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert reply.text == "hi"
    assert reply.usage.estimated and reply.usage.prompt_tokens >= 0
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), timeout=10
        )
    ]
    assert "".join(c.delta for c in chunks) == "hi"
    assert chunks[-1].usage.estimated and chunks[-1].finish_reason == "stop"


async def test_a_plausible_total_is_kept(service: Service, fake: FakeOpenAI) -> None:
    fake.usage_override = {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 1)
    assert reply.usage.total_tokens == 5 and not reply.usage.estimated
