"""An operator's view of an LLM endpoint outage in the generation service's log: one
WARNING per outage naming the provider and its setting, not one per call (before: a WARNING
per failed call and one per retry, four lines a call while the endpoint was down), and one
INFO line when it answers again. A caller's own base_url is the caller's affair: no
WARNING (real HTTP to a scripted fake server, real gRPC)."""

from __future__ import annotations

import logging

import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from grpc.aio import AioRpcError

from tests.generation.conftest import Service, StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI

CALLS = 3
# Where upstream calls, their retries and their outages are logged.
LOGGERS = ("gensearch.generation.openai", "gensearch.upstream.retry")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name in LOGGERS and r.levelno >= logging.WARNING
    ]


def _recovered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name in LOGGERS and "answering again" in r.getMessage()
    ]


async def _fail(service: Service, calls: int) -> None:
    for _ in range(calls):
        with pytest.raises(AioRpcError):
            await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)


async def test_an_endpoint_outage_is_one_warning_and_its_end_one_line(
    service: Service, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert reply.text == "hi"
    assert not _recovered(caplog)  # no outage yet
    fake.fail_next(100, Behaviour.error(503))
    await _fail(service, CALLS)
    down = _warnings(caplog)
    assert len(down) == 1, down
    assert "'fake'" in down[0] and "GENSEARCH_GENERATION_FAKE_BASE_URL" in down[0]
    assert "HTTP 503" in down[0]
    fake.clear_queue()
    for _ in range(CALLS):
        await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
    assert len(_recovered(caplog)) == 1
    fake.fail_next(100, Behaviour.error(503))
    await _fail(service, CALLS)  # within 30 s of the first warning: at most one per 30 s
    assert len(_warnings(caplog)) == 1


async def test_a_requests_own_endpoint_failing_is_no_warning(
    start_service: StartService, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    service = await start_service([fake_provider(fake)], allowed_hosts="http://127.0.0.1")
    caplog.set_level(logging.INFO)
    fake.fail_next(100, Behaviour.error(503))
    request = pb.GenerateRequest(messages=[user("hi")], base_url=fake.base_url)
    with pytest.raises(AioRpcError) as caught:
        await service.stub.Generate(request, timeout=10)
    assert "HTTP 503" in (caught.value.details() or "")  # it did reach the endpoint
    assert not _warnings(caplog)
