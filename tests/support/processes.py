"""Service processes in tests: wait until one serves, find what it started, see if it lives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def wait_serving(
    address: str,
    proc: asyncio.subprocess.Process,
    *,
    service: str,
    timeout: float = 60.0,
) -> int:
    """Polls until ``proc`` serves ``service`` (its full name) at ``address``: its gRPC
    health says SERVING for that name and, where /proc tells (Linux), the socket listening
    on the port is ``proc``'s own. Fails if ``proc`` exits first. Returns the port.

    ``address`` with port 0 (``127.0.0.1:0``): ``proc`` was told to bind port 0, and its
    port is the one of its own listening sockets that serves ``service`` (no port is
    picked for it beforehand, so none can be taken by another process in between).

    Not health's "" (the server as a whole) alone: another process's server that took the
    port picked for ``proc`` (a parallel test's) answers it too, while ``proc`` fails to
    bind and exits a moment later; the caller then talked to the wrong server."""
    host, _, wanted = address.rpartition(":")
    deadline = time.monotonic() + timeout
    checked = owned_ports_known()
    if not checked and not int(wanted):
        raise ValueError("port 0: no /proc here to find the port the service bound")
    while True:
        assert proc.returncode is None, f"the service exited with {proc.returncode}"
        ports = listening_ports(proc.pid) if checked else {int(wanted)}
        if int(wanted):
            ports &= {int(wanted)}
        for port in sorted(ports):
            if await _serves(f"{host}:{port}", service):
                return port
        assert time.monotonic() < deadline, f"{service} not SERVING within {timeout:g} s"
        await asyncio.sleep(0.1)


async def start_serving(
    module: str, env: dict[str, str], *, service: str, cwd: Path
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m module`` with ``env`` (which must make it bind port 0), once it serves
    ``service``: the process and its address. Killed if it never does."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=cwd, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port = await wait_serving("127.0.0.1:0", proc, service=service)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, f"127.0.0.1:{port}"


async def _serves(address: str, service: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def owned_ports_known() -> bool:
    """Whether ``listening_ports`` can tell (a /proc with socket tables: Linux)."""
    return Path("/proc/self/net/tcp").exists()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports on which ``pid`` itself holds a listening socket (from /proc: its open
    files, and the socket tables of its network namespace)."""
    fds = Path("/proc") / str(pid) / "fd"
    inodes = set()
    try:
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = (Path("/proc") / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


_LISTEN = "0A"  # TCP_LISTEN in the kernel's socket tables


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
