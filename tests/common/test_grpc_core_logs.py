"""gRPC's C core stays quiet on stderr, where the services write one JSON object a line.

Without ``GRPC_VERBOSITY`` the core logs at INFO through absl: a channel whose connection
the other side closed for idleness (every service's ``MAX_CONNECTION_IDLE``, 300 s) printed
``I1203 08:28:09.589545 25914 chttp2_transport.cc:1403] ipv4:127.0.0.1:50051: Got goaway
[2] …`` into the gateway's JSON log and onto ``gensearch up``'s console.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A process that imports our code first, as `python -m services.<name>` does, then lets a
# server close an idle connection under a client's channel.
SCRIPT = """
import asyncio
import services  # noqa: F401  (what every service and the CLI import first)
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server(options=[("grpc.max_connection_idle_ms", 300)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest())
        await asyncio.sleep(1.5)
        await stub.Check(health_pb2.HealthCheckRequest())
    await server.stop(0)
    print("done")

asyncio.run(main())
"""


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_an_idle_connection_closed_under_a_channel_logs_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    done = _run(env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "goaway" not in done.stderr.lower(), done.stderr


def test_an_operator_may_still_ask_for_the_core_s_logs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    done = _run({**env, "GRPC_VERBOSITY": "INFO"})
    assert done.returncode == 0, done.stderr
    assert "goaway" in done.stderr.lower()
