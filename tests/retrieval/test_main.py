"""`python -m services.retrieval` with its Qdrant server unreachable at start: it serves
(health SERVING, as memory does with Redis down) and answers UNAVAILABLE with an ErrorInfo,
instead of exiting with a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.devlaunch.processes import free_port
from tests.support.processes import wait_serving
from tests.support.rpc import error_info

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "qdrant-key-TOPSECRET"


async def test_starts_and_answers_unavailable_while_qdrant_is_unreachable(
    tmp_path: Path,
) -> None:
    port, nothing_there = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update(
        GENSEARCH_DATA_DIR=str(tmp_path),
        GENSEARCH_RETRIEVAL_PORT=str(port),
        GENSEARCH_RETRIEVAL_METRICS_PORT="0",
        GENSEARCH_RETRIEVAL_GRACE_PERIOD="1",
        GENSEARCH_RETRIEVAL_QDRANT_URL=f"http://127.0.0.1:{nothing_there}",
        GENSEARCH_RETRIEVAL_QDRANT_API_KEY=API_KEY,
        GENSEARCH_RETRIEVAL_QDRANT_TIMEOUT="2",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.retrieval", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        await wait_serving(address, proc, service="gensearch.retrieval.v1.RetrievalService")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            for call in (
                stub.ListCollections(pb.ListCollectionsRequest()),
                stub.GetCollection(pb.GetCollectionRequest(name="Books")),
            ):
                try:
                    await call
                    raise AssertionError("answered while Qdrant is unreachable")
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    assert error_info(err).reason == "QDRANT_UNAVAILABLE"
                    assert str(nothing_there) not in (err.details() or "")
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    text = stderr.decode()
    assert "Traceback" not in text and API_KEY not in text
    assert "GENSEARCH_RETRIEVAL_QDRANT_URL" in text  # the warning names the setting
    # ... and is the only one: not also qdrant-client's "Failed to obtain server version …
    # Set check_compatibility=False", a parameter no setting reaches.
    assert "check_compatibility" not in text, text[-2000:]
