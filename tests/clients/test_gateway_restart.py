"""The gateway process dies mid-stream and comes back, seen from the TypeScript and Go
clients (restart.ts, restart/main.go) as tests/client/test_gateway_restart.py sees it from
the Python client: the stream fails at once with Unavailable (not at its deadline, ten
minutes away), a call while the gateway is down too, and the same client (Go: the same
connection) works once it is back. The gateway is a real process, SIGKILLed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.conftest import finish, go_build, go_on, next_line, program_env, talking_to
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.gateway_process import SLOW, GatewayProcess, until_disconnected

# The code as the client library names it, then the reason: a status without ErrorInfo
# stands for the code's canonical name, as the services' generic reasons (was
# "Unavailable", the library's spelling, where the gateway's own said "UNAVAILABLE").
LINES = ["died Unavailable UNAVAILABLE", "down Unavailable UNAVAILABLE"]


async def restart_under(
    argv: list[str], env: dict[str, str], gateway: GatewayProcess, fake: FakeOpenAI
) -> None:
    fake.enqueue(Behaviour.ok(text=SLOW, chunk_delay=0.5))
    async with talking_to(argv, env) as proc:
        assert await next_line(proc) == "streaming"
        await gateway.kill()
        assert [await next_line(proc), await next_line(proc)] == LINES
        await until_disconnected(fake)  # the generation service dropped the LLM request
        await gateway.start()
        fake.enqueue(Behaviour.ok(text="back again"))
        go_on(proc)
        assert await finish(proc, Path(argv[-1]).name) == 'back "back again"\n'


@pytest.mark.slow  # compiles TypeScript, starts the gateway process twice
async def test_typescript_client_through_a_gateway_restart(
    gateway_process: GatewayProcess, fake: FakeOpenAI, node: str, typescript_build: Path
) -> None:
    env = program_env(gateway_process.port, "key-alice-123")
    await restart_under([node, str(typescript_build / "restart.js")], env, gateway_process, fake)


@pytest.mark.slow  # compiles Go, starts the gateway process twice
async def test_go_client_through_a_gateway_restart(
    gateway_process: GatewayProcess, fake: FakeOpenAI, gopath: Path
) -> None:
    binary = go_build(gopath, "restart")
    env = program_env(gateway_process.port, "key-alice-123")
    await restart_under([str(binary)], env, gateway_process, fake)
