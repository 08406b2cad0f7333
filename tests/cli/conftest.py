"""A real stack for the CLI tests, started once by ``gensearch up``'s own code.

The stack (Redis child process, qdrant-edge in a temp dir, the MiniLM embedder, the four
services on free ports) runs on an event loop in a background thread, with the loopback
fake OpenAI server as the LLM. Tests call the CLI's ``main([...])`` synchronously in the
main thread, exactly as the console script does, and read what it printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import pytest

from services.cli import stack as stack_mod
from services.cli.__main__ import main
from services.common.quotas import Quotas
from services.common.redis_client import connect
from services.gateway import __main__ as gateway_main
from services.gateway.settings import GatewaySettings
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_patience import patient_redis_env

T = TypeVar("T")

# The environment a test's `gensearch up` stack starts in. Every port free, metrics too:
# tests must not collide with a running stack. Redis gets the test patience
# (tests/support/redis_patience.py): the services fail open on a late reply.
STACK_ENV = {
    "GENSEARCH_MEMORY_PORT": "0",
    "GENSEARCH_RETRIEVAL_PORT": "0",
    "GENSEARCH_GENERATION_PORT": "0",
    "GENSEARCH_GATEWAY_METRICS_PORT": "0",
    "GENSEARCH_MEMORY_METRICS_PORT": "0",
    "GENSEARCH_RETRIEVAL_METRICS_PORT": "0",
    "GENSEARCH_GENERATION_METRICS_PORT": "0",
    **patient_redis_env(),
}


# The variable pointing the ollama preset (model llama3.2) at the fake LLM.
FALLBACK_BASE_URL = "GENSEARCH_GENERATION_OLLAMA_BASE_URL"
FALLBACK = "ollama/llama3.2"
# The operator's allowlist of the URLs callers name (Generate.base_url): the one of
# RunningStack.own_llm only.
ALLOWED_HOSTS = "GENSEARCH_GENERATION_ALLOWED_HOSTS"


class LoopThread:
    """An event loop in a daemon thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class RunningStack:
    stack: stack_mod.Stack
    fake: FakeOpenAI
    loop: LoopThread
    # A caller's own endpoint (--base-url), on the operator's allowlist.
    own_llm: FakeOpenAI
    data_dir: Path

    @property
    def address(self) -> str:
        return self.stack.gateway_address

    def address_of(self, part: str) -> str:
        return self.stack.parts[part].address


def up_args(data_dir: Path, **overrides: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    stack_mod.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(data_dir), "--port", "0"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack") / "data"
    loop = LoopThread()
    fake, own_llm = FakeOpenAI(), FakeOpenAI()
    loop.run(fake.start())
    loop.run(own_llm.start())
    args = up_args(data_dir, llm_base_url=fake.base_url, log_level="WARNING")
    # The ollama preset at the fake too: a second endpoint for fallback chains (one
    # repeating the primary's is refused, DUPLICATE_FALLBACK).
    env = {
        **STACK_ENV,
        FALLBACK_BASE_URL: fake.base_url,
        ALLOWED_HOSTS: f"http://127.0.0.1:{own_llm.port}",
    }
    with mock.patch.dict(os.environ, env):
        stack_mod._quiet_libraries()
        stack = loop.run(stack_mod.start(args))
    try:
        yield RunningStack(stack=stack, fake=fake, loop=loop, data_dir=data_dir, own_llm=own_llm)
    finally:
        loop.run(stack.close())
        loop.run(fake.stop())
        loop.run(own_llm.stop())
        loop.close()


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(
    running_stack: RunningStack,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """``cli("collections", "list")`` runs ``gensearch --address <stack> collections list``."""
    monkeypatch.setenv("GENSEARCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("GENSEARCH_ADDRESS", raising=False)
    monkeypatch.delenv("GENSEARCH_DATA_DIR", raising=False)
    for part in ("MEMORY", "RETRIEVAL", "GENERATION"):
        monkeypatch.delenv(f"GENSEARCH_GATEWAY_{part}_ADDR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/stack.json of a real `up` in the way

    def run(*argv: str, address: str | None = None) -> Result:
        capsys.readouterr()
        code = main(["--address", address or running_stack.address, *argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


CliAlone = Callable[[list[str]], Result]


@pytest.fixture
def cli_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CliAlone:
    """``cli_alone(["search", ...])`` runs ``gensearch search ...`` with no stack started,
    its state directory in the test's tmp_path: for what the CLI says before, or instead
    of, reaching a gateway."""
    monkeypatch.setenv("GENSEARCH_STATE_DIR", str(tmp_path))

    def run(argv: list[str]) -> Result:
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@dataclass
class QuotaGateway:
    """A second gateway in front of the running stack's services whose tenant may write
    ``limit`` objects per window of ``window`` seconds (counted in the stack's Redis under
    a key prefix of its own, so each test starts with a fresh quota)."""

    address: str
    limit: int
    window: float
    redis_url: str
    loop: LoopThread

    def early_in_a_window(self, margin: float) -> None:
        """Waits, when fewer than ``margin`` seconds of the quota's current window (on
        Redis' clock, as the quota counts) are left, for the next one."""

        async def now() -> float:
            redis = connect(self.redis_url, cluster=False, socket_timeout=2, connect_timeout=2)
            try:
                seconds, micros = await redis.time()
            finally:
                await redis.aclose()
            return seconds + micros / 1e6

        left = self.window - self.loop.run(now()) % self.window
        if left < margin:
            time.sleep(left + 0.05)


# The objects-written quota of quota_gateway: 10 objects per 8 s window (a minute in
# production; Quotas takes its window for tests, and build_quotas is wrapped to pass it).
QUOTA_LIMIT = 10
QUOTA_WINDOW_MS = 8000


@contextlib.contextmanager
def _quota_gateway(
    running_stack: RunningStack, limit: int, **quotas: int
) -> Iterator[QuotaGateway]:
    """A second gateway over the stack's services with the quota settings ``quotas`` and
    their window shortened to QUOTA_WINDOW_MS; ``limit`` is what the tests count against."""
    running = running_stack.stack.parts["gateway"].server.settings
    assert isinstance(running, GatewaySettings)
    settings = running.model_copy(
        update={**quotas, "quota_key_prefix": f"q-{uuid.uuid4().hex[:8]}", "metrics_port": None}
    )

    build_quotas = gateway_main.build_quotas

    def short_window(settings: GatewaySettings, redis: Any) -> Quotas:
        quotas = build_quotas(settings, redis)
        assert quotas is not None, "the stack's gateway counts its quotas in Redis"
        quotas.window_ms = QUOTA_WINDOW_MS
        return quotas

    async def start() -> tuple[Any, int]:
        with mock.patch.object(gateway_main, "build_quotas", short_window):
            server = await gateway_main.build_server(settings, port=0)
        return server, await server.start()

    server, port = running_stack.loop.run(start())
    try:
        yield QuotaGateway(
            address=f"127.0.0.1:{port}",
            limit=limit,
            window=QUOTA_WINDOW_MS / 1000,
            redis_url=settings.redis_url.get_secret_value(),
            loop=running_stack.loop,
        )
    finally:
        running_stack.loop.run(server.stop(0))


@pytest.fixture
def quota_gateway(running_stack: RunningStack) -> Iterator[QuotaGateway]:
    """The tenant may write QUOTA_LIMIT objects a window."""
    with _quota_gateway(
        running_stack, QUOTA_LIMIT, quota_objects_written_per_minute=QUOTA_LIMIT
    ) as gateway:
        yield gateway


# The bytes-written quota of bytes_quota_gateway, per QUOTA_WINDOW_MS window.
BYTES_QUOTA_LIMIT = 4096


@pytest.fixture
def bytes_quota_gateway(running_stack: RunningStack) -> Iterator[QuotaGateway]:
    """The tenant may write BYTES_QUOTA_LIMIT bytes of objects a window (objects alone:
    the default, far more)."""
    with _quota_gateway(
        running_stack, BYTES_QUOTA_LIMIT, quota_bytes_written_per_minute=BYTES_QUOTA_LIMIT
    ) as gateway:
        yield gateway


@dataclass
class SharedList:
    """One user name in two tenants, ``default`` and its own: the two legacy owners of one
    tag, sharing one conversation list (docs/memory.md#legacy-owners). One gateway
    refuses a user in both, so each has a gateway of its own in front of the stack's
    memory (as when an operator moves a name from one tenant to the other). The legacy
    one has one conversation (``legacy_id``), behind ``theirs``, newer, of the other."""

    legacy: Gateway
    other: Gateway
    legacy_id: str
    theirs: list[str]


@dataclass
class Gateway:
    address: str
    api_key: str


# Members a ListConversations page reads past (of the other owner's) at most, in
# shared_list: small, so that a page of page_size 1 reads 4 members and the legacy owner's
# first pages are empty, each with a next_page_token.
SHARED_LIST_SKIP = 2
SHARED_LIST_THEIRS = 20


@contextlib.contextmanager
def keyed_gateway_of(running_stack: RunningStack, user: str, tenant: str) -> Iterator[Gateway]:
    """A gateway in front of the stack's services with one API key, of ``user`` (a
    writer) in ``tenant``."""
    from pydantic import SecretStr

    key = f"{user}-{tenant}-key"
    running = running_stack.stack.parts["gateway"].server.settings
    assert isinstance(running, GatewaySettings)
    settings = running.model_copy(
        update={"api_keys": SecretStr(f"{user}@{tenant}/writer:{key}"), "metrics_port": None}
    )

    async def start() -> Any:
        server = await gateway_main.build_server(settings, port=0)
        await server.start()
        return server

    server = running_stack.loop.run(start())
    try:
        yield Gateway(f"127.0.0.1:{server.port}", key)
    finally:
        running_stack.loop.run(server.stop(0))


@pytest.fixture
def shared_list(
    running_stack: RunningStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SharedList]:
    from gensearch.client import Gensearch

    from services.memory import store

    # Read by each ListConversations call of the stack's memory (in this process).
    monkeypatch.setattr(store, "LIST_SKIP", SHARED_LIST_SKIP)
    user = f"pager{uuid.uuid4().hex[:8]}"
    with (
        keyed_gateway_of(running_stack, user, "default") as legacy,
        keyed_gateway_of(running_stack, user, user) as other,
    ):
        with Gensearch(legacy.address, api_key=legacy.api_key, timeout=60) as client:
            legacy_id = client.conversations.create("mine").id
        with Gensearch(other.address, api_key=other.api_key, timeout=60) as client:
            theirs = [client.conversations.create(str(n)).id for n in range(SHARED_LIST_THEIRS)]
        yield SharedList(legacy, other, legacy_id, theirs)
