"""The Go client (clients/go, generated with protoc-gen-go and protoc-gen-go-grpc): its
example runs the README's main flow against the real stack and reads a rich error as
genproto's ErrorInfo. Built in GOPATH mode against the Debian-packaged grpc-go and
protobuf sources (no module proxy here); skipped only where `go` is not installed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import StackFactory

ROOT = Path(__file__).resolve().parents[2]
# Where Debian's golang-*-dev packages put their sources (GOPATH layout).
DEBIAN_GOCODE = Path("/usr/share/gocode")
# The import path of clients/go (clients/go/buf.gen.yaml generates under the same).
MODULE = "gensearch/clients/go"


@pytest.fixture(scope="module")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (Debian: golang-go golang-google-grpc-dev ...)")
    gopath = tmp_path_factory.mktemp("gopath")
    link = gopath / "src" / MODULE
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT / "clients" / "go")
    binary = gopath / "example"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOCODE}",
        "GOFLAGS": "",
    }
    proc = subprocess.run(
        [go, "build", "-o", str(binary), "./example"],
        cwd=link, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"go build failed:\n{proc.stdout}{proc.stderr}"
    return binary


@pytest.mark.slow  # compiles Go, loads the local embedding model
async def test_go_example_runs_the_readme_flow(
    stack_factory: StackFactory, go_example: Path
) -> None:
    stack = await stack_factory()
    env = {**os.environ, "GENSEARCH_ADDR": f"127.0.0.1:{stack.gateway.port}",
           "GENSEARCH_KEY": "key-alice-123"}  # fmt: skip
    # The servers run on this event loop: the client must not block it.
    proc = await asyncio.create_subprocess_exec(
        str(go_example), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    raw, err = await asyncio.wait_for(proc.communicate(), 240)
    out = raw.decode()
    assert proc.returncode == 0, f"the Go example failed:\n{out}{err.decode()}"
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


def test_go_example_is_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    if gofmt is None:
        pytest.skip("gofmt is not installed (Debian: golang-go)")
    proc = subprocess.run(
        [gofmt, "-l", str(ROOT / "clients" / "go")], capture_output=True, text=True, check=True
    )
    assert proc.stdout == "", f"not gofmt-formatted: {proc.stdout}"
