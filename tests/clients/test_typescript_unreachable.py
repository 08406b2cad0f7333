"""The TypeScript programs at an address where nothing listens: one line naming the address
and what to check (src/rpcError.ts), not Node's bare "connect ECONNREFUSED 127.0.0.1:…".

Before, health.js died on an unhandled ConnectError whose message was Node's text alone.
A real loopback port, bound and never listened on; no stack is needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest


def _run_at_a_closed_port(node: str, program: Path) -> tuple[str, str]:
    """Runs ``program`` against a loopback port that refuses every connection; checks it
    failed with one line on stderr, nothing on stdout, exit 1. Returns the address and
    that line."""
    with socket.socket() as bound:  # refuses every connection while the program runs
        bound.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{bound.getsockname()[1]}"
        env = {**os.environ, "GENSEARCH_ADDRESS": address, "GENSEARCH_API_KEY": ""}
        proc = subprocess.run(
            [node, str(program)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    line = proc.stderr.strip()
    assert "\n" not in line, line
    return address, line


def test_health_at_a_closed_port_says_to_start_the_stack(node: str, typescript_build: Path) -> None:
    address, line = _run_at_a_closed_port(node, typescript_build / "health.js")
    # The code's canonical name as reason (no ErrorInfo), the address, the hint, Node's text.
    assert line.startswith(f"UNAVAILABLE: cannot reach the gateway at {address}: "), line
    assert "is the stack up (`make run`)" in line and "GENSEARCH_ADDRESS" in line, line
    assert line.endswith(f"(connect ECONNREFUSED {address})"), line


@pytest.mark.parametrize("program", ["example.js", "stream.js"])
def test_an_example_at_a_closed_port_says_so_in_one_line(
    program: str, node: str, typescript_build: Path
) -> None:
    """The examples await their calls at the top level: a failed call ended them with Node's
    ~40-line dump of the ConnectError, whose text for a gateway not up was Node's "connect
    ECONNREFUSED" alone. gatewayEnv.ts (which every program imports) now prints the call's
    error as health.js does."""
    address, line = _run_at_a_closed_port(node, typescript_build / program)
    assert line.startswith(f"UNAVAILABLE: cannot reach the gateway at {address}: "), line
    assert "is the stack up (`make run`)" in line, line
