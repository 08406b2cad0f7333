"""Checking answers against a caller's JSON schema: tenants take turns.

A caller chooses both the schema and, through its prompt, the answer: a schema whose
``anyOf`` branches both recurse takes 2^depth steps on a nested answer, so every check of
such an answer runs to its budget (GENSEARCH_GENERATION_SCHEMA_VALIDATE_SECONDS), and an
invalid answer is checked twice (the corrective retry). Those checks ran on the event
loop's default executor, first come first served: one tenant's fan-out filled its few
threads (``min(32, CPUs + 4)``) and queued more behind them, and another tenant's answer,
however small, waited for all of them.

Real gRPC and the loopback fake. Assertions are on order (how many of the flood's checks
ended before the other tenant's answer came back), not on timings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from gensearch.generation.v1 import generation_service_pb2 as pb
from google.protobuf import struct_pb2
from pydantic import SecretStr

from services.generation.answering import CORRECTION
from tests.generation.conftest import StartService, fake_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.forwarded import forwarded

TOKEN = "generation-answer-checks-internal-token"
ALICE = forwarded(TOKEN, "alice", "acme", "reader")
BOB = forwarded(TOKEN, "bob", "beta", "reader")

# Both branches descend into "a" before one of them fails: 2^depth steps on a nested "a".
_NODE: dict[str, Any] = {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}}
SLOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {"n": {"anyOf": [{**_NODE, "required": ["z"]}, _NODE]}},
    "properties": {"a": {"$ref": "#/$defs/n"}},
}
# The threads asyncio.to_thread had (the default executor's size): the flood fills them
# twice over.
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)
FLOOD = 2 * DEFAULT_THREADS


def _nested(depth: int) -> str:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return json.dumps(value)


def _answer(body: dict[str, Any]) -> str:
    """Acme's prompts get an answer its schema takes the whole budget on; Bob's a small one."""
    first = str(body["messages"][0]["content"])
    return _nested(25) if first.startswith("acme") else '{"a": {}}'


def _acme_corrections(fake: FakeOpenAI) -> int:
    """Acme's checks that ended: each invalid answer's corrective retry reached the fake."""
    head = CORRECTION.split("{why}")[0]
    return sum(
        1
        for request in fake.chat_requests
        if str(request.json["messages"][0]["content"]).startswith("acme")
        and str(request.json["messages"][-1]["content"]).startswith(head)
    )


def _request(text: str) -> pb.GenerateRequest:
    schema = struct_pb2.Struct()
    schema.update(SLOW_SCHEMA)
    return pb.GenerateRequest(
        messages=[user(text)], response_format=pb.ResponseFormat(json_schema=schema)
    )


async def test_one_tenants_slow_answers_do_not_hold_another_tenants_check(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    fake.reply = _answer
    service = await start_service(
        [fake_provider(fake, max_concurrency=None)],
        internal_token=SecretStr(TOKEN),
        schema_validate_seconds=0.5,
    )

    async def acme(i: int) -> None:
        await service.stub.Generate(_request(f"acme {i}"), metadata=ALICE, timeout=120)

    flood = [asyncio.create_task(acme(i)) for i in range(FLOOD)]
    try:
        # The first of acme's checks has ended: every other one is running or queued.
        for _ in range(1200):
            if _acme_corrections(fake):
                break
            await asyncio.sleep(0.05)
        assert _acme_corrections(fake), "no check of acme's answers ended"
        reply = await service.stub.Generate(_request("beta"), metadata=BOB, timeout=120)
        ended_before = _acme_corrections(fake)
    finally:
        for task in flood:
            task.cancel()
        for task in flood:
            with contextlib.suppress(BaseException):
                await task
    assert dict(reply.structured) == {"a": struct_pb2.Struct()}
    # In turns: Bob's check waits for at most the check running and one more of acme's.
    # Before, it waited for the whole first wave and the second one to start.
    assert ended_before < DEFAULT_THREADS, (ended_before, DEFAULT_THREADS)
