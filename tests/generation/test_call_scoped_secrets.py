"""A caller's key (``x-*-api-key``) is hidden in its own call's log lines, errors and spans,
and nowhere else (services/common/logs.py, ``hide_in_this_call``).

The authenticator once put every such header's value into one process-wide list of
secrets, the last 256: a caller sending ``x-foo-api-key: failed`` had the word "failed" (a
model's or a collection's name, a tenant) shown as [REDACTED] in every tenant's log lines,
and a caller sending 256 junk keys pushed another call's key out of the list while that
call still ran. Real gRPC, a loopback fake LLM; log lines formatted by the services' own
JSON formatter, in the context they are logged in (as configure_logging's handler does)."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.auth import Authenticator
from services.common.logs import REDACTED, redact
from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.log_lines import formatted_lines
from tests.support.rpc import error_info

FLOOD = 300  # more keys than the old process-wide list held (256)


async def test_a_callers_key_hides_nothing_in_another_calls_lines_or_errors(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """Caller A sends the word "failed" and a model's name as keys; caller B's log line
    ("upstream call failed", its model) and error still say them."""
    svc = await start_service([fake_provider(fake)])
    model = "victim-model-of-tenant-b"
    fake.by_model[model] = Behaviour.error(400, f"the model {model} is not served here")
    gate = fake.gate = asyncio.Event()
    with formatted_lines() as logs:
        # A's call is in flight (at the gate) while B's runs.
        a_call = asyncio.ensure_future(
            svc.stub.Generate(
                pb.GenerateRequest(messages=[user("hi")]),
                metadata=(("x-foo-api-key", "failed"), ("x-bar-api-key", model)),
                timeout=30,
            )
        )
        await fake.wait_for_requests(1)
        fake.gate = None
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.stub.Generate(
                pb.GenerateRequest(model=model, messages=[user("hi")]), timeout=30
            )
        gate.set()
        assert (await a_call).text == "hi"
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert model in (caught.value.details() or "")
    assert REDACTED not in f"{caught.value.details()} {error_info(caught.value)}"
    [line] = logs.of("upstream call failed")  # B's own line, not [REDACTED] call failed
    assert line["model"] == model


async def test_a_flood_of_keys_unhides_no_other_calls_key(
    fake: FakeOpenAI, start_service: StartService, spans: InMemorySpanExporter
) -> None:
    """While a call waits for its provider, another caller sends 300 keys: the first call's
    error, log lines and spans still hide its key when the provider quotes it."""
    key = "gsk_live_victim_key_0123456789abcdef"  # no pattern catches this shape
    svc = await start_service([fake_provider(fake)])
    fake.by_model["slow"] = Behaviour.error(400, f"invalid credentials {key}")
    gate = fake.gate = asyncio.Event()
    with formatted_lines() as logs:
        victim = asyncio.ensure_future(
            svc.stub.Generate(
                pb.GenerateRequest(model="slow", messages=[user("hi")]),
                metadata=(("x-fake-api-key", key),),
                timeout=60,
            )
        )
        await fake.wait_for_requests(1)
        fake.gate = None  # the flood is answered at once; the victim waits at `gate`
        for batch in range(3):  # one caller, 100 keys a call (within the metadata bound)
            junk = tuple(
                (f"x-junk{i:03d}-api-key", f"junk-key-{i:03d}-abcdef")
                for i in range(batch * 100, (batch + 1) * 100)
            )
            reply = await svc.stub.Generate(
                pb.GenerateRequest(messages=[user("hi")]), metadata=junk, timeout=60
            )
            assert reply.text == "hi"
        gate.set()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await victim
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shown = [f"{caught.value.details()} {error_info(caught.value)}"]
    assert "invalid credentials" in shown[0]
    shown += logs.lines
    shown += [span.to_json() for span in spans.get_finished_spans()]
    assert logs.of("upstream call failed")
    assert [text for text in shown if key in text] == []


async def test_a_callers_key_is_hidden_in_its_own_calls_lines_and_errors(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """The call that carries a key has it hidden in its own log lines (its model, here:
    no pattern catches this key's shape) and its error, whatever another caller sends."""
    key = "own-caller-key-0123456789abcdef"
    svc = await start_service([fake_provider(fake)])
    fake.by_model[key] = Behaviour.error(400, f"model {key} refused")
    with formatted_lines() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(model=key, messages=[user("hi")]),
            metadata=(("x-other-api-key", key),),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert key not in f"{caught.value.details()} {error_info(caught.value)}"
    [line] = logs.of("upstream call failed")
    assert line["model"] == REDACTED
    assert [text for text in logs.lines if key in text] == []


async def test_a_calls_keys_stay_with_it_whoever_else_authenticates() -> None:
    """Each call (task) has its own keys: a flood of other calls' keys, each authenticated
    in its own task, neither removes a waiting call's key from its lines nor adds theirs;
    a thread the call starts with asyncio.to_thread has them too."""
    auth = Authenticator({}, "")
    key = "gsk_live_waiting_call_0123456789abcdef"
    flooded = asyncio.Event()
    log = logging.getLogger("tests.call_scoped_secrets")

    async def waiting_call() -> None:
        auth.authenticate((("x-fake-api-key", key), ("x-mine-api-key", "mine-only-word")))
        await flooded.wait()
        log.warning("upstream said: bad key %s", key)
        await asyncio.to_thread(log.warning, "from a thread: bad key %s", key)

    async def other_call(i: int) -> None:
        auth.authenticate(((f"x-flood{i:03d}-api-key", f"flood-key-{i:03d}-abcdef"),))
        log.warning("another call: mine-only-word %s", f"flood-key-{i:03d}-abcdef")

    with formatted_lines() as logs:
        waiting = asyncio.create_task(waiting_call())
        await asyncio.sleep(0)
        await asyncio.gather(*(asyncio.create_task(other_call(i)) for i in range(FLOOD)))
        flooded.set()
        await waiting
    mine = [json.loads(line)["message"] for line in logs.lines if "bad key" in line]
    assert mine == [f"upstream said: bad key {REDACTED}", f"from a thread: bad key {REDACTED}"]
    others = [json.loads(line)["message"] for line in logs.lines if "another call" in line]
    assert len(others) == FLOOD
    # Each of the others hid its own key and nothing of the waiting call's.
    assert all(message == f"another call: mine-only-word {REDACTED}" for message in others)
    # Nothing leaked into this (the test's) context either: its lines hide none of them.
    clear = f"{key} mine-only-word flood-key-000-abcdef flood-key-{FLOOD - 1:03d}-abcdef"
    assert redact(clear) == clear
