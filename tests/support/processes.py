"""Service processes in tests: wait until one serves, find what it started, see if it lives."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def wait_serving(
    address: str, proc: asyncio.subprocess.Process, *, timeout: float = 60.0
) -> None:
    """Polls gRPC health at ``address`` until SERVING; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.returncode is None, f"the service exited with {proc.returncode}"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"not SERVING within {timeout:g} s"
            await asyncio.sleep(0.1)


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc, so no extra dependency)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)) is not None:
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = {p for p, parent in parents.items() if parent == current}
        frontier.extend(children - found)
        found |= children
    return found


def executable(pid: int) -> str:
    """The resolved path of the program ``pid`` runs ("" once it is gone): unlike its name
    or command line, which a server may rewrite, this names the binary for sure."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"
