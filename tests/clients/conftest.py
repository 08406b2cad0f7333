"""The generated clients run against the whole stack of tests/gateway (real memory on
Redis, retrieval on the embedded Qdrant engine, generation on the loopback fake LLM, the
gateway in front), and Node with the TypeScript client's pinned packages."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gensearch.client import Gensearch, types

from tests.cli.conftest import RunningStack
from tests.gateway.conftest import fake, shared_redis, stack_embedder, stack_factory
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import gateway_process

__all__ = ["fake", "gateway_process", "shared_redis", "stack_embedder", "stack_factory"]

ROOT = Path(__file__).resolve().parents[2]
# The id the features programs name beside two real ones (never written).
MISSING_ID = "7e1f1a52-9c0e-4b8b-8d53-41e1d0a4c2aa"


def check_features_output(out: str, llm: FakeOpenAI) -> None:
    """What clients/go/features and clients/typescript/src/features.ts print, checked alike:
    GenerateOnObjects by id twice (the second from the cache) with one id missing, inline
    objects, a fallback chain, Ask's request_id replayed, a reused key refused, memory's
    limits, and one Ask paid for (the replay and the refused reuse made no call)."""
    lines = out.splitlines()
    named = [line.split(" ", 4)[1:] for line in lines if line.startswith("named ")]
    assert len(named) == 6, out
    for round_, cached in (("first", "false"), ("again", "true")):
        rows = [row for row in named if row[0] == round_]
        assert [row[3] for row in rows[:2]] == ['"Teaser for Dune"', '"Teaser for Solaris"'], out
        assert [row[2] for row in rows[:2]] == [cached, cached], out
        assert rows[2][1:] == [MISSING_ID, "false", '"OBJECT_NOT_FOUND"'], out
    assert 'inline "A menu line for tea at 3 EUR"' in lines, out
    assert 'fallback backup 1 2 "backup answer"' in lines, out
    assert "ask false true true true 0" in lines, out
    assert "reused InvalidArgument REQUEST_ID_REUSED request_id" in lines, out
    limits = next(line for line in lines if line.startswith("limits ")).split()
    assert int(limits[1]) > 0 and int(limits[2]) == 128, out
    asks = [r for r in llm.chat_requests if "Which book is set on" in json.dumps(r.json)]
    assert len(asks) == 1, out


_numbers = itertools.count()


def create_numbers(stack: RunningStack) -> str:
    """A collection for the quota programs (clients/typescript/src/quota.ts,
    clients/go/quota): an int property ``n``, 2-dimensional vectors of the caller's."""
    name = f"ClientQuota{next(_numbers)}_{os.getpid()}"
    with Gensearch(stack.address, timeout=60) as client:
        client.collections.create(
            name, {"n": "int"}, vectorizer=types.Vectorizer(kind="none", dimensions=2)
        )
    return name


def check_quota_import(
    stack: RunningStack, name: str, stopped: dict[str, Any], waited: dict[str, Any]
) -> None:
    """What the TypeScript and Go quota programs print, checked as the Python client's
    import is (tests/client/test_import_quota.py), through a gateway whose tenant may
    write 10 objects a window. ``stopped``: 15 objects (object 3 bad) in messages of 5,
    not waiting: stopped at the third message, the rejected object with its reason.
    ``waited``: 20 objects (2 and 17 bad) in messages of 5, streams of 15, the window
    used up: waits, resumes after what the gateway received, each object sent once."""
    metadata = stopped["metadata"]
    assert stopped["reason"] == "QUOTA_EXCEEDED" and stopped["hasReason"] is True, stopped
    assert metadata["quota"] == "objects_written_per_minute", stopped
    assert (metadata["received_count"], metadata["imported_count"]) == ("10", "9"), stopped
    assert metadata["rejected_indexes"] == "3" and 0 < stopped["retryDelayMs"] <= 8000, stopped
    [error] = stopped["objectErrors"]
    assert (error["index"], error["field"]) == (3, "properties.n") and error["message"], stopped
    assert (waited["received"], waited["imported"], waited["sent"]) == (20, 18, 20), waited
    assert sorted(e["index"] for e in waited["errors"]) == [2, 17], waited
    for e in waited["errors"]:  # object 2's came back in a quota stop, 17's in an answer
        assert e["field"] == "properties.n" and "alone" not in e["message"], waited
    assert not waited["errorsTruncated"], waited
    # Each wait (ms) was RetryInfo's delay, 50 ms and a random tenth of it at most.
    assert waited["waits"], waited
    for wait, delay in waited["waits"]:
        assert 0 <= delay <= 8000 and delay + 50 <= wait <= delay * 1.1 + 51, waited
    with Gensearch(stack.address, timeout=60) as client:
        hits = client.collections.get(name).query.near_vector([1.0, 0.0], limit=100).hits
    assert len({hit.id for hit in hits}) == len(hits)
    stored = sorted(int(hit.properties["n"]) for hit in hits)
    assert stored == sorted(
        [100 + i for i in range(10) if i != 3] + [i for i in range(20) if i not in (2, 17)]
    )


TYPESCRIPT = ROOT / "clients" / "typescript"


def _missing(reason: str) -> None:
    # Node.js 20 is a requirement (README): in CI a missing Node is a failure, as for kubectl.
    if os.environ.get("CI") and not os.environ.get("GENSEARCH_ALLOW_SKIP_NODE"):
        pytest.fail(reason + " (set GENSEARCH_ALLOW_SKIP_NODE=1 to skip deliberately)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        _missing("node is not installed: the TypeScript client cannot run")
    assert found is not None
    if not (TYPESCRIPT / "node_modules" / ".bin" / "tsc").exists():
        _missing("clients/typescript/node_modules is missing: `npm ci --prefix clients/typescript`")
    return found


@pytest.fixture(scope="session")
def typescript_build(node: str) -> Path:
    """Type-checks and compiles clients/typescript/src (examples and generated code) to
    dist/: a type error in either fails here."""
    tsc = TYPESCRIPT / "node_modules" / "typescript" / "bin" / "tsc"
    proc = subprocess.run(
        [node, str(tsc), "-p", "tsconfig.json"],
        cwd=TYPESCRIPT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"tsc failed:\n{proc.stdout}{proc.stderr}"
    return TYPESCRIPT / "dist"


# Where Debian's golang-*-dev packages put their sources (GOPATH layout).
DEBIAN_GOCODE = Path("/usr/share/gocode")
# The import path of clients/go (clients/go/buf.gen.yaml generates under the same).
MODULE = "gensearch/clients/go"


@pytest.fixture(scope="module")
def gopath(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GOPATH whose src/gensearch/clients/go is clients/go."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed (Debian: golang-go golang-google-grpc-dev ...)")
    path = tmp_path_factory.mktemp("gopath")
    link = path / "src" / MODULE
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT / "clients" / "go")
    return path


def go_build(gopath: Path, package: str) -> Path:
    """Builds clients/go/<package> (a main package) in GOPATH mode; returns the binary."""
    go = shutil.which("go")
    assert go is not None
    binary = gopath / package
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOCODE}",
        "GOFLAGS": "",
    }
    proc = subprocess.run(
        [go, "build", "-o", str(binary), f"./{package}"],
        cwd=gopath / "src" / MODULE, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"go build failed:\n{proc.stdout}{proc.stderr}"
    return binary


# Where nothing listens: a program that reads a deprecated variable first fails.
NOWHERE = "127.0.0.1:1"


def program_env(port: int, key: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """A TypeScript or Go program's environment: the gateway (host:port) and the key under
    the names the Python client and CLI read. The deprecated former names are set too, to
    nowhere and a wrong key: the new names must win (clients/go/gatewayenv,
    clients/typescript/src/gatewayEnv.ts)."""
    return {
        **os.environ,
        "GENSEARCH_ADDRESS": f"127.0.0.1:{port}",
        "GENSEARCH_API_KEY": key,
        "GENSEARCH_URL": f"http://{NOWHERE}",
        "GENSEARCH_ADDR": NOWHERE,
        "GENSEARCH_KEY": "key-deprecated-and-wrong",
        **(extra_env or {}),
    }


async def start_program(
    argv: list[str], env: dict[str, str], *, stdin: bool = False
) -> asyncio.subprocess.Process:
    # Asynchronously: the servers run on this event loop, the program must not block it.
    return await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.PIPE if stdin else None,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, name: str) -> str:
    """The program's output once it has exited by itself (0, or the test fails)."""
    raw, err = await asyncio.wait_for(proc.communicate(), 240)
    out = raw.decode()
    assert proc.returncode == 0, f"{name} failed:\n{out}{err.decode()}"
    return out


async def run_go(binary: Path, port: int, extra_env: dict[str, str] | None = None) -> str:
    env = program_env(port, "key-alice-123", extra_env)
    return await finish(await start_program([str(binary)], env), binary.name)


async def run_node(
    node: str, script: Path, port: int, key: str, extra_env: dict[str, str] | None = None
) -> str:
    env = program_env(port, key, extra_env)
    return await finish(await start_program([node, str(script)], env), script.name)


async def next_line(proc: asyncio.subprocess.Process) -> str:
    """A program's next line of output (it must not have ended)."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line, "the program ended early"
    return line.decode().rstrip("\n")


def go_on(proc: asyncio.subprocess.Process) -> None:
    """Lets a program waiting for a line on stdin go on."""
    assert proc.stdin is not None
    proc.stdin.write(b"\n")


@contextlib.asynccontextmanager
async def talking_to(
    argv: list[str], env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A program the test talks to (its stdout, a line on its stdin), killed if the test
    ends first."""
    proc = await start_program(argv, env, stdin=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
