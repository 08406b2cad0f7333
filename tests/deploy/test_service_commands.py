"""The commands the Deployments run, run for real: ``python -m services.<svc>`` configured
by the dev overlay's ConfigMap and Secret (only hosts, ports and stores moved to loopback)
comes up, answers its gRPC health check on the grpc port, serves /metrics, and exits
cleanly on SIGTERM within the grace period -- what the probes and the rolling updates
rely on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from tests.deploy.manifests import REPO, SERVICES, config, container, find, of_kind, render
from tests.support.processes import wait_serving

START_TIMEOUT = 120.0


def _pod_env(service: str, tmp_path: Path, redis_url: str) -> tuple[dict[str, str], int, int]:
    docs = render("overlays/dev")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update(config(docs))
    for secret in of_kind(docs, "Secret"):
        for key, value in secret["data"].items():
            env[key] = base64.b64decode(value).decode()
    grpc_port, metrics_port = free_port(), free_port()
    env.update(
        {
            "GENSEARCH_HOST": "127.0.0.1",
            "GENSEARCH_DATA_DIR": str(tmp_path / "data"),
            f"GENSEARCH_{service.upper()}_PORT": str(grpc_port),
            f"GENSEARCH_{service.upper()}_METRICS_PORT": str(metrics_port),
            "GENSEARCH_MEMORY_REDIS_URL": redis_url,
            # In the cluster: the Qdrant StatefulSet; here the embedded engine.
            "GENSEARCH_RETRIEVAL_QDRANT_URL": "",
        }
    )
    return env, grpc_port, metrics_port


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


@pytest.mark.parametrize("service", list(SERVICES))
async def test_container_command_serves_and_stops_cleanly(
    service: str, tmp_path: Path, redis_server: RedisProcess
) -> None:
    command = container(find(render("base"), "Deployment", service))["command"]
    assert command[:2] == ["python", "-m"]
    env, grpc_port, metrics_port = _pod_env(service, tmp_path, redis_server.url)
    typo = f"GENSEARCH_{service.upper()}_GRACE_PERIDO"  # a typo, named in a warning at start
    env[typo] = "30"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            await wait_serving(
                f"127.0.0.1:{grpc_port}",
                proc,
                service=f"gensearch.{service}.v1.{service.title()}Service",
                timeout=START_TIMEOUT,
            )
        except AssertionError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            output = (await proc.communicate())[0].decode(errors="replace")
            raise AssertionError(f"{' '.join(command)} did not serve:\n{output[-3000:]}") from None
        body = await asyncio.to_thread(_metrics, metrics_port)
        assert "grpc_server_handled_total" in body
        assert "process_resident_memory_bytes" in body
        proc.send_signal(signal.SIGTERM)
        grace = float(env[f"GENSEARCH_{service.upper()}_GRACE_PERIOD"])
        output = (await asyncio.wait_for(proc.communicate(), grace + 20))[0]
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
        # The typo is named; the other services' keys in the shared ConfigMap are not.
        warnings = [
            line
            for line in output.decode(errors="replace").splitlines()
            if "unknown GENSEARCH_" in line
        ]
        assert len(warnings) == 1 and typo in warnings[0], warnings
        assert "GENSEARCH_GATEWAY_MEMORY_ADDR" not in warnings[0]
        # Secrets from the Secret never reach the logs.
        for key in ("GENSEARCH_API_KEYS", "GENSEARCH_INTERNAL_TOKEN"):
            secret = env[key].split(":", 1)[-1]
            assert secret not in output.decode(errors="replace")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
