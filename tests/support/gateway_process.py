"""``python -m services.gateway`` as a real process (to be killed and started again) in
front of the in-process services of tests/gateway's stack."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.devlaunch.processes import free_port
from tests.gateway.conftest import KEYS, TOKEN, Stack, StackFactory
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import owned_ports_known, wait_serving

ROOT = Path(__file__).resolve().parents[2]
# An answer far slower than any test: 200 words, streamed 0.5 s apart.
SLOW = " ".join(f"w{i}" for i in range(200))
GATEWAY = "gensearch.gateway.v1.GatewayService"


class GatewayProcess:
    """``python -m services.gateway`` in front of ``stack``'s services: on a port of its
    own choosing the first time (none picked here that another process could take before
    it binds), on that same port when started again."""

    def __init__(self, stack: Stack) -> None:
        self.port = 0 if owned_ports_known() else free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
            "GENSEARCH_GATEWAY_METRICS_PORT": "0",
            "GENSEARCH_API_KEYS": KEYS,
            "GENSEARCH_INTERNAL_TOKEN": TOKEN,
            **{
                f"GENSEARCH_GATEWAY_{name.upper()}_ADDR": f"127.0.0.1:{stack.servers[name].port}"
                for name in ("memory", "retrieval", "generation")
            },
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.gateway", cwd=ROOT,
            env={**self.env, "GENSEARCH_GATEWAY_PORT": str(self.port)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self.port = await wait_serving(self.address, self.proc, service=GATEWAY)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


@pytest.fixture
async def gateway_process(stack_factory: StackFactory) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess(await stack_factory())
    await process.start()
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.returncode is None:
            await process.kill()


async def until_disconnected(fake: FakeOpenAI, count: int = 1) -> None:
    """Polls (up to 60 s: a loaded machine may be slow to it) until the fake LLM has seen
    ``count`` requests closed by their client."""
    end = asyncio.get_running_loop().time() + 60
    while fake.disconnects < count:
        assert asyncio.get_running_loop().time() < end, "the LLM request was never closed"
        await asyncio.sleep(0.05)
