"""An invalid setting stops a service with one line naming the variable, never its value
and never a traceback (services/common/settings.py, load_settings)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from services.common.settings import CommonSettings, load_settings
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.memory.settings import MemorySettings
from services.retrieval.settings import RetrievalSettings

ROOT = Path(__file__).resolve().parents[2]


def _exit_message(err: pytest.ExceptionInfo[SystemExit]) -> str:
    assert isinstance(err.value.code, str), err.value.code  # a message: exit status 1
    return err.value.code


def test_a_value_out_of_range_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_MEMORY_MAX_TEXT_BYTES", "-5")
    with pytest.raises(SystemExit) as err:
        load_settings(MemorySettings)
    assert _exit_message(err) == (
        "invalid setting GENSEARCH_MEMORY_MAX_TEXT_BYTES: "
        "Input should be greater than or equal to 1"
    )


def test_a_value_of_the_wrong_shape_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The value may carry credentials (a URL's password): only the variable is named.
    monkeypatch.setenv("GENSEARCH_GATEWAY_TOKENIZE_URLS", '["http://user:TOPSECRET@tok:8080"]')
    with pytest.raises(SystemExit) as err:
        load_settings(GatewaySettings)
    message = _exit_message(err)
    assert message.startswith("invalid setting GENSEARCH_GATEWAY_TOKENIZE_URLS: "), message
    assert "TOPSECRET" not in message


def test_json_that_does_not_parse_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_GENERATION_PROVIDERS", '[{"name": "x", "base_url": ')
    with pytest.raises(SystemExit) as err:
        load_settings(GenerationSettings)
    assert _exit_message(err) == "invalid setting GENSEARCH_GENERATION_PROVIDERS: not valid JSON"


@pytest.mark.parametrize("service", ["memory", "retrieval", "generation", "gateway"])
async def test_a_service_started_with_an_invalid_setting_exits_with_one_line(
    service: str, tmp_path: Path
) -> None:
    variable = f"GENSEARCH_{service.upper()}_PORT"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update({"GENSEARCH_DATA_DIR": str(tmp_path), variable: "70000"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{service}", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert stderr.decode().splitlines() == [
        f"invalid setting {variable}: Input should be less than or equal to 65535"
    ]


@pytest.mark.parametrize(
    ("variable", "settings"),
    [
        ("GENSEARCH_RETRIEVAL_LOCAL_MODEL_PATH", RetrievalSettings),
        ("GENSEARCH_MEMORY_SEARCH_MODEL_PATH", MemorySettings),
    ],
)
def test_a_model_path_that_is_not_a_directory_stops_the_service(
    variable: str, settings: type[CommonSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loaded lazily, a wrong path would fail every call that embeds (retrieval: INTERNAL).
    missing = tmp_path / "no-model"
    monkeypatch.setenv(variable, str(missing))
    with pytest.raises(SystemExit) as err:
        load_settings(settings)
    assert _exit_message(err) == f"invalid setting {variable}: '{missing}' is not a directory"
    monkeypatch.setenv(variable, str(tmp_path))
    assert load_settings(settings)


@pytest.mark.parametrize(
    ("variable", "settings"),
    [
        ("GENSEARCH_MEMORY_REDIS_URL", MemorySettings),
        ("GENSEARCH_GATEWAY_REDIS_URL", GatewaySettings),
        ("GENSEARCH_GENERATION_REDIS_URL", GenerationSettings),
    ],
)
def test_a_redis_url_redis_py_cannot_open_stops_the_service(
    variable: str, settings: type[CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py itself refuses it only when the client is built, in a traceback.
    monkeypatch.setenv(variable, "http://user:TOPSECRET@redis:6379")
    with pytest.raises(SystemExit) as err:
        load_settings(settings)
    assert _exit_message(err) == (
        f"invalid setting {variable}: "
        "must start with redis://, rediss:// or unix:// and name a server"
    )
    for valid in ("redis://user:TOPSECRET@redis:6379/0", "rediss://redis", "unix:///run/r.sock"):
        monkeypatch.setenv(variable, valid)
        assert load_settings(settings)


def test_an_unknown_log_level_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_LOG_LEVEL", "LOUD")
    with pytest.raises(SystemExit) as err:
        load_settings(MemorySettings)
    assert _exit_message(err) == (
        "invalid setting GENSEARCH_LOG_LEVEL: must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    monkeypatch.setenv("GENSEARCH_LOG_LEVEL", "warning")
    assert load_settings(MemorySettings).log_level == "WARNING"


def test_a_malformed_api_key_entry_is_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_API_KEYS", "alice:k1,TOPSECRETKEY")
    with pytest.raises(SystemExit) as err:
        load_settings(MemorySettings)
    message = _exit_message(err)
    assert message.startswith("invalid setting GENSEARCH_API_KEYS entry 1: "), message
    assert "TOPSECRETKEY" not in message and "\n" not in message
