"""The Go client (clients/go, generated with protoc-gen-go and protoc-gen-go-grpc): its
example runs the README's main flow against the real stack and reads a rich error as
genproto's ErrorInfo. Built in GOPATH mode against the Debian-packaged grpc-go and
protobuf sources (no module proxy here); skipped only where `go` is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.devlaunch.redis_server import RedisProcess
from tests.cli.conftest import QuotaGateway, RunningStack, quota_gateway, running_stack
from tests.clients.conftest import (
    check_features_output,
    check_quota_import,
    create_numbers,
    go_build,
    run_go,
)
from tests.gateway.conftest import StackFactory, fake_provider
from tests.support.fake_openai import Behaviour, FakeOpenAI

__all__ = ["quota_gateway", "running_stack"]  # the fixtures

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def go_example(gopath: Path) -> Path:
    return go_build(gopath, "example")


@pytest.fixture(scope="module")
def go_features(gopath: Path) -> Path:
    return go_build(gopath, "features")


@pytest.mark.slow  # compiles Go, loads the local embedding model
async def test_go_example_runs_the_readme_flow(
    stack_factory: StackFactory, go_example: Path
) -> None:
    stack = await stack_factory()
    out = await run_go(go_example, stack.gateway.port)
    lines = out.splitlines()
    assert "imported 3" in lines
    hits = [line for line in lines if line.startswith("hit ")]
    # Struct properties come back as Go values (numbers are float64, printed plainly).
    assert hits[0] == "hit Dune 1965", out
    assert sorted(hits) == ["hit Dune 1965", "hit Foundation 1951", "hit Neuromancer 1984"]
    teasers = [line for line in lines if line.startswith("teaser ")]
    assert len(teasers) == 3, out
    for line in teasers:
        assert f"-> One-line teaser for {line.split(' ')[1]}: " in line, line
    assert any(line.startswith("grouped ") and "Which is the oldest?" in line for line in lines)
    turns = [line.split(" ", 3)[2:] for line in lines if line.startswith("turn ")]
    assert len(turns) == 2 and turns[0][0] and turns[0][0] == turns[1][0], out
    assert "Which book is set on a desert planet?" in turns[0][1]
    assert "error InvalidArgument BAD_NAME gensearch" in lines
    assert "field collection.name" in lines


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        server.reply = "backup answer"
        yield server


@pytest.mark.slow  # compiles Go, loads the local embedding model
async def test_go_features_reads_issue_13_fields(
    stack_factory: StackFactory, go_features: Path, backup: FakeOpenAI, shared_redis: RedisProcess
) -> None:
    """features/main.go: GenerateOnObjects by id (a missing id its own NOT_FOUND) and
    inline, the generation cache, a fallback chain, an Ask retried with its request_id
    (replayed), a reused request_id's ErrorInfo and CheckStorage's limits."""
    stack = await stack_factory(
        redis_url=shared_redis.url,  # the gateway's Redis: the generation cache
        extra_providers=[fake_provider(backup, name="backup", default_model="b-model")],
    )
    stack.fake.by_model["primary"] = Behaviour.error(503)
    env = {"GENSEARCH_PRIMARY_MODEL": "primary", "GENSEARCH_BACKUP_PROVIDER": "backup"}
    out = await run_go(go_features, stack.gateway.port, env)
    check_features_output(out, stack.fake)


def test_go_example_is_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    if gofmt is None:
        pytest.skip("gofmt is not installed (Debian: golang-go)")
    proc = subprocess.run(
        [gofmt, "-l", str(ROOT / "clients" / "go")], capture_output=True, text=True, check=True
    )
    assert proc.stdout == "", f"not gofmt-formatted: {proc.stdout}"


@pytest.fixture(scope="module")
def go_quota(gopath: Path) -> Path:
    return go_build(gopath, "quota")


@pytest.mark.slow  # compiles Go, waits out two quota windows
def test_go_import_waits_out_the_write_quota_like_the_python_client(
    running_stack: RunningStack, quota_gateway: QuotaGateway, go_quota: Path
) -> None:
    """quota/main.go (the importer package) through a gateway whose tenant may write 10
    objects per 8 s window: NoWaitForQuota stops at the quota with the rejected object's
    reason, then an import waits it out twice and resumes, each object written once."""
    name = create_numbers(running_stack)
    quota_gateway.early_in_a_window(margin=6.0)
    proc = subprocess.run(
        [str(go_quota)],
        env={**os.environ, "GENSEARCH_ADDRESS": quota_gateway.address,
             "GENSEARCH_COLLECTION": name, "GENSEARCH_API_KEY": ""},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"quota failed:\n{proc.stdout}{proc.stderr}"
    stopped, waited = (json.loads(line) for line in proc.stdout.splitlines())
    check_quota_import(running_stack, name, stopped["stopped"], waited)
