"""Configuration an operator gets wrong that only the service's start-up used to find: it
stops the process with one line naming the variable, never a traceback and never the
value's secrets (services/common/settings.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.common.settings import MAX_REDIS_DATABASE, CommonSettings, load_settings
from services.devlaunch.redis_server import RedisProcess
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.memory.settings import MemorySettings
from services.retrieval.settings import RetrievalSettings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "TOPSECRET"


async def _start(env_update: dict[str, str], service: str, tmp_path: Path) -> tuple[int, str]:
    """Runs ``python -m services.<service>`` until it exits (killed after 60 s: a service
    that keeps running did not find the problem). Nothing of the suite's own GENSEARCH_ and
    OTEL_ variables is passed on: only ``env_update``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENSEARCH_", "OTEL_"))}
    env.update(
        {
            "GENSEARCH_DATA_DIR": str(tmp_path / "data"),
            f"GENSEARCH_{service.upper()}_PORT": "0",
            f"GENSEARCH_{service.upper()}_METRICS_PORT": "0",
            "GENSEARCH_REDIS_SERVER": os.environ.get("GENSEARCH_REDIS_SERVER", "bundled"),
            **env_update,
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{service}", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


# Options in a Redis URL's query that redis-py takes only when it connects, or builds its
# client: each used to end the memory service in a traceback (or, for TLS files that are
# not there, serve UNAVAILABLE for ever).
BAD_REDIS_OPTIONS = [
    (f"redis://:{SECRET}@127.0.0.1:1/0?socket_timeout=abc", "socket_timeout"),
    (f"redis://:{SECRET}@127.0.0.1:1/0?no_such_option=1", "no_such_option"),
    (f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
    (f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs"),
]


@pytest.mark.parametrize(("url", "option"), BAD_REDIS_OPTIONS)
@pytest.mark.parametrize(
    ("variable", "settings"),
    [
        ("GENSEARCH_MEMORY_REDIS_URL", MemorySettings),
        ("GENSEARCH_GATEWAY_REDIS_URL", GatewaySettings),
        ("GENSEARCH_GENERATION_REDIS_URL", GenerationSettings),
    ],
)
def test_a_redis_url_option_redis_py_refuses_names_the_variable(
    url: str,
    option: str,
    variable: str,
    settings: type[CommonSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(SystemExit) as err:
        load_settings(settings)
    message = err.value.code
    assert isinstance(message, str)
    assert message.startswith(f"invalid setting {variable}: "), message
    assert option in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize(("url", "option"), BAD_REDIS_OPTIONS)
async def test_memory_started_with_a_bad_redis_url_option_exits_with_one_line(
    url: str, option: str, tmp_path: Path
) -> None:
    code, stderr = await _start({"GENSEARCH_MEMORY_REDIS_URL": url}, "memory", tmp_path)
    assert code == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("invalid setting GENSEARCH_MEMORY_REDIS_URL: "), stderr
    assert option in lines[0]
    assert SECRET not in stderr


def test_good_redis_url_options_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        f"redis://:{SECRET}@redis:6379/0?socket_keepalive=true&health_check_interval=5",
        "rediss://redis:6380?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=2",
    ):
        monkeypatch.setenv("GENSEARCH_MEMORY_REDIS_URL", url)
        assert load_settings(MemorySettings)


@pytest.mark.parametrize(
    ("variable", "settings"),
    [
        ("GENSEARCH_RETRIEVAL_LOCAL_MODEL_PATH", RetrievalSettings),
        ("GENSEARCH_MEMORY_SEARCH_MODEL_PATH", MemorySettings),
    ],
)
def test_a_model_path_too_long_for_the_file_system_names_the_variable(
    variable: str, settings: type[CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path.is_dir raised OSError (ENAMETOOLONG) out of the validator: a traceback.
    monkeypatch.setenv(variable, "/" + "m" * 5000)
    with pytest.raises(SystemExit) as err:
        load_settings(settings)
    message = err.value.code
    assert isinstance(message, str)
    assert message.startswith(f"invalid setting {variable}: "), message
    assert "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize(
    ("service", "variables"),
    [
        ("memory", {}),  # the embedded Redis keeps its files there
        ("retrieval", {}),  # the embedded engine keeps its collections there
    ],
)
async def test_a_data_dir_that_cannot_be_a_directory_exits_with_one_line(
    service: str, variables: dict[str, str], tmp_path: Path
) -> None:
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    code, stderr = await _start({"GENSEARCH_DATA_DIR": str(a_file), **variables}, service, tmp_path)
    assert code == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("invalid setting GENSEARCH_DATA_DIR: "), stderr
    assert "Traceback" not in stderr


# A Redis URL's database that redis-py took silently as another one (0, or 1 for "/0/1"),
# or as one Redis refuses on every connection once the service runs.
BAD_REDIS_DATABASES = [
    f"redis://:{SECRET}@127.0.0.1:1/abc",
    f"redis://:{SECRET}@127.0.0.1:1/1x",
    f"rediss://:{SECRET}@127.0.0.1:1/0/1",
    f"redis://:{SECRET}@127.0.0.1:1/-1",
    f"redis://:{SECRET}@127.0.0.1:1?db=-1",
    # Past any database a Redis server has (2^31 - 2 at most: SELECT reads a signed 32-bit
    # int), which redis-py took and Redis refused on every connection.
    f"redis://:{SECRET}@127.0.0.1:1/99999999999999999999",
    f"redis://:{SECRET}@127.0.0.1:1/2147483647",
    f"redis://:{SECRET}@127.0.0.1:1?db=99999999999999999999",
    f"unix:///tmp/redis.sock?password={SECRET}&db=4294967296",
]


@pytest.mark.parametrize("url", BAD_REDIS_DATABASES)
def test_a_redis_url_database_that_is_no_number_names_the_variable(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_MEMORY_REDIS_URL", url)
    with pytest.raises(SystemExit) as err:
        load_settings(MemorySettings)
    message = err.value.code
    assert isinstance(message, str)
    assert message.startswith("invalid setting GENSEARCH_MEMORY_REDIS_URL: its "), message
    assert "database number" in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize("database", ["99999999999999999999", str(MAX_REDIS_DATABASE + 1)])
async def test_redis_itself_refuses_a_database_past_the_bound(
    redis_server: RedisProcess, database: str
) -> None:
    # Why such a URL is refused at start: every connection's SELECT would fail.
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        with pytest.raises(ResponseError):
            await client.execute_command("SELECT", database)
    finally:
        await client.aclose()


def test_redis_url_databases_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        "redis://redis:6379",
        "redis://redis:6379/",
        "redis://redis/15",
        "redis://r?db=3",
        "redis://r/2147483646",  # the last database a server with the most of them has
    ):
        monkeypatch.setenv("GENSEARCH_MEMORY_REDIS_URL", url)
        assert load_settings(MemorySettings)


# A Redis Cluster has database 0 only: redis-py's cluster client refused another when the
# service built it, in a traceback after the settings were accepted.
@pytest.mark.parametrize(
    ("cls", "prefix"),
    [
        (MemorySettings, "GENSEARCH_MEMORY_"),
        (GatewaySettings, "GENSEARCH_GATEWAY_"),
        (GenerationSettings, "GENSEARCH_GENERATION_"),
    ],
)
@pytest.mark.parametrize("database", ["/3", "?db=2"])
def test_a_redis_cluster_url_with_a_database_names_the_variable(
    cls: type[CommonSettings], prefix: str, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{prefix}REDIS_URL", f"redis://:{SECRET}@127.0.0.1:1{database}")
    monkeypatch.setenv(f"{prefix}REDIS_CLUSTER", "true")
    with pytest.raises(SystemExit) as err:
        load_settings(cls)
    message = err.value.code
    assert isinstance(message, str)
    assert message.startswith("invalid setting "), message
    assert f"{prefix}REDIS_URL" in message and "database 0" in message, message
    assert SECRET not in message
    assert "\n" not in message


def test_a_redis_cluster_url_with_database_0_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("redis://redis:6379", "redis://redis:6379/0", "redis://r?db=0"):
        monkeypatch.setenv("GENSEARCH_MEMORY_REDIS_URL", url)
        monkeypatch.setenv("GENSEARCH_MEMORY_REDIS_CLUSTER", "true")
        assert load_settings(MemorySettings).redis_cluster
