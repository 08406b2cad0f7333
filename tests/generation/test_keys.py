"""Provider API keys: per-request metadata wins over the environment; never leaked."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.devlaunch.processes import free_port
from services.generation.settings import ProviderError
from tests.generation.conftest import (
    FAKE_KEY_ENV,
    Service,
    StartService,
    fake_provider,
    make_settings,
    user,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

# Other callers' keys sent while a call waits: more than the process-wide list of callers'
# keys once held (256), which pushed the oldest out.
OTHER_CALLERS = 300
ENV_KEY = "sk-envkey-0123456789abcdef"
REQUEST_KEY = "sk-requestkey-fedcba9876543210"


async def test_env_key_is_sent(
    service: Service, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAKE_KEY_ENV, ENV_KEY)
    await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert fake.chat_requests[-1].headers["Authorization"] == f"Bearer {ENV_KEY}"


async def test_request_key_wins_over_env_key(
    service: Service, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAKE_KEY_ENV, ENV_KEY)
    metadata = (("x-fake-api-key", REQUEST_KEY),)
    await service.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=5
    )
    assert fake.chat_requests[-1].headers["Authorization"] == f"Bearer {REQUEST_KEY}"
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=5
        )
    ]
    assert chunks[-1].finish_reason == "stop"
    assert fake.chat_requests[-1].headers["Authorization"] == f"Bearer {REQUEST_KEY}"


async def test_no_key_no_authorization_header(service: Service, fake: FakeOpenAI) -> None:
    await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert "Authorization" not in fake.chat_requests[-1].headers


async def test_another_providers_key_header_is_ignored(service: Service, fake: FakeOpenAI) -> None:
    await service.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")]),
        metadata=(("x-openai-api-key", REQUEST_KEY),),
        timeout=5,
    )
    assert "Authorization" not in fake.chat_requests[-1].headers


async def test_keys_never_reach_logs_errors_or_debug(
    fake: FakeOpenAI,
    start_service: StartService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(FAKE_KEY_ENV, ENV_KEY)
    svc = await start_service([fake_provider(fake)])
    fake.api_key = REQUEST_KEY  # the env key is refused upstream (401)
    details: list[str] = []

    # Env key: rejected upstream -> UNAUTHENTICATED, no key in the message.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "UPSTREAM_UNAUTHENTICATED"
    details.append(str(caught.value))

    # Request key through retries, a failure and a success with debug output.
    metadata = (("x-fake-api-key", REQUEST_KEY),)
    fake.enqueue(Behaviour.error(503), Behaviour.error(400, f"bad key {REQUEST_KEY}"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=5
        )
    details.append(str(caught.value))
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], debug=True), metadata=metadata, timeout=5
    )
    chunks = [
        c
        async for c in svc.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")], debug=True),
            metadata=metadata,
            timeout=5,
        )
    ]
    assert fake.chat_requests[-1].headers["Authorization"] == f"Bearer {REQUEST_KEY}"
    details += [str(reply), str(chunks[-1])]
    assert caplog.records, "the failure paths must have logged something"
    for key in (ENV_KEY, REQUEST_KEY):
        assert key not in caplog.text
        for record in caplog.records:
            assert key not in str(record.__dict__)
        for text in details:
            assert key not in text
    assert "Authorization" not in reply.debug.request_body


def _echoes(key: str) -> dict[str, Any]:
    """Ways an upstream's error body may quote a key, each as the raw text of a 400 body."""
    mid = len(key) // 2
    return {
        "percent": f"bad key {key.replace('-', '%2D')}",
        "percent-all": "bad key " + "".join(f"%{ord(c):02X}" for c in key),
        "double-percent": f"bad key {key.replace('-', '%252d')}",
        "json-unicode": f"bad key {key.replace('-', chr(92) + 'u002d')}",
        "html": f"bad key {key.replace('-', '&#45;')}",
        "split": f"bad key {key[:mid]}\n    {key[mid:]}",
        "escaped-newline": f"bad key {key[:mid]}{chr(92)}n{key[mid:]}",
        "base64-bearer": "bad auth " + base64.b64encode(f"Bearer {key}".encode()).decode(),
        "base64-basic": "bad auth " + base64.b64encode(f"user:{key}".encode()).decode(),
        "base64-url": "bad auth " + base64.urlsafe_b64encode(f">>{key}".encode()).decode(),
        "hex": "bad key " + key.encode().hex(),
        "cut-start": f"bad key ...{key[len(key) // 3 :]}",
        "cut-end": f"bad key {key[: len(key) * 2 // 3]}...",
    }


@pytest.mark.parametrize("encoding", sorted(_echoes(REQUEST_KEY)))
async def test_an_encoded_echo_of_the_key_is_redacted(
    service: Service, fake: FakeOpenAI, encoding: str
) -> None:
    """An upstream quoting the caller's key percent-encoded, JSON- or HTML-escaped, split
    across lines, in base64 or in hex, or a good part of it: none of it reaches the
    caller's error."""
    body = _echoes(REQUEST_KEY)[encoding]
    fake.enqueue(Behaviour.error(400, body))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")]),
            metadata=(("x-fake-api-key", REQUEST_KEY),),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "[REDACTED]" in details and "bad " in details, details
    tail = REQUEST_KEY[-8:]
    for shown in (details, str(error_info(caught.value))):
        for form in _echoes(REQUEST_KEY).values():
            assert form.split(" ", 2)[2] not in shown
        assert tail not in shown and tail.encode().hex() not in shown


async def test_provider_requiring_a_key_fails_fast(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service([fake_provider(fake, requires_key=True)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "MISSING_PROVIDER_API_KEY"
    assert "x-fake-api-key" in (caught.value.details() or "")
    # The header to send it in is the field, as any other refusal names its field.
    assert error_info(caught.value).metadata["field"] == "x-fake-api-key"
    assert fake.chat_requests == []


async def test_openai_preset_without_key_fails_fast(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing leaves the machine: the preset requires a key and none is configured here.
    monkeypatch.delenv("ANYSCALE_APIKEY", raising=False)
    monkeypatch.delenv("ANYSCALE_API_KEY", raising=False)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(provider="anyscale", messages=[user("hi")]), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ANYSCALE_APIKEY" in (caught.value.details() or "")


async def test_service_process_never_logs_keys(fake: FakeOpenAI) -> None:
    """The real entry point (``python -m services.generation``) with JSON logs on stderr at
    DEBUG level: neither key shows up, whatever happens upstream."""
    port = free_port()
    env = {
        **os.environ,
        "GENSEARCH_GENERATION_PORT": str(port),
        "GENSEARCH_GENERATION_METRICS_PORT": "0",
        "GENSEARCH_LOG_LEVEL": "DEBUG",
        "GENSEARCH_GENERATION_DEFAULT_PROVIDER": "fake",
        "GENSEARCH_GENERATION_PROVIDERS": json.dumps([fake_provider(fake)]),
        "GENSEARCH_GENERATION_RETRY_BASE_BACKOFF": "0.01",
        FAKE_KEY_ENV: ENV_KEY,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.generation",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub: Any = pb_grpc.GenerationServiceStub(channel)
            fake.api_key = REQUEST_KEY
            fake.enqueue(Behaviour.error(500))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = (("x-fake-api-key", REQUEST_KEY),)
            fake.enqueue(Behaviour.reset())
            reply = await stub.Generate(
                pb.GenerateRequest(messages=[user("hello")]), metadata=metadata, timeout=10
            )
            assert reply.text == "hello"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    logs = stderr.decode()
    assert "retrying upstream call" in logs  # the fault paths did log
    assert "upstream call failed" in logs
    assert ENV_KEY not in logs
    assert REQUEST_KEY not in logs


def test_an_operators_base_url_with_credentials_stops_the_service() -> None:
    """``https://user:password@host/v1`` never worked (aiohttp refuses credentials in a URL
    beside an Authorization header: every call failed as "the body is not JSON"), and
    ListModels and ``debug`` answers showed the password to callers. Refused at start,
    without quoting it."""
    password = "basic-auth-pw-4711"
    for url in (
        f"https://llm-user:{password}@llm.example/v1",
        f"https://{password}@llm.example/v1",
        f"https://llm-user:{password}@llm@llm.example/v1",
    ):
        settings = make_settings(
            [{"name": "fake", "base_url": url, "default_model": "m", "api_key_env": [FAKE_KEY_ENV]}]
        )
        with pytest.raises(ProviderError) as caught:
            settings.provider_configs({})
        assert "credentials" in str(caught.value)
        assert password not in str(caught.value)


@pytest.mark.parametrize("field", ["model", "finish_reason"])
async def test_a_key_the_provider_names_its_answer_by_reaches_no_reply_or_span(
    fake: FakeOpenAI,
    start_service: StartService,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
) -> None:
    """A provider (or a proxy in front of it) that answers with a key as the answer's
    ``model`` or ``finish_reason``: both went as they came into the reply and the span
    (``gen_ai.response.model``, ``gen_ai.response.finish_reasons``), so the operator's key
    reached the caller. A name holding a secret is now no name: the requested model, a
    redacted finish reason."""
    monkeypatch.setenv(FAKE_KEY_ENV, ENV_KEY)
    svc = await start_service([fake_provider(fake)])
    shown: list[str] = []
    for key, metadata in ((ENV_KEY, ()), (REQUEST_KEY, (("x-fake-api-key", REQUEST_KEY),))):
        setattr(fake, f"{field}_override", key)
        reply = await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=5
        )
        chunks = [
            c
            async for c in svc.stub.StreamGenerate(
                pb.StreamGenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=5
            )
        ]
        assert reply.text == "hi" and chunks[-1].finish_reason
        if field == "model":
            assert reply.model == chunks[-1].model == "fake-model"
        shown += [str(reply), *map(str, chunks)]
    shown += [span.to_json() for span in spans.get_finished_spans()]
    assert any("gen_ai.response.model" in text for text in shown)  # the spans were kept
    for key in (ENV_KEY, REQUEST_KEY):
        assert [text for text in shown if key in text] == []


async def test_a_key_pushed_out_of_the_redactor_meanwhile_is_still_not_quoted(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """The redactor once kept the latest 256 callers' keys, process-wide. A call whose
    answer took long enough for that many other callers' keys to arrive had its own key
    forgotten by the time the provider's error quoted it: a key not shaped like OpenAI's
    (``sk-...``) then went into the error as it was."""
    key = "gsk_live_caller_key_0123456789abcdef"
    svc = await start_service([fake_provider(fake)])
    fake.by_model["slow"] = Behaviour.error(400, f"invalid credentials {key}")
    fake.gate = asyncio.Event()
    call = asyncio.ensure_future(
        svc.stub.Generate(
            pb.GenerateRequest(model="slow", messages=[user("hi")]),
            metadata=(("x-fake-api-key", key),),
            timeout=60,
        )
    )
    await fake.wait_for_requests(1)
    others = [
        svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")]),
            metadata=(("x-fake-api-key", f"other-callers-key-{i:04d}-abcdef"),),
            timeout=60,
        )
        for i in range(OTHER_CALLERS)
    ]
    await fake.wait_for_requests(len(others) + 1, timeout=60)
    fake.gate.set()
    assert all(reply.text == "hi" for reply in await asyncio.gather(*others))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shown = f"{caught.value.details()} {error_info(caught.value)}"
    assert "invalid credentials" in shown
    assert key not in shown


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("field", ["model", "finish_reason"])
async def test_a_key_pushed_out_of_the_redactor_meanwhile_names_no_answer(
    fake: FakeOpenAI,
    start_service: StartService,
    spans: InMemorySpanExporter,
    field: str,
    stream: bool,
) -> None:
    """As above for an answer that succeeds: a call whose answer came after
    256 other callers' keys had its own key forgotten by the redactor,
    so a provider naming its answer by that key (``model``, ``finish_reason``) had it pass
    the check that keeps a secret out of the reply and the span (spans are not redacted)."""
    key = "gsk_live_caller_key_0123456789abcdef"
    svc = await start_service([fake_provider(fake)])
    gate = fake.gate = asyncio.Event()
    metadata = (("x-fake-api-key", key),)

    async def first() -> list[str]:
        if not stream:
            reply = await svc.stub.Generate(
                pb.GenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=60
            )
            return [str(reply)]
        return [
            str(chunk)
            async for chunk in svc.stub.StreamGenerate(
                pb.StreamGenerateRequest(messages=[user("hi")]), metadata=metadata, timeout=60
            )
        ]

    call = asyncio.ensure_future(first())
    await fake.wait_for_requests(1)
    fake.gate = None  # the others are answered at once; the first waits at `gate`
    others = await asyncio.gather(
        *(
            svc.stub.Generate(
                pb.GenerateRequest(messages=[user("hi")]),
                metadata=(("x-fake-api-key", f"other-callers-key-{i:04d}-abcdef"),),
                timeout=60,
            )
            for i in range(OTHER_CALLERS)
        )
    )
    assert all(reply.text == "hi" for reply in others)
    setattr(fake, f"{field}_override", key)
    gate.set()
    shown = await call
    assert any("hi" in text for text in shown)
    shown += [span.to_json() for span in spans.get_finished_spans()]
    assert any("gen_ai.response.model" in text for text in shown)  # the spans were kept
    assert [text for text in shown if key in text] == []
