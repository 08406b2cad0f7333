"""The TypeScript client (clients/typescript): its example runs the README's main flow
against the real stack under Node, through generated code only, another streams a
generative search event by event, and a rich error arrives as the generated
google.rpc.ErrorInfo and BadRequest."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret

from services.devlaunch.redis_server import RedisProcess
from tests.cli.conftest import QuotaGateway, RunningStack, quota_gateway, running_stack
from tests.clients.conftest import (
    check_features_output,
    check_quota_import,
    create_numbers,
    run_node,
)
from tests.gateway.conftest import ALICE, StackFactory, fake_provider
from tests.support.fake_openai import Behaviour, FakeOpenAI

__all__ = ["quota_gateway", "running_stack"]  # the fixtures

EXAMPLE_MAX_LINES = 30
SRC = Path(__file__).resolve().parents[2] / "clients" / "typescript" / "src"


@pytest.mark.parametrize("example", ["example.ts", "stream.ts"])
def test_example_is_short_and_uses_generated_code_only(example: str) -> None:
    """Under 30 lines, and nothing converts by hand: the example imports only the generated
    modules, Connect and gatewayEnv.ts, which reads the gateway's address and key (no
    @bufbuild/protobuf helpers such as fromJson or create)."""
    source = (SRC / example).read_text()
    assert len(source.splitlines()) < EXAMPLE_MAX_LINES
    imported = set(re.findall(r'^import .* from "([^"]+)";$', source, re.M))
    assert imported, "no imports found"
    for module in imported:
        assert module.startswith(("./gen/", "@connectrpc/")) or module == "./gatewayEnv.js", module


@pytest.mark.slow  # compiles TypeScript, loads the local embedding model
async def test_example_runs_the_readme_flow(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    stack = await stack_factory()
    out = await run_node(node, typescript_build / "example.js", stack.gateway.port, "key-alice-123")
    lines = out.splitlines()
    assert "imported 3" in lines
    hits = [line.split(" ", 1)[1] for line in lines if line.startswith("hit ")]
    # Struct properties arrive as plain values: strings and numbers, no Value wrappers.
    assert hits[0] == "Dune 1965", out
    assert sorted(hits) == ["Dune 1965", "Foundation 1951", "Neuromancer 1984"]
    # The fake LLM echoes the prompt, so each teaser is the template filled from its hit.
    teasers = [line for line in lines if line.startswith("teaser ")]
    assert len(teasers) == 3, out
    for line in teasers:
        title = line.split(" ")[1]
        assert f"-> One-line teaser for {title}: " in line, line
    grouped = next(line for line in lines if line.startswith("grouped "))
    assert "Which is the oldest?" in grouped
    turns = [line.split(" ", 3)[2:] for line in lines if line.startswith("turn ")]
    assert len(turns) == 2, out
    (conversation, first), (again, second) = turns
    assert conversation and again == conversation, out
    # The echoed prompt holds the question (the answers are JSON strings: one line each).
    assert "Which book is set on a desert planet?" in json.loads(first)
    assert json.loads(second)
    # Both turns were stored in the one conversation, as alice's.
    stored = await stack.memory.ListInteractions(
        mem.ListInteractionsRequest(conversation_id=conversation), metadata=ALICE
    )
    assert [i.input for i in stored.interactions] == [
        "When was it written?",
        "Which book is set on a desert planet?",
    ]


@pytest.mark.slow
async def test_rich_error_reads_as_generated_error_info(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    stack = await stack_factory()
    out = await run_node(node, typescript_build / "errors.js", stack.gateway.port, "key-alice-123")
    error = json.loads(out)
    assert error["code"] == "InvalidArgument"
    assert error["reason"] == "BAD_NAME"
    assert error["domain"] == "gensearch"
    assert error["fields"] == ["collection.name"]
    assert "collection.name" in error["message"]


@pytest.mark.slow
async def test_health_through_the_vendored_proto(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    stack = await stack_factory()
    out = await run_node(node, typescript_build / "health.js", stack.gateway.port, "")
    assert out.strip() == "SERVING"


@pytest.mark.slow  # compiles TypeScript, loads the local embedding model
async def test_stream_example_prints_every_event(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    """stream.js prints the hits, each hit's token deltas and result, the grouped result
    and the done event; the deltas of a hit add up to its result."""
    stack = await stack_factory()
    out = await run_node(node, typescript_build / "stream.js", stack.gateway.port, "key-alice-123")
    lines = out.splitlines()
    # The hits come first, before any generated text.
    hits = dict(line.split(" ", 2)[1:] for line in lines if line.startswith("hit "))
    assert sorted(hits.values()) == ["Dune", "Neuromancer"], out
    assert all(line.startswith("hit ") for line in lines[: len(hits)]), out
    deltas: dict[str, str] = {}
    results: dict[str, str] = {}
    for line in lines:
        kind, _, rest = line.partition(" ")
        index, _, value = rest.partition(" ")
        if kind == "token":
            assert index not in results, f"a token after its hit's result:\n{out}"
            deltas[index] = deltas.get(index, "") + json.loads(value)
        elif kind == "result":
            results[index] = json.loads(value)
    # Every hit's result, each the template filled from its own hit (the fake LLM echoes the
    # prompt), streamed token by token.
    assert results.keys() == hits.keys(), out
    for index, title in hits.items():
        assert results[index].startswith(f"One-line teaser for {title}: "), out
        assert deltas[index] == results[index], out
    grouped = json.loads(next(line[8:] for line in lines if line.startswith("grouped ")))
    assert "Which is darker?" in grouped, out
    assert deltas["grouped"] == grouped, out
    # Done is last: two per-hit calls and the grouped one.
    done = lines[-1].split()
    assert done[0] == "done" and done[3:] == ["3", "upstream", "calls"], out
    assert int(done[1]) > 0, out
    calls = stack.fake.chat_requests
    assert len(calls) == 3 and all(call.json.get("stream") for call in calls)
    # The example deleted the collection it made.
    listed = await stack.retrieval.ListCollections(ret.ListCollectionsRequest(), metadata=ALICE)
    assert "StreamedBooks" not in [c.name for c in listed.collections]


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        server.reply = "backup answer"
        yield server


@pytest.mark.slow  # compiles TypeScript, loads the local embedding model
async def test_issue_13_fields_through_generated_code(
    stack_factory: StackFactory,
    node: str,
    typescript_build: Path,
    backup: FakeOpenAI,
    shared_redis: RedisProcess,
) -> None:
    """features.js: GenerateOnObjects by id (a missing id its own NOT_FOUND) and inline,
    the generation cache (the second call cached), a fallback chain (the pair that
    answered), an Ask retried with its request_id (replayed, the same turn, no LLM call),
    the reused request_id's ErrorInfo, and CheckStorage's limits."""
    stack = await stack_factory(
        redis_url=shared_redis.url,  # the gateway's Redis: the generation cache
        extra_providers=[fake_provider(backup, name="backup", default_model="b-model")],
    )
    stack.fake.by_model["primary"] = Behaviour.error(503)
    env = {"GENSEARCH_PRIMARY_MODEL": "primary", "GENSEARCH_BACKUP_PROVIDER": "backup"}
    out = await run_node(
        node, typescript_build / "features.js", stack.gateway.port, "key-alice-123", env
    )
    check_features_output(out, stack.fake)
    listed = await stack.retrieval.ListCollections(ret.ListCollectionsRequest(), metadata=ALICE)
    assert "Features" not in [c.name for c in listed.collections]


@pytest.mark.slow  # compiles TypeScript, loads the local embedding model
async def test_features_runs_as_docs_clients_md_shows_it(
    running_stack: RunningStack, node: str, typescript_build: Path
) -> None:
    """`node dist/features.js` with no GENSEARCH_PRIMARY_MODEL / _BACKUP_PROVIDER, as
    docs/clients.md runs it: its chain must not repeat the stack's default pair (that was
    INVALID_ARGUMENT DUPLICATE_FALLBACK, a crash); the primary answers, fallback_index 0."""
    assert "GENSEARCH_BACKUP_PROVIDER" not in os.environ
    port = int(running_stack.address.rsplit(":", 1)[1])  # `gensearch up`: its default is local
    out = await run_node(node, typescript_build / "features.js", port, "")
    fallback = next(line for line in out.splitlines() if line.startswith("fallback "))
    assert fallback.split()[2:4] == ["0", "1"], out


@pytest.mark.slow  # compiles TypeScript, waits out two quota windows
def test_import_waits_out_the_write_quota_like_the_python_client(
    running_stack: RunningStack, quota_gateway: QuotaGateway, node: str, typescript_build: Path
) -> None:
    """quota.js through a gateway whose tenant may write 10 objects per 8 s window: an
    import with waitForQuota false stops at the quota with the rejected object's reason,
    then one waits it out twice and resumes, each object written once."""
    name = create_numbers(running_stack)
    quota_gateway.early_in_a_window(margin=6.0)
    proc = subprocess.run(
        [node, str(typescript_build / "quota.js")],
        env={**os.environ, "GENSEARCH_ADDRESS": quota_gateway.address,
             "GENSEARCH_COLLECTION": name, "GENSEARCH_API_KEY": ""},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"quota.js failed:\n{proc.stdout}{proc.stderr}"
    stopped, waited = (json.loads(line) for line in proc.stdout.splitlines())
    check_quota_import(running_stack, name, stopped["stopped"], waited)
