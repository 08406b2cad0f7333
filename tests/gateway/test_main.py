"""``python -m services.gateway`` as an operator runs it: env configuration, health,
reflection listing every service it serves, and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.devlaunch.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_module_serves_until_sigterm() -> None:
    port = free_port()
    env = {
        **os.environ,
        "GENSEARCH_GATEWAY_PORT": str(port),
        "GENSEARCH_GATEWAY_METRICS_PORT": "0",
        "GENSEARCH_GATEWAY_GENERATION_ADDR": "dns:///localhost:1",
        "GENSEARCH_GATEWAY_CONTEXT_WINDOWS": '{"smollm2": 2048, "big": 100000}',
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("gateway did not come up")
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask() -> reflection_pb2.ServerReflectionResponse:
                async for answer in reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                ):
                    return answer
                raise AssertionError("no reflection answer")

            names = {s.name for s in (await ask()).list_services_response.service}
            assert {
                "gensearch.gateway.v1.GatewayService",
                "gensearch.memory.v1.MemoryService",
                "gensearch.retrieval.v1.RetrievalService",
                "gensearch.generation.v1.GenerationService",
            } <= names
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
