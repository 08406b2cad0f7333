"""``gensearch up``'s parts are replaceable: an external Redis and Qdrant, an external LLM."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis.asyncio as aioredis
from gensearch.client import AsyncGensearch

from services.cli import stack as stack_mod
from services.cli.client import check_health
from services.devlaunch.redis_server import RedisProcess
from tests.cli.conftest import STACK_ENV, RunningStack, up_args
from tests.support.fake_openai import FakeOpenAI
from tests.support.network import has_ipv6_loopback


async def test_external_redis_qdrant_and_llm(
    redis_server: RedisProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    async with FakeOpenAI() as fake:
        args = up_args(
            data_dir,
            redis_url=redis_server.url,
            qdrant_url=":memory:",
            llm_provider="vllm",
            llm_base_url=fake.base_url,
            llm_model="served-model",
        )
        with mock.patch.dict(os.environ, STACK_ENV):
            stack = await stack_mod.start(args)
        try:
            out = capsys.readouterr().out
            assert f"redis       external {redis_server.url}" in out
            assert "llm         external provider 'vllm'" in out
            assert "qdrant      external :memory:" in out
            assert "redis       ready" not in out
            for part in stack.parts.values():
                assert await check_health(part.address, part.service) == "SERVING"

            async with AsyncGensearch(stack.gateway_address) as client:
                created = await client.conversations.create("kept in your Redis")
                docs = await client.collections.create("Docs", {"text": "text"})
                await docs.data.insert({"text": "hello world"})
                found = await docs.generate.keyword("hello", single_prompt="Echo {text}")
            assert found.hits[0].result == "Echo hello world"
            # The stack's default provider and model went to the given endpoint.
            assert fake.chat_requests[-1].json["model"] == "served-model"
            # The gateway forwarded to a memory service writing into the given Redis.
            direct = aioredis.from_url(redis_server.url)
            try:
                keys = [k async for k in direct.scan_iter(match="*")]
            finally:
                await direct.aclose()
            assert any(created.id.encode() in k for k in keys)
            # The gateway counted its per-tenant LLM quota in the same Redis.
            assert any(b":quota:" in k and k.endswith(b":llm") for k in keys)
        finally:
            await stack.close()
    # Nothing of ours was started: the given Redis still runs; no embedded Qdrant data.
    assert redis_server.running
    assert not (data_dir / "qdrant").exists()
    assert not (data_dir / "redis").exists()
    assert not (data_dir / stack_mod.STACK_FILE).exists()


def _ports_refused(args: argparse.Namespace, settings: dict[str, Any]) -> str:
    """The one line ``up``'s port check refuses ``args`` and ``settings`` with."""
    with pytest.raises(stack_mod.CliError) as err:
        stack_mod._check_ports(args, settings)
    return str(err.value)


def test_a_busy_port_is_one_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli.__main__ import main

    with socket.socket() as taken, mock.patch.dict(os.environ, STACK_ENV):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        os.environ["GENSEARCH_MEMORY_METRICS_PORT"] = str(port)
        code = main(["up", "--data-dir", str(tmp_path / "data"), "--port", str(port)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(
        f"error: already in use on 127.0.0.1: gateway port {port}, memory metrics port {port} "
    )
    assert "--port or GENSEARCH_GATEWAY_PORT, GENSEARCH_MEMORY_METRICS_PORT" in captured.err
    # Nothing started: no Redis, no model, no "starting" line.
    assert "starting" not in captured.out and not (tmp_path / "data" / "redis").exists()


def test_one_free_port_wanted_by_two_parts_is_refused_before_anything_starts() -> None:
    # Free, it passed the busy check; the stack then started Redis, the model and the
    # embeddings, and the second part to bind it failed "address already in use (another
    # gensearch running?)".
    from services.gateway.settings import GatewaySettings
    from services.memory.settings import MemorySettings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    args = up_args(Path("unused"), port=0)
    settings = {
        "memory": MemorySettings(port=0, metrics_port=free),
        "gateway": GatewaySettings(port=0, metrics_port=free),
    }
    assert _ports_refused(args, settings) == (
        f"one port for two parts: memory metrics port and gateway metrics port are {free}; "
        "choose others with GENSEARCH_MEMORY_METRICS_PORT, GENSEARCH_GATEWAY_METRICS_PORT "
        "(0 = any free port); nothing was started"
    )


@pytest.mark.parametrize("port", [70000, -1, 65536])
def test_a_port_out_of_range_is_refused_before_anything_starts(port: int) -> None:
    # --port 70000 started the whole stack with the gateway on 4464 (70000 - 65536), and
    # --port -1 was said to be "already in use".
    from services.memory.settings import MemorySettings

    args = up_args(Path("unused"), port=port)
    settings = {"memory": MemorySettings(port=0, metrics_port=None)}
    refused = _ports_refused(args, settings)
    assert refused == f"--port must be 0..65535 (0 = any free port), not {port}"


def test_a_host_this_machine_cannot_listen_on_is_named_as_such() -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: every port was reported
    # "already in use (another gensearch running?)", with the port variables to change.
    from services.memory.settings import MemorySettings

    args = up_args(Path("unused"), host="192.0.2.1", port=0)
    settings = {"memory": MemorySettings(host=args.host, port=0, metrics_port=None)}
    assert _ports_refused(args, settings) == (
        "cannot listen on 192.0.2.1: cannot assign requested address; choose another "
        "with --host (GENSEARCH_HOST); nothing was started"
    )


def test_busy_ports_ignores_port_zero_and_free_ports() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        any_port = stack_mod.WantedPort("a port", 0, "A")
        taken_port = stack_mod.WantedPort("b port", port, "B")
        assert stack_mod.busy_ports("127.0.0.1", [any_port, taken_port]) == [taken_port]
    assert stack_mod.busy_ports("127.0.0.1", [taken_port]) == []


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ports_are_checked_on_a_bracketed_ipv6_host() -> None:
    # The check took --host as given: "[::1]" resolved to nothing, so every wanted port
    # was reported "already in use".
    from services.memory.settings import MemorySettings

    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        free = probe.getsockname()[1]
    args = up_args(Path("unused"), host="[::1]", port=free)
    settings = {"memory": MemorySettings(host=args.host, port=0, metrics_port=None)}
    stack_mod._check_ports(args, settings)  # nothing busy: no CliError


def test_a_port_held_only_in_time_wait_is_not_busy() -> None:
    with socket.socket() as listener:
        # A stopped gRPC server's port: it listened with SO_REUSEADDR, as gRPC does, and its
        # connections (which inherit that) closed first.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: its port goes to TIME_WAIT
            client.recv(1)
    # Nothing listens any more, but the port is in TIME_WAIT, which gRPC binds through.
    assert stack_mod.busy_ports("127.0.0.1", [stack_mod.WantedPort("a port", port, "A")]) == []


def test_the_gateway_tokenizes_where_the_local_model_really_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``up`` starts llama-server on a free port: the gateway's /tokenize must follow it
    (its default, 8088, is the deployments' port), unless the user named one."""
    from services.generation.settings import GenerationSettings

    monkeypatch.delenv("GENSEARCH_GATEWAY_TOKENIZE_URLS", raising=False)
    local = GenerationSettings(
        providers=[{"name": "local", "base_url": "http://127.0.0.1:4321/v1"}]
    )
    assert stack_mod._tokenize_at(local) == {"tokenize_urls": {"local": "http://127.0.0.1:4321"}}
    monkeypatch.setenv("GENSEARCH_GATEWAY_TOKENIZE_URLS", '{"local": "http://llm:8088"}')
    assert stack_mod._tokenize_at(local) == {}


def test_a_malformed_api_key_is_one_plain_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli.__main__ import main

    env = {**STACK_ENV, "GENSEARCH_API_KEYS": "alice:key-one,bob-without-a-key"}
    with mock.patch.dict(os.environ, env):
        code = main(["up", "--data-dir", str(tmp_path / "data"), "--port", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == (
        "error: invalid API keys: GENSEARCH_API_KEYS entry 1: entries must be user:key or "
        "user@tenant/role:key, comma-separated\n"
    )
    assert "key-one" not in captured.out + captured.err
    assert "starting" not in captured.out and not (tmp_path / "data" / "redis").exists()


def test_a_provider_without_its_key_is_named_at_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.generation.settings import GenerationSettings

    for name in ("OPENAI_APIKEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    openai = GenerationSettings(default_provider="openai")
    stack_mod._warn_if_no_provider_key(openai)
    assert capsys.readouterr().err == (
        "warning: provider 'openai' needs an API key and none is set: set OPENAI_APIKEY or "
        "OPENAI_API_KEY, or send one with each call (gensearch --llm-key openai=KEY)\n"
    )

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    stack_mod._warn_if_no_provider_key(openai)
    # A provider that needs no key (the local model) says nothing either.
    stack_mod._warn_if_no_provider_key(GenerationSettings(default_provider="local"))
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_up_on_ipv6_loopback(
    host: str, redis_server: RedisProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gensearch up --host ::1``: each part's address was ``::1:PORT``, which gRPC could
    not bind; the gateway's copy of the settings was not validated, so it would have
    dialled its services at that address too. ``--host [::1]``: gRPC bound it, the
    metrics servers could not ("cannot listen on metrics port")."""
    async with FakeOpenAI() as fake:
        args = up_args(
            tmp_path / "data",
            host=host,
            redis_url=redis_server.url,
            qdrant_url=":memory:",
            llm_provider="vllm",
            llm_base_url=fake.base_url,
        )
        with mock.patch.dict(os.environ, STACK_ENV):
            stack = await stack_mod.start(args)
        try:
            for part in stack.parts.values():
                assert part.address.startswith("[::1]:"), part.address
                assert await check_health(part.address, part.service) == "SERVING"
            # Through the gateway, to memory and back.
            async with AsyncGensearch(stack.gateway_address) as client:
                created = await client.conversations.create("over IPv6")
                assert (await client.conversations.get(created.conversation_id)).name == "over IPv6"
        finally:
            await stack.close()
    assert "[::1]:" in capsys.readouterr().out


def test_up_validates_the_addresses_it_gives_the_gateway() -> None:
    """``_updated`` validates as ``load_settings`` does; ``model_copy`` checked nothing."""
    from pydantic import ValidationError

    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings()
    with pytest.raises(ValidationError, match="memory_addr"):
        stack_mod._updated(settings, memory_addr="::1:50051")
    assert stack_mod._updated(settings, memory_addr="[::1]:50051").memory_addr == "[::1]:50051"


def test_settings_updated_by_up_keep_the_keys_already_read(tmp_path: Path) -> None:
    """A keys file rotated or removed after start-up read it is not read again by the copy
    ``up`` makes (it would start the service with keys nobody checked)."""
    from services.gateway.settings import GatewaySettings

    keys = tmp_path / "keys"
    keys.write_text('keys:\n  - {key: "key-alice", user: alice, tenant: acme, role: admin}\n')
    settings = GatewaySettings(api_keys_file=keys)  # type: ignore[call-arg]
    assert list(settings.api_key_map()) == ["key-alice"]
    keys.unlink()
    copy = stack_mod._updated(settings, memory_addr="[::1]:50051")
    assert list(copy.api_key_map()) == ["key-alice"]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"GENSEARCH_HOST": "bad host"},
            "invalid setting: GENSEARCH_HOST: must be a host name or an IP address "
            "(0.0.0.0 or :: for every interface)",
        ),
        (
            {"GENSEARCH_GATEWAY_REDIS_CLUSTER": "true", "GENSEARCH_GATEWAY_REDIS_URL": ""},
            "invalid setting: GENSEARCH_GATEWAY_REDIS_CLUSTER needs GENSEARCH_GATEWAY_REDIS_URL",
        ),
        (
            # The OTLP exporter's float() of it raised once a service made its tracer.
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "abc",
            },
            "invalid setting: OTEL_EXPORTER_OTLP_TIMEOUT: must be a number of seconds above 0",
        ),
        (
            # up said 'SettingsError: error parsing value for field "request_limits" from
            # source "EnvSettingsSource"': no variable, and every service has the field.
            {"GENSEARCH_GATEWAY_REQUEST_LIMITS": "{bad"},
            "invalid setting: GENSEARCH_GATEWAY_REQUEST_LIMITS: not valid JSON",
        ),
        (
            {"GENSEARCH_RETRIEVAL_REQUEST_LIMITS": "[1"},
            "invalid setting: GENSEARCH_RETRIEVAL_REQUEST_LIMITS: not valid JSON",
        ),
    ],
)
async def test_an_invalid_setting_reads_as_when_a_service_runs_alone(
    tmp_path: Path, variables: dict[str, str], expected: str
) -> None:
    # up said "GENSEARCH_HOST: Value error, must be …" (pydantic's prefix), and a check
    # across settings came out as ": redis_cluster needs redis_url", naming no variable.
    args = up_args(tmp_path / "data", host=variables.get("GENSEARCH_HOST", "127.0.0.1"))
    with (
        mock.patch.dict(os.environ, {**STACK_ENV, **variables}),
        pytest.raises(stack_mod.CliError) as err,
    ):
        await stack_mod.start(args)
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"llm_base_url": "notaurl"},
            "invalid setting: --llm-base-url must be an http:// or https:// URL",
        ),
        (
            {"llm_provider": "nosuch"},
            "invalid setting: --llm-provider (GENSEARCH_GENERATION_DEFAULT_PROVIDER): not a "
            "configured provider (anyscale, local, ollama, openai, vllm)",
        ),
        (
            # A provider of one's own needs its model: was PROVIDERS[0].default_model.
            {"llm_provider": "mine", "llm_base_url": "http://127.0.0.1:1/v1"},
            "invalid setting: --llm-model (provider 'mine'): Field required",
        ),
    ],
)
async def test_a_bad_llm_option_names_the_option_before_anything_starts(
    tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    """They were "error: ProviderError: GENSEARCH_GENERATION_PROVIDERS[0].base_url
    (provider 'local'): …" (a variable nobody set) and "ProviderError: …", the type's name
    in front, as a service alone never says."""
    args = up_args(tmp_path / "data", **overrides)
    with mock.patch.dict(os.environ, STACK_ENV), pytest.raises(stack_mod.CliError) as err:
        await stack_mod.start(args)
    assert str(err.value) == expected


async def test_a_data_dir_that_cannot_be_made_is_one_line_naming_the_option(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = up_args(blocker / "data")
    with mock.patch.dict(os.environ, STACK_ENV), pytest.raises(stack_mod.CliError) as err:
        await stack_mod.start(args)
    assert str(err.value) == (
        f"--data-dir (GENSEARCH_DATA_DIR) {str(blocker / 'data')!r} cannot be created: "
        "Not a directory"
    )


async def test_an_unknown_log_level_names_the_option_and_the_variable(tmp_path: Path) -> None:
    """It was logging's own "error: ValueError: Unknown level: 'LOUD'" (a service alone
    says "invalid setting GENSEARCH_LOG_LEVEL: must be DEBUG, …")."""
    args = up_args(tmp_path / "data", log_level="loud")
    with mock.patch.dict(os.environ, STACK_ENV), pytest.raises(stack_mod.CliError) as err:
        await stack_mod.start(args)
    assert str(err.value) == (
        "invalid setting: --log-level (GENSEARCH_LOG_LEVEL): "
        "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.timeout(60)  # before the fix, the second up came up in this process and served
def test_a_second_up_on_a_data_dir_in_use_is_one_line_before_anything_starts(
    running_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another `up` on the same data dir (other ports) started a second Redis on the first
    one's append-only file, loaded the models, then failed opening the embedded Qdrant's
    write-ahead log: `error: Exception: Service runtime error: failed to open WAL …:
    Can't init WAL: Kind(WouldBlock)`, nothing said of the stack already running there."""
    from services.cli.__main__ import main

    data_dir = running_stack.data_dir
    with mock.patch.dict(os.environ, STACK_ENV):
        code = main(
            ["up", "--data-dir", str(data_dir), "--port", "0",
             "--llm-base-url", running_stack.fake.base_url]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == (
        f"error: the data dir {data_dir.resolve()} is in use by another gensearch up "
        f"(pid {os.getpid()}); stop it, or give this one another --data-dir "
        "(GENSEARCH_DATA_DIR); nothing was started\n"
    )
    assert "starting" not in captured.out
    # The stack already there is untouched: still serving, its stack.json still written.
    serving = running_stack.loop.run(check_health(running_stack.address))
    assert serving == "SERVING"
    assert (data_dir / stack_mod.STACK_FILE).exists()


def test_local_llm_autostart_false_is_heeded_by_up() -> None:
    """`GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART=false` (README's settings table) was
    overridden by `up`: it started its own llama-server on a free port anyway, instead of
    using the local provider's configured endpoint as the service run alone does."""
    from services.generation.settings import LOCAL_PORT

    args = up_args(Path("unused"))
    env = {"GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART": "false"}
    with mock.patch.dict(os.environ, env):
        settings = stack_mod._generation_settings(args, {})
    assert settings.local_llm_autostart is False
    local = settings.provider_configs()["local"]
    assert local.base_url == f"http://127.0.0.1:{LOCAL_PORT}/v1"
    # Unset, `up` starts the local model itself, on a free port.
    with mock.patch.dict(os.environ):
        os.environ.pop("GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART", None)
        started = stack_mod._generation_settings(args, {})
    assert started.local_llm_autostart is True
    assert started.provider_configs()["local"].base_url != local.base_url


def test_a_port_held_by_an_outgoing_connection_is_not_blamed_on_another_gensearch() -> None:
    # An outgoing connection's port (Linux hands out 32768-60999, which holds 50050-50053)
    # stays in TIME_WAIT a minute after it closes, and a server cannot bind it then: `up`
    # said "(another gensearch running?)" while nothing listened at all.
    from services.memory.settings import MemorySettings

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.socket() as client:  # no SO_REUSEADDR, as most clients
            client.bind(("127.0.0.1", 0))
            port = client.getsockname()[1]
            client.connect(listener.getsockname())
            accepted, _ = listener.accept()
            client.close()  # the client closes first: its port goes to TIME_WAIT
            accepted.recv(1)
            accepted.close()
    args = up_args(Path("unused"), port=port)
    settings = {"memory": MemorySettings(port=0, metrics_port=None)}
    assert _ports_refused(args, settings) == (
        f"already in use on 127.0.0.1: gateway port {port} (no server listens on it: a "
        "connection of this machine holds it; one that just closed frees it within a "
        "minute); choose others with --port or GENSEARCH_GATEWAY_PORT (0 = any free port); "
        "nothing was started"
    )
