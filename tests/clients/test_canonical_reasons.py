"""A status without ErrorInfo reads, in the TypeScript and Go clients as in the Python
client, with the code's canonical name as its reason (`UNAVAILABLE`), the spelling of the
services' own generic reasons (operations.md: "Each code's generic reason is its own
name").

Before, TypeScript gave Connect's name and Go codes.Code's String(), `Unavailable`: a
connection lost to a restarting gateway read `Unavailable` where the gateway's own
UNAVAILABLE (a service behind it down) read `UNAVAILABLE`, so one check had to know both.
No stack is needed: the failures are made in each language from a bare status.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc

from tests.clients.conftest import DEBIAN_GOCODE

# Every code but OK, by number, with its canonical name (Python's grpc names them so).
CANONICAL = {code.value[0]: code.name for code in grpc.StatusCode if code.value[0]}


def test_typescript_reads_a_bare_status_as_its_canonical_name(
    node: str, typescript_build: Path
) -> None:
    module = json.dumps(str(typescript_build / "rpcError.js"))
    script = f"""
      const {{ ConnectError }} = await import("@connectrpc/connect");
      const {{ GensearchError }} = await import({module});
      const codes = {json.dumps(sorted(CANONICAL))};
      console.log(JSON.stringify(Object.fromEntries(codes.map((c) =>
        [c, GensearchError.from(new ConnectError("bare", c)).reason]))));
    """
    proc = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=typescript_build.parent, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {int(k): v for k, v in json.loads(proc.stdout).items()} == CANONICAL


GO_PROGRAM = """package main

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gensearch/clients/go/rpcerror"
)

func main() {
	reasons := map[int]string{}
	for code := codes.Canceled; code <= codes.Unauthenticated; code++ {
		failure, _ := rpcerror.From(status.Error(code, "bare"))
		reasons[int(code)] = string(failure.Reason)
	}
	out, _ := json.Marshal(reasons)
	fmt.Println(string(out))
}
"""


def test_go_reads_a_bare_status_as_its_canonical_name(gopath: Path) -> None:
    go = shutil.which("go")
    assert go is not None
    program = gopath / "src" / "reasonprobe"
    program.mkdir(exist_ok=True)
    (program / "main.go").write_text(GO_PROGRAM, encoding="utf-8")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOCODE}",
        "GOFLAGS": "",
    }
    proc = subprocess.run(
        [go, "run", "."], cwd=program, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {int(k): v for k, v in json.loads(proc.stdout).items()} == CANONICAL
