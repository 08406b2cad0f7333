"""How long the gateway's health check goes unanswered under an idle-connection attack.

Issue 12 reproduced ~20,000 idle TCP connections exhausting the gateway's file descriptors,
so that new clients' health checks timed out for ~120 s. This starts the gateway as its own
process (``python -m services.gateway``) with a hard limit of open files (``--fd-limit``;
``--fd-soft`` starts it with a lower soft limit, as containers often do), opens
``--connections`` TCP connections that never speak HTTP/2, and meanwhile asks a fresh client
for a health check
every ``--interval`` seconds, each with a ``--probe-timeout`` deadline. It reports the
longest time health went unanswered (from the first failed probe to the next answer) and
how many of the silent sockets the gateway had closed by the end.

    .venv/bin/python bench/idle_connections.py                      # this tree
    .venv/bin/python bench/idle_connections.py --tree /tmp/before   # another checkout

Every connection goes to 127.0.0.1 only; the run is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.processes import wait_serving  # noqa: E402


async def _probe(address: str, timeout: float) -> bool:
    """One health check on a fresh channel (a new connection, as a new client makes)."""
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        return False


async def _start_gateway(
    tree: Path, fd_limit: int, data: Path, fd_soft: int | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    """The gateway, SERVING, and its port: one of its own choosing (0), read back, so none
    is picked here that another process could take before the gateway binds it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update(
        GENSEARCH_GATEWAY_PORT="0",
        GENSEARCH_GATEWAY_METRICS_PORT="0",
        GENSEARCH_DATA_DIR=str(data),
        GENSEARCH_LOG_LEVEL="WARNING",
        PYTHONPATH=f"{tree}:{tree / 'gen'}",
    )

    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_soft or fd_limit, fd_limit))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", cwd=tree, env=env, preexec_fn=limit,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port = await wait_serving(
            "127.0.0.1:0", proc, service="gensearch.gateway.v1.GatewayService", timeout=30
        )
    except AssertionError as err:
        if proc.returncode is None:
            proc.kill()
        raise SystemExit(f"the gateway did not become SERVING: {err}") from None
    return proc, port


def _open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def _closed_by_peer(sockets: list[socket.socket]) -> int:
    """Sockets the gateway has closed: read what it sent (its HTTP/2 SETTINGS, then a
    GOAWAY) up to the end of the stream."""
    closed = 0
    for s in sockets:
        try:
            while s.recv(65536):
                pass
            closed += 1  # end of stream
        except BlockingIOError:
            pass  # still open
        except OSError:
            closed += 1  # reset
    return closed


async def _run(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 256
    if hard < need:
        raise SystemExit(f"this shell allows {hard} open files; --connections needs {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as data:
        gateway, port = await _start_gateway(
            args.tree.resolve(), args.fd_limit, Path(data), args.fd_soft
        )
        address = f"127.0.0.1:{port}"
        try:
            sockets = _open_idle(port, args.connections)
            started = time.monotonic()
            down_since: float | None = None
            longest = 0.0
            probes = failed = 0
            while time.monotonic() - started < args.seconds:
                t0 = time.monotonic()
                ok = await _probe(address, args.probe_timeout)
                probes += 1
                now = time.monotonic()
                if ok:
                    if down_since is not None:
                        longest = max(longest, now - down_since)
                        down_since = None
                else:
                    failed += 1
                    down_since = t0 if down_since is None else down_since
                await asyncio.sleep(max(0.0, args.interval - (now - t0)))
            if down_since is not None:
                longest = max(longest, time.monotonic() - down_since)
            closed = _closed_by_peer(sockets)
            for s in sockets:
                s.close()
        finally:
            gateway.kill()
            await gateway.wait()
    still = " (still unanswered at the end)" if down_since is not None else ""
    print(f"tree: {args.tree.resolve()}")
    print(
        f"{args.connections} idle connections, gateway started with a limit of"
        f" {args.fd_soft or args.fd_limit} open files (hard {args.fd_limit}),"
        f" {args.seconds:.0f} s, a probe every {args.interval} s ({args.probe_timeout} s deadline)"
    )
    print(f"health probes failed: {failed} of {probes}")
    print(f"longest time health went unanswered: {longest:.1f} s{still}")
    print(f"silent sockets closed by the gateway by the end: {closed} of {args.connections}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose gateway runs")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--fd-limit", type=int, default=1024, help="the gateway's hard limit")
    parser.add_argument(
        "--fd-soft", type=int, default=None,
        help="the gateway's soft limit at start (default: the hard one); a container's is"
        " often 1024 under a much higher hard limit",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--probe-timeout", type=float, default=2.0)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
