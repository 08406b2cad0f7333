"""The Go client (clients/go/rpcerror) where no gateway answers: one line naming the address
and what to check, grpc-go's text kept at the end, not grpc-go's bare "connection error:
desc = ..." or "write tcp ...: broken pipe". clients/go/health prints it as health.js does.

Before, rpcerror.Failure's message was grpc-go's text alone. Real loopback sockets and
servers; no stack is needed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.clients.conftest import go_build
from tests.support.unreachable import (
    UnavailableHealth,
    closing_address,
    refusing_address,
    serving_health,
)

__all__ = ["closing_address", "refusing_address"]  # the fixtures


@pytest.fixture(scope="module")
def go_health(gopath: Path) -> Path:
    return go_build(gopath, "health")


async def health_line(binary: Path, address: str) -> str:
    """health's one line on stderr (it must fail, printing nothing on stdout). Run without
    blocking the loop: a test's own server answers on it."""
    env = {**os.environ, "GENSEARCH_ADDRESS": address, "GENSEARCH_API_KEY": ""}
    proc = await asyncio.create_subprocess_exec(
        str(binary), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1, (stdout + stderr).decode()
    assert stdout == b""
    line = stderr.decode().strip()
    assert "\n" not in line, line
    return line


async def test_health_at_a_closed_port_says_to_start_the_stack(
    go_health: Path, refusing_address: str
) -> None:
    line = await health_line(go_health, refusing_address)
    # The code's canonical name as reason (no ErrorInfo), the address, the hint, gRPC's text.
    assert line.startswith(f"UNAVAILABLE: cannot reach the gateway at {refusing_address}: "), line
    assert "is the stack up (`make run`)" in line and "GENSEARCH_ADDRESS" in line, line
    dialed = f"dial tcp {refusing_address}: connect: connection refused"
    assert line.endswith(
        f'(gRPC: connection error: desc = "transport: Error while dialing {dialed}")'
    ), line


async def test_health_at_a_server_that_closes_at_once_names_tls_and_the_port(
    go_health: Path, closing_address: str
) -> None:
    """grpc-go words this several ways ("write tcp ...: broken pipe", "... use of closed
    network connection", "connection closed"): each is read as a failed connection."""
    line = await health_line(go_health, closing_address)
    assert line.startswith(f"UNAVAILABLE: cannot reach the gateway at {closing_address}: "), line
    assert "grpc.WithTransportCredentials" in line and "check the port" in line, line
    assert "(gRPC: " in line and line.endswith(")"), line


async def test_an_unavailable_sent_by_a_server_keeps_its_own_message(go_health: Path) -> None:
    """A guard (it passed before too): a status with ErrorInfo is the server's own."""
    # grpc-go's words for a connection closed before it was set up.
    async with serving_health(UnavailableHealth("connection closed")) as address:
        line = await health_line(go_health, address)
    assert line == "SOMETHING_DOWN: connection closed", line
