"""Peak memory of the gateway and the memory service under large-message abuse (issue 12).

Starts memory (with its embedded Redis) and the gateway as separate processes
(``python -m services.memory`` / ``python -m services.gateway``, API keys on), then, one
attack at a time, sends concurrent oversized ``CreateInteraction`` requests to the
gateway (it forwards them to memory) and reports each process's peak resident set
(``VmHWM``, reset between attacks through ``/proc/<pid>/clear_refs``) beside the memory
limits of the shipped manifests (deploy/base). The request bytes are built once and sent
as they are, so the client's own memory stays out of the way.

    .venv/bin/python bench/abuse.py                 # this tree
    .venv/bin/python bench/abuse.py --tree /tmp/main  # another checkout (e.g. before)

Attacks: 20 unauthenticated and 10 authenticated 60 MB requests (the issue's numbers),
then 20 authenticated requests just under the largest receive limit (16 MiB: what gRPC
still buffers before the chassis refuses a small method's request).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
from gensearch.memory.v1 import memory_service_pb2 as mem_pb  # noqa: E402

from tests.support.processes import wait_serving  # noqa: E402

MB = 1_000_000
KEY = "bench-abuse-key"
METHOD = "/gensearch.memory.v1.MemoryService/CreateInteraction"
# deploy/base/{gateway,memory}.yaml resources.limits.memory
LIMITS_MIB = {"gateway": 1024, "memory": 512}


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) // 1024  # MiB
    return fields


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _start(tree: Path, service: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"services.{service}",
        cwd=tree,
        env={**os.environ, **env, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _payload(size: int) -> bytes:
    request = mem_pb.CreateInteractionRequest(conversation_id="x", input="x" * size)
    return request.SerializeToString()


async def _attack(address: str, payload: bytes, count: int, auth: bool) -> dict[str, int]:
    metadata = (("authorization", f"Bearer {KEY}"),) if auth else ()
    options = [("grpc.max_send_message_length", len(payload) + MB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(METHOD)  # raw bytes in, raw bytes out
        results = await asyncio.gather(
            *[call(payload, metadata=metadata, timeout=120) for _ in range(count)],
            return_exceptions=True,
        )
    codes: dict[str, int] = {}
    for result in results:
        code = result.code().name if isinstance(result, grpc.aio.AioRpcError) else "OK"
        codes[code] = codes.get(code, 0) + 1
    return codes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose services run")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="gensearch-abuse-"))
    token = "bench-abuse-internal-token"
    shared = {
        "GENSEARCH_DATA_DIR": str(data),
        "GENSEARCH_API_KEYS": f"alice:{KEY}",
        "GENSEARCH_INTERNAL_TOKEN": token,
        "GENSEARCH_LOG_LEVEL": "WARNING",
        "GENSEARCH_REDIS_SERVER": os.environ.get("GENSEARCH_REDIS_SERVER", "bundled"),
    }
    # Each on a port of its own choosing (0), read back once it serves: none picked here
    # that another process could take before the service binds it.
    memory = await _start(
        args.tree,
        "memory",
        {**shared, "GENSEARCH_MEMORY_PORT": "0", "GENSEARCH_MEMORY_METRICS_PORT": "0"},
    )
    procs = {"memory": memory}
    try:
        mem_port = await wait_serving(
            "127.0.0.1:0", memory, service="gensearch.memory.v1.MemoryService", timeout=60
        )
        procs["gateway"] = gateway = await _start(
            args.tree,
            "gateway",
            {
                **shared,
                "GENSEARCH_GATEWAY_PORT": "0",
                "GENSEARCH_GATEWAY_METRICS_PORT": "0",
                "GENSEARCH_GATEWAY_MEMORY_ADDR": f"127.0.0.1:{mem_port}",
            },
        )
        gw_port = await wait_serving(
            "127.0.0.1:0", gateway, service="gensearch.gateway.v1.GatewayService", timeout=60
        )
        address = f"127.0.0.1:{gw_port}"
        idle = {name: _status(p.pid)["VmRSS"] for name, p in procs.items()}
        print(f"tree: {args.tree}")
        print(f"idle RSS MiB: gateway {idle['gateway']}, memory {idle['memory']}")
        print(f"{'attack':<34} {'codes':<28} {'gateway peak':>13} {'memory peak':>12} {'s':>6}")
        attacks = [
            ("20 x 60 MB unauthenticated", 60 * MB, 20, False),
            ("10 x 60 MB authenticated", 60 * MB, 10, True),
            ("20 x 16 MB authenticated", 16 * MB, 20, True),
        ]
        for label, size, count, auth in attacks:
            for p in procs.values():
                _reset_peak(p.pid)
            payload = _payload(size)
            started = time.perf_counter()
            codes = await _attack(address, payload, count, auth)
            seconds = time.perf_counter() - started
            del payload
            peaks = {name: _status(p.pid)["VmHWM"] for name, p in procs.items()}
            summary = ",".join(f"{k}:{v}" for k, v in sorted(codes.items()))
            print(
                f"{label:<34} {summary:<28} {peaks['gateway']:>9} MiB "
                f"{peaks['memory']:>8} MiB {seconds:>6.1f}"
            )
        print(
            f"manifest limits (deploy/base): gateway {LIMITS_MIB['gateway']} MiB, "
            f"memory {LIMITS_MIB['memory']} MiB"
        )
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.terminate()
        for p in procs.values():
            await p.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
