"""An invalid setting stops a service with one line naming the variable, never its value
and never a traceback (services/common/settings.py, load_settings)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.settings import CommonSettings, load_settings
from services.gateway.settings import GatewaySettings
from services.generation.keys import env_key
from services.generation.settings import GenerationSettings
from services.memory.settings import MemorySettings
from services.retrieval.settings import RetrievalSettings

ROOT = Path(__file__).resolve().parents[2]


async def _stderr_at_exit(proc: asyncio.subprocess.Process) -> bytes:
    """What a service said before it exited; one that keeps running (the check it should
    fail is missing) is killed, not left behind."""
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return stderr


def _refusal(settings: type[CommonSettings]) -> str:
    """The message ``load_settings(settings)`` exits with (a message: exit status 1)."""
    with pytest.raises(SystemExit) as err:
        load_settings(settings)
    assert isinstance(err.value.code, str), err.value.code
    return err.value.code


def test_a_value_out_of_range_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_MEMORY_MAX_TEXT_BYTES", "-5")
    assert _refusal(MemorySettings) == (
        "invalid setting GENSEARCH_MEMORY_MAX_TEXT_BYTES: "
        "Input should be greater than or equal to 1"
    )


def test_a_value_of_the_wrong_shape_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The value may carry credentials (a URL's password): only the variable is named.
    monkeypatch.setenv("GENSEARCH_GATEWAY_TOKENIZE_URLS", '["http://user:TOPSECRET@tok:8080"]')
    message = _refusal(GatewaySettings)
    assert message.startswith("invalid setting GENSEARCH_GATEWAY_TOKENIZE_URLS: "), message
    assert "TOPSECRET" not in message


def test_json_that_does_not_parse_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_GENERATION_PROVIDERS", '[{"name": "x", "base_url": ')
    assert (
        _refusal(GenerationSettings)
        == "invalid setting GENSEARCH_GENERATION_PROVIDERS: not valid JSON"
    )


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT": "50"},
            "invalid setting GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT (50) must be 0 (no "
            "bound) or more than GENSEARCH_GATEWAY_MAX_HITS (100): a request of "
            "GENSEARCH_GATEWAY_MAX_HITS hits and a grouped call would otherwise wait for its "
            "own calls",
        ),
        (
            {"GENSEARCH_GATEWAY_REDIS_CLUSTER": "true"},
            "invalid setting GENSEARCH_GATEWAY_REDIS_CLUSTER needs GENSEARCH_GATEWAY_REDIS_URL",
        ),
    ],
)
def test_a_check_across_settings_names_the_variables(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    # It named the fields ("generation_max_in_flight (50) must be ... more than max_hits"):
    # an operator had to guess which variables those were.
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert _refusal(GatewaySettings) == expected


@pytest.mark.parametrize(
    ("settings", "default", "limit"),
    [
        (GatewaySettings, "GENSEARCH_GATEWAY_ASK_TIMEOUT", "GENSEARCH_GATEWAY_MAX_ASK_TIMEOUT"),
        (
            GatewaySettings,
            "GENSEARCH_GATEWAY_ASK_CONTEXT_SIZE",
            "GENSEARCH_GATEWAY_MAX_CONTEXT_SIZE",
        ),
        (
            GatewaySettings,
            "GENSEARCH_GATEWAY_ASK_INTERACTION_SIZE",
            "GENSEARCH_GATEWAY_MAX_INTERACTION_SIZE",
        ),
        (
            GatewaySettings,
            "GENSEARCH_GATEWAY_EXPANSION_TOKENS",
            "GENSEARCH_GATEWAY_MAX_EXPANSION_TOKENS",
        ),
        (GatewaySettings, "GENSEARCH_GATEWAY_CACHE_DEFAULT_TTL", "GENSEARCH_GATEWAY_CACHE_MAX_TTL"),
        (
            MemorySettings,
            "GENSEARCH_MEMORY_DEFAULT_CONVERSATION_TTL_SECONDS",
            "GENSEARCH_MEMORY_MAX_CONVERSATION_TTL_SECONDS",
        ),
    ],
)
def test_a_default_past_its_maximum_stops_the_service(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    settings: type[CommonSettings],
    default: str,
    limit: str,
) -> None:
    """What a request gets when it sets none (an Ask's timeout, context_size,
    interaction_size, expand_context.max_tokens; a conversation's ttl) was used unchecked:
    set above the most a request may ask for, every request that set nothing got more than
    any request that set it could (an Ask of 700 s without a timeout, INVALID_ARGUMENT
    with one of 700 s). Refused at start naming both variables, as the cache TTLs were."""
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(limit, "60")
    monkeypatch.setenv(default, "61")
    assert _refusal(settings) == f"invalid setting {default} must not exceed {limit}"
    # Equal, or the default below its maximum: the service starts.
    monkeypatch.setenv(default, "60")
    assert load_settings(settings)
    monkeypatch.setenv(default, "1")
    assert load_settings(settings)


def test_an_ask_that_outlives_its_claim_stops_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Ask's claim on its request_id is capped at MEMORY_MAX_CLAIM_SECONDS: with the
    longest Ask (MAX_ASK_TIMEOUT, plus ASK_CLEANUP_SECONDS) above it, the claim ended while
    the Ask still ran, and a retry with the same request_id called the LLM a second time
    (seen: two calls, both answers replayed=False) instead of REQUEST_ID_IN_USE."""
    monkeypatch.setenv("GENSEARCH_GATEWAY_MAX_ASK_TIMEOUT", "3600")
    assert _refusal(GatewaySettings) == (
        "invalid setting GENSEARCH_GATEWAY_MAX_ASK_TIMEOUT + "
        "GENSEARCH_GATEWAY_ASK_CLEANUP_SECONDS must not exceed "
        "GENSEARCH_GATEWAY_MEMORY_MAX_CLAIM_SECONDS: a claim on a request_id would end while "
        "its Ask still runs, and a retry would pay for a second answer"
    )
    # Raised with it (memory's MAX_CLAIM_SECONDS too, docs/gateway.md), it starts.
    monkeypatch.setenv("GENSEARCH_GATEWAY_MEMORY_MAX_CLAIM_SECONDS", "3630")
    assert load_settings(GatewaySettings).max_ask_timeout == 3600


@pytest.mark.parametrize(
    ("service", "settings"),
    [
        ("GATEWAY", GatewaySettings),
        ("MEMORY", MemorySettings),
        ("RETRIEVAL", RetrievalSettings),
        ("GENERATION", GenerationSettings),
    ],
)
def test_a_connection_age_grace_without_an_age_stops_the_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, service: str, settings: type[CommonSettings]
) -> None:
    """MAX_CONNECTION_AGE_GRACE counts from MAX_CONNECTION_AGE: with the age 0 (never) the
    grace was silently ignored, and nothing bounded a cut stream left unread. It stops the
    service with one line naming both variables, as REDIS_CLUSTER without REDIS_URL does."""
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(f"GENSEARCH_{service}_MAX_CONNECTION_AGE_GRACE", "3600")
    assert _refusal(settings) == (
        f"invalid setting GENSEARCH_{service}_MAX_CONNECTION_AGE_GRACE needs "
        f"GENSEARCH_{service}_MAX_CONNECTION_AGE (above 0): the grace counts from that age, "
        "so without it nothing would close the connection"
    )
    # With an age, or without a grace, the service starts.
    monkeypatch.setenv(f"GENSEARCH_{service}_MAX_CONNECTION_AGE", "60")
    assert load_settings(settings).max_connection_age_grace == 3600
    monkeypatch.setenv(f"GENSEARCH_{service}_MAX_CONNECTION_AGE", "0")
    monkeypatch.setenv(f"GENSEARCH_{service}_MAX_CONNECTION_AGE_GRACE", "0")
    assert load_settings(settings).max_connection_age == 0


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
    stderr = await _stderr_at_exit(proc)
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
    assert _refusal(settings) == f"invalid setting {variable}: '{missing}' is not a directory"
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
    assert _refusal(settings) == (
        f"invalid setting {variable}: "
        "must start with redis://, rediss:// or unix:// and name a server"
    )
    # A port out of range: redis-py raised ValueError("Port out of range") in a traceback.
    monkeypatch.setenv(variable, "redis://user:TOPSECRET@redis:99999/0")
    assert _refusal(settings) == (
        f"invalid setting {variable}: must give its port as a number from 0 to 65535"
    )
    for valid in ("redis://user:TOPSECRET@redis:6379/0", "rediss://redis", "unix:///run/r.sock"):
        monkeypatch.setenv(variable, valid)
        assert load_settings(settings)


def test_an_unknown_log_level_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_LOG_LEVEL", "LOUD")
    assert _refusal(MemorySettings) == (
        "invalid setting GENSEARCH_LOG_LEVEL: must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    monkeypatch.setenv("GENSEARCH_LOG_LEVEL", "warning")
    assert load_settings(MemorySettings).log_level == "WARNING"


def test_a_malformed_api_key_entry_is_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_API_KEYS", "alice:k1,TOPSECRETKEY")
    message = _refusal(MemorySettings)
    assert message.startswith("invalid setting GENSEARCH_API_KEYS entry 1: "), message
    assert "TOPSECRETKEY" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        # A Secret made from a file that ends in a newline: gRPC sends no header holding
        # one, so the gateway failed every call it passed on, after a clean start.
        (
            "GENSEARCH_INTERNAL_TOKEN",
            "TOPSECRET\n",
            "GENSEARCH_INTERNAL_TOKEN: must be printable ASCII",
        ),
        # The HTTP client under qdrant-client sends neither: a newline read as "Qdrant
        # unavailable" for ever, a non-ASCII letter stopped retrieval with a traceback.
        (
            "GENSEARCH_RETRIEVAL_QDRANT_API_KEY",
            "TOPSECRET\n",
            "GENSEARCH_RETRIEVAL_QDRANT_API_KEY: must be printable ASCII",
        ),
        (
            "GENSEARCH_MEMORY_SEARCH_QDRANT_API_KEY",
            "TOPSECR\u00c9T",
            "GENSEARCH_MEMORY_SEARCH_QDRANT_API_KEY: must be printable ASCII",
        ),
        # Keys no caller can send in its authorization header: they matched no call.
        (
            "GENSEARCH_API_KEYS",
            "alice:k1,bob:TOPSECR\u00c9T",
            "GENSEARCH_API_KEYS entry 1: the key must be printable ASCII",
        ),
        (
            "GENSEARCH_API_KEYS",
            "alice:TOPSECRET\x07x",
            "GENSEARCH_API_KEYS entry 0: the key must be printable ASCII",
        ),
    ],
)
def test_a_key_or_token_grpc_cannot_send_stops_the_service(
    variable: str, value: str, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    for settings in (GatewaySettings, MemorySettings, RetrievalSettings):
        if variable not in settings.env_names():
            continue
        message = _refusal(settings)
        assert message.startswith(f"invalid setting {line}"), message
        assert "TOPSECR" not in message and "\n" not in message


def test_a_key_in_the_keys_file_grpc_cannot_send_stops_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text('keys:\n  - {key: "TOPSECRET\\tx", user: a, tenant: t, role: admin}\n')
    monkeypatch.setenv("GENSEARCH_API_KEYS_FILE", str(path))
    message = _refusal(RetrievalSettings)
    assert message == (
        "invalid setting GENSEARCH_API_KEYS_FILE keys[0]: 'key' must be printable ASCII "
        "(no control characters, newlines or non-ASCII letters)"
    )


def test_keys_and_tokens_of_printable_ascii_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_INTERNAL_TOKEN", "t0k~en with spaces!")
    monkeypatch.setenv("GENSEARCH_API_KEYS", "alice:k e y~!")
    assert load_settings(MemorySettings).api_key_map()["k e y~!"].user == "alice"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("   ", "must name the local model (collections store it)"),
        ("mini\x07lm", "a model name must not contain control characters"),
        ("", "must name the local model (collections store it)"),
    ],
)
def test_a_local_model_name_no_request_could_name_stops_retrieval(
    value: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stored as every local collection's vectorizer model, and the one name a request may
    # give it: before, any string was accepted and stored.
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_LOCAL_MODEL_NAME", value)
    message = _refusal(RetrievalSettings)
    assert message.startswith("invalid setting GENSEARCH_RETRIEVAL_LOCAL_MODEL_NAME"), message
    assert problem in message


def test_a_request_limit_naming_no_method_stops_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The variable replaces the whole default: a typo left ImportObjects at 4 MiB, so every
    # 16 MiB import batch was refused, after a clean start.
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_REQUEST_LIMITS", '{"ImportObject": 33554432}')
    assert _refusal(RetrievalSettings) == (
        "invalid setting GENSEARCH_RETRIEVAL_REQUEST_LIMITS: 'ImportObject' is no method of "
        "a gensearch service (did you mean ImportObjects?): keys are method names such as "
        "ImportObjects"
    )


def test_a_request_limit_of_another_services_method_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One value may be copied to every namespace: memory ignores ImportObjects.
    limits = '{"ImportObjects": 33554432, "CreateInteraction": 8388608}'
    monkeypatch.setenv("GENSEARCH_MEMORY_REQUEST_LIMITS", limits)
    assert load_settings(MemorySettings).request_limit("ImportObjects") == 33554432


def _generation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GENSEARCH_GENERATION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(
        "GENSEARCH_GENERATION_PROVIDERS",
        '[{"name": "fake", "base_url": "http://127.0.0.1:1/v1", "default_model": "m"}]',
    )
    monkeypatch.setenv("GENSEARCH_GENERATION_DEFAULT_PROVIDER", "fake")


def test_a_provider_key_no_http_header_can_hold_stops_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pasted key with a typographic letter: the openai SDK's HTTP client raised
    # UnicodeEncodeError on every call to the provider, after a clean start.
    _generation_env(monkeypatch)
    monkeypatch.setenv("OPENAI_APIKEY", "sk-TOPSECR\u00c9T")
    message = _refusal(GenerationSettings)
    assert message == (
        "invalid setting OPENAI_APIKEY (the key of provider 'openai'): must be printable "
        "ASCII (no control characters, newlines or non-ASCII letters)"
    )
    # Spaces and a newline around it are stripped where it is read: accepted.
    monkeypatch.setenv("OPENAI_APIKEY", "sk-TOPSECRET\n")
    assert load_settings(GenerationSettings).default_provider == "fake"


def test_only_the_key_a_provider_sends_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check read every variable of api_key_env, while calls send only the first one
    # holding a key (keys.env_key): a stray OPENAI_API_KEY stopped a generation whose
    # OPENAI_APIKEY was the key in use.
    _generation_env(monkeypatch)
    monkeypatch.setenv("OPENAI_APIKEY", "sk-INUSE")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-TOPSECR\u00c9T")
    settings = load_settings(GenerationSettings)
    openai = settings.provider_configs()["openai"]
    assert env_key(openai) == "sk-INUSE"
    # Empty (or only spaces), the first is passed over by both: the second is sent, and
    # so it is checked.
    monkeypatch.setenv("OPENAI_APIKEY", "  ")
    assert _refusal(GenerationSettings) == (
        "invalid setting OPENAI_API_KEY (the key of provider 'openai'): must be printable "
        "ASCII (no control characters, newlines or non-ASCII letters)"
    )


def test_a_preset_nobody_configured_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decided: a caller may name any built-in preset per request, configured or not, and
    # each such call would send this key and fail.
    _generation_env(monkeypatch)
    monkeypatch.setenv("OLLAMA_API_KEY", "caf\u00e9")
    assert _refusal(GenerationSettings) == (
        "invalid setting OLLAMA_API_KEY (the key of provider 'ollama'): must be printable "
        "ASCII (no control characters, newlines or non-ASCII letters)"
    )


def test_an_embeddings_or_rerank_key_no_http_header_can_hold_stops_retrieval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, retrieval started and every UpsertObjects of a collection naming the
    # variable was UNAVAILABLE (EMBEDDINGS_UNAVAILABLE, "malformed body"), for ever.
    monkeypatch.setenv(
        "GENSEARCH_RETRIEVAL_EMBEDDING_KEY_URLS", '{"TEST_EMBED_KEY": "http://127.0.0.1:9/v1"}'
    )
    monkeypatch.setenv(
        "GENSEARCH_RETRIEVAL_RERANK_PROVIDERS",
        '{"tei": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "TEST_RERANK_KEY"}}',
    )
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-TOPSECR\u00c9T")
    monkeypatch.setenv("TEST_RERANK_KEY", "sk-TOP\tSECRET")
    message = _refusal(RetrievalSettings)
    assert message == (
        "invalid setting TEST_EMBED_KEY (an embeddings key in "
        "GENSEARCH_RETRIEVAL_EMBEDDING_KEY_URLS): must be printable ASCII (no control "
        "characters, newlines or non-ASCII letters)\n"
        "invalid setting TEST_RERANK_KEY (the key of rerank provider 'tei'): must be "
        "printable ASCII (no control characters, newlines or non-ASCII letters)"
    )
    assert "TOPSECR" not in message
    # Sent stripped: a key that can travel starts, a newline after it too (a Secret made
    # from a file keeps its last one).
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-TOPSECRET\n")
    monkeypatch.setenv("TEST_RERANK_KEY", "sk-TOPSECRET")
    assert load_settings(RetrievalSettings).embedding_key_urls == {
        "TEST_EMBED_KEY": "http://127.0.0.1:9/v1"
    }


@pytest.mark.parametrize(
    ("variables", "lines"),
    [
        # A provider's field from its own variable: that variable is named, not the provider.
        (
            {"GENSEARCH_GENERATION_FAKE_BASE_URL": "::user:TOPSECRET@bad"},
            [
                "GENSEARCH_GENERATION_FAKE_BASE_URL (provider 'fake'): "
                "base_url must start with http:// or https://"
            ],
        ),
        (
            {"GENSEARCH_GENERATION_DEFAULT_PROVIDER": "nonexistent"},
            [
                "GENSEARCH_GENERATION_DEFAULT_PROVIDER: not a configured provider "
                "(anyscale, fake, local, ollama, openai, vllm)"
            ],
        ),
        # From an entry of PROVIDERS: the entry and its field, one line each.
        (
            {
                "GENSEARCH_GENERATION_PROVIDERS": '[{"name": "fake", "base_url": '
                '"http://u:TOPSECRET@x/v1", "api_key": "sk-TOPSECRET"}]'
            },
            [
                "GENSEARCH_GENERATION_PROVIDERS[0].base_url (provider 'fake'): base_url must "
                "not carry credentials (user:password@): set the provider's key variable "
                "(api_key_env) instead",
                "GENSEARCH_GENERATION_PROVIDERS[0].default_model (provider 'fake'): Field required",
                "GENSEARCH_GENERATION_PROVIDERS[0].api_key (provider 'fake'): "
                "not a field of a provider (did you mean api_key_env?)",
            ],
        ),
        # A default model of spaces only was sent upstream with every call naming none;
        # a _MODEL also replaces the model list, but the value is named once.
        (
            {"GENSEARCH_GENERATION_LOCAL_MODEL": "   "},
            [
                "GENSEARCH_GENERATION_LOCAL_MODEL (provider 'local'): a model name must not "
                "be only spaces (leave it empty for the default model)"
            ],
        ),
        (
            {"GENSEARCH_GENERATION_PROVIDERS": '[{"name": "vllm", "models": ["m", " "]}]'},
            [
                "GENSEARCH_GENERATION_PROVIDERS[0].models (provider 'vllm'): a model name "
                "must not be only spaces (leave it empty for the default model)"
            ],
        ),
        (
            {"GENSEARCH_GENERATION_OPENAI_MAX_CONCURRENCY": "0"},
            [
                "GENSEARCH_GENERATION_OPENAI_MAX_CONCURRENCY (provider 'openai'): "
                "Input should be greater than or equal to 1"
            ],
        ),
    ],
)
def test_a_misconfigured_provider_names_its_variable(
    variables: dict[str, str], lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked when the providers are resolved, after the fields load: it was a traceback.
    _generation_env(monkeypatch)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    message = _refusal(GenerationSettings)
    assert message.splitlines() == [f"invalid setting {line}" for line in lines]
    assert "TOPSECRET" not in message


@pytest.mark.parametrize(
    ("variable", "settings"),
    [
        ("GENSEARCH_RETRIEVAL_QDRANT_URL", RetrievalSettings),
        ("GENSEARCH_MEMORY_SEARCH_QDRANT_URL", MemorySettings),
    ],
)
def test_a_qdrant_url_the_client_cannot_open_stops_the_service(
    variable: str, settings: type[CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # qdrant-client refused it only when the store was built ("Unknown scheme: ftp").
    for invalid in ("ftp://user:TOPSECRET@x", "qdrant:6333", "http://", "http://[bad"):
        monkeypatch.setenv(variable, invalid)
        assert _refusal(settings) == (
            f"invalid setting {variable}: "
            "must be an http:// or https:// URL of a Qdrant server, or :memory:"
        )
    # qdrant-client sends neither a URL's user info nor its query (the key goes in
    # _QDRANT_API_KEY): taken, every call went without the credential written.
    for credentials in ("http://u:TOPSECRET@qdrant:6333", "https://q.example?api-key=TOPSECRET"):
        monkeypatch.setenv(variable, credentials)
        assert _refusal(settings) == (
            f"invalid setting {variable}: must not carry credentials (user:password@) or a "
            "query: the Qdrant client drops them; give the key in the matching "
            "_QDRANT_API_KEY setting"
        )
    # Port 0 became the client's default, 6333.
    monkeypatch.setenv(variable, "http://qdrant:0")
    assert _refusal(settings) == (
        f"invalid setting {variable}: must give its port as a number from 1 to 65535"
    )
    for valid in ("http://qdrant:6333/prefix", "https://q.example", "localhost:6333"):
        monkeypatch.setenv(variable, valid)
        assert load_settings(settings)


def test_a_short_page_token_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The servicer refused it at start, in a traceback that showed no variable.
    monkeypatch.setenv("GENSEARCH_MEMORY_PAGE_TOKEN_SECRET", "TOPSECRET")
    assert _refusal(MemorySettings) == (
        "invalid setting GENSEARCH_MEMORY_PAGE_TOKEN_SECRET: must be at least 16 bytes"
    )


def test_an_allowlist_entry_is_quoted_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_GENERATION_ALLOWED_HOSTS", "https://u:TOPSECRET@h/p?k=SECRET2")
    message = _refusal(GenerationSettings)
    assert message.startswith("invalid setting GENSEARCH_GENERATION_ALLOWED_HOSTS: "), message
    assert "https://***@h/p?…" in message
    assert "TOPSECRET" not in message and "SECRET2" not in message


#: A generation provider entry, for the cases of a key that names nothing.
KEYS_PROVIDER = '"name": "fake", "base_url": "http://127.0.0.1:1/v1", "default_model": "m"'


@pytest.mark.parametrize(
    ("service", "variables", "line"),
    [
        (
            "generation",
            {
                "GENSEARCH_GENERATION_PROVIDERS": '[{"name": "fake", "base_url": '
                '"http://127.0.0.1:1/v1", "default_model": "m"}]',
                "GENSEARCH_GENERATION_DEFAULT_PROVIDER": "fake",
                "GENSEARCH_GENERATION_FAKE_BASE_URL": "::bad",
            },
            "GENSEARCH_GENERATION_FAKE_BASE_URL (provider 'fake'): "
            "base_url must start with http:// or https://",
        ),
        (
            "gateway",
            {"GENSEARCH_GATEWAY_MEMORY_ADDR": "http://user:TOPSECRET@memory:50051"},
            "GENSEARCH_GATEWAY_MEMORY_ADDR: a gRPC target is not a URL: use "
            "host:port or dns:///host:port (or an ipv4:, ipv6: or unix: target)",
        ),
        (
            "retrieval",
            {"GENSEARCH_RETRIEVAL_QDRANT_URL": "ftp://x"},
            "GENSEARCH_RETRIEVAL_QDRANT_URL: "
            "must be an http:// or https:// URL of a Qdrant server, or :memory:",
        ),
        # The keys of JSON object settings (test_settings_keys.py).
        (
            # An empty key is part of every model name: it silently became the window of
            # every model no other key named.
            "gateway",
            {"GENSEARCH_GATEWAY_CONTEXT_WINDOWS": '{"": 4096, "gpt-4o": 128000}'},
            "GENSEARCH_GATEWAY_CONTEXT_WINDOWS: a key must name (part of) a model; the "
            "models no key names get GENSEARCH_GATEWAY_DEFAULT_CONTEXT_WINDOW",
        ),
        (
            "gateway",
            {"GENSEARCH_GATEWAY_CONTEXT_WINDOWS": '{"gpt-4o\\n": 4096}'},
            "GENSEARCH_GATEWAY_CONTEXT_WINDOWS: key 'gpt-4o\\n': a model name must not "
            "contain control characters",
        ),
        (
            # No provider can have the name: its models were counted by estimate for ever.
            "gateway",
            {"GENSEARCH_GATEWAY_TOKENIZE_URLS": '{"local ": "http://127.0.0.1:8088"}'},
            "GENSEARCH_GATEWAY_TOKENIZE_URLS: key 'local ': provider names are lower-case "
            "letters, digits, '-' or '_'",
        ),
        (
            # Refused before too, but as "Extra inputs are not permitted".
            "retrieval",
            {
                "GENSEARCH_RETRIEVAL_RERANK_PROVIDERS": (
                    '{"tei": {"base_url": "http://tei:8080/v1", "api_key_var": "TEI_KEY"}}'
                )
            },
            "GENSEARCH_RETRIEVAL_RERANK_PROVIDERS.tei.api_key_var: not a field of a rerank "
            "provider (did you mean api_key_env?)",
        ),
        (
            "generation",
            {
                "GENSEARCH_GENERATION_PROVIDERS": f'[{{{KEYS_PROVIDER}, "max_concurency": 4}}]',
                "GENSEARCH_GENERATION_DEFAULT_PROVIDER": "fake",
            },
            "GENSEARCH_GENERATION_PROVIDERS[0].max_concurency (provider 'fake'): not a field "
            "of a provider (did you mean max_concurrency?)",
        ),
        (
            # Read lower-cased: one of the two URLs was silently lost.
            "gateway",
            {
                "GENSEARCH_GATEWAY_TOKENIZE_URLS": (
                    '{"Local": "http://127.0.0.1:8088", "local": "http://127.0.0.1:8089"}'
                )
            },
            "GENSEARCH_GATEWAY_TOKENIZE_URLS: keys 'Local' and 'local' are the same key "
            "(provider names are read lower-cased)",
        ),
        (
            # Matched inside a model's name, spaces and all: it never matched.
            "gateway",
            {"GENSEARCH_GATEWAY_CONTEXT_WINDOWS": '{" gpt-4o ": 4096}'},
            "GENSEARCH_GATEWAY_CONTEXT_WINDOWS: key ' gpt-4o ': spaces around it are no "
            "part of a model name; the key would never match",
        ),
        (
            "gateway",
            {"GENSEARCH_GATEWAY_CONTEXT_WINDOWS": '{"gpt-4o": 4096, "GPT-4o": 8192}'},
            "GENSEARCH_GATEWAY_CONTEXT_WINDOWS: keys 'gpt-4o' and 'GPT-4o' are the same key "
            "(model names are matched case-insensitively)",
        ),
    ],
)
async def test_a_service_with_a_problem_found_after_loading_exits_with_one_line(
    service: str, variables: dict[str, str], line: str, tmp_path: Path
) -> None:
    assert await lines_at_exit(service, variables, tmp_path) == [f"invalid setting {line}"]


async def lines_at_exit(service: str, variables: dict[str, str], data_dir: Path) -> list[str]:
    """What ``python -m services.<service>`` says on stderr, run with ``variables`` alone of
    the GENSEARCH_ ones (and ``data_dir``), once it exited with status 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update({"GENSEARCH_DATA_DIR": str(data_dir), **variables})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{service}", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stderr = await _stderr_at_exit(proc)
    assert proc.returncode == 1
    return stderr.decode().splitlines()


TARGETS = "host:port or dns:///host:port (or an ipv4:, ipv6: or unix: target)"


@pytest.mark.parametrize(
    "variable",
    [
        "GENSEARCH_GATEWAY_MEMORY_ADDR",
        "GENSEARCH_GATEWAY_RETRIEVAL_ADDR",
        "GENSEARCH_GATEWAY_GENERATION_ADDR",
    ],
)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://user:TOPSECRET@memory:50051", f"a gRPC target is not a URL: use {TARGETS}"),
        ("xds:///memory", f"unknown scheme: use {TARGETS}"),
        ("memory", f"needs a port: {TARGETS}"),  # gRPC would quietly use port 443
        ("dns:///memory", f"needs a port: {TARGETS}"),
        ("memory:99999", "must give its port as a number from 1 to 65535"),
        ("memory:TOPSECRET", "must give its port as a number from 1 to 65535"),
        ("user:TOPSECRET@memory:50051", f"must be {TARGETS}"),
        ("mem ory:50051", f"must be {TARGETS}"),
        ("", f"must be {TARGETS}"),
    ],
)
def test_a_downstream_address_grpc_cannot_use_stops_the_gateway(
    variable: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC takes any string as a target and fails every call to it with UNAVAILABLE.
    monkeypatch.setenv(variable, value)
    assert _refusal(GatewaySettings) == f"invalid setting {variable}: {reason}"


@pytest.mark.parametrize(
    "value",
    [
        "memory:50051",
        "10.0.0.5:50051",
        "[fd00::5]:50051",
        "dns:///generation-headless:50053",
        "dns://10.0.0.2/memory.svc:50051",
        "ipv4:10.0.0.5:50051,10.0.0.6:50051",
        "ipv6:[fd00::5]:50051",
        "unix:///run/gensearch/memory.sock",
    ],
)
def test_every_target_form_grpc_resolves_is_accepted(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_GATEWAY_MEMORY_ADDR", value)
    assert load_settings(GatewaySettings).memory_addr == value


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://user:TOPSECRET@tok:8088", "must be an http:// or https:// URL"),
        ("127.0.0.1:8088", "must be an http:// or https:// URL"),
        ("http://", "must name a host"),
        ("http://user:TOPSECRET@tok:99999", "must give its port as a number from 1 to 65535"),
        ("http://tok:TOPSECRET", "must give its port as a number from 1 to 65535"),
        ("http://tok:8088/?key=TOPSECRET", "must not have a query or fragment"),
    ],
)
def test_a_tokenize_url_that_is_not_http_stops_the_gateway(
    url: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was only found out at the first Ask ("tokenize unavailable", estimates for ever).
    monkeypatch.setenv("GENSEARCH_GATEWAY_TOKENIZE_URLS", json.dumps({"local": url}))
    assert _refusal(GatewaySettings) == (
        f"invalid setting GENSEARCH_GATEWAY_TOKENIZE_URLS: the URL of provider 'local' {reason}"
    )
    monkeypatch.setenv(
        "GENSEARCH_GATEWAY_TOKENIZE_URLS",
        '{"local": "http://127.0.0.1:8088", "vllm": "https://u:TOPSECRET@tok.example/"}',
    )
    assert load_settings(GatewaySettings)


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        (
            "GENSEARCH_GATEWAY_DEFAULT_MODEL",
            "   ",
            "a model name must not be only spaces (leave it empty for the default model)",
        ),
        (
            "GENSEARCH_GATEWAY_DEFAULT_MODEL",
            "gpt\n4o",
            "a model name must not contain control characters",
        ),
        (
            "GENSEARCH_GATEWAY_DEFAULT_PROVIDER",
            "  ",
            "a provider name must not be only spaces "
            "(leave it empty for the generation service's default)",
        ),
        (
            "GENSEARCH_GATEWAY_DEFAULT_PROVIDER",
            "open ai",
            "provider names are lower-case letters, digits, '-' or '_'",
        ),
    ],
)
def test_a_gateway_default_model_or_provider_no_request_could_name_stops_it(
    variable: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spaces only were accepted: every call naming no model then failed INVALID_ARGUMENT
    # "model" (blaming the caller), and a provider of spaces silently meant the default.
    monkeypatch.setenv(variable, value)
    assert _refusal(GatewaySettings) == f"invalid setting {variable}: {reason}"


def test_a_gateway_default_model_and_provider_requests_could_name_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_GATEWAY_DEFAULT_MODEL", "meta-llama/Llama-3.1-8B-Instruct")
    monkeypatch.setenv("GENSEARCH_GATEWAY_DEFAULT_PROVIDER", "OpenAI")  # looked up lower-cased
    settings = load_settings(GatewaySettings)
    assert (settings.default_provider, settings.default_model) == (
        "OpenAI",
        "meta-llama/Llama-3.1-8B-Instruct",
    )


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("   ", "a model name must not be only spaces (leave it empty for the default model)"),
        ("rerank\n-v2", "a model name must not contain control characters"),
    ],
)
def test_a_rerank_provider_model_no_request_could_name_stops_retrieval(
    model: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held to the generation providers' model-name check (the same one, model_names.py):
    # it was accepted and sent upstream, and into span names, with every rerank call.
    providers = {"tei": {"base_url": "http://tei:8080/v1", "model": model}}
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_RERANK_PROVIDERS", json.dumps(providers))
    assert _refusal(RetrievalSettings) == (
        f"invalid setting GENSEARCH_RETRIEVAL_RERANK_PROVIDERS.tei.model: {reason}"
    )


def test_a_rerank_provider_model_a_request_could_name_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    providers = {
        "tei": {"base_url": "http://tei:8080/v1"},  # no model: none sent
        "vllm": {"base_url": "http://vllm:8000/v1", "model": "BAAI/bge-reranker-v2-m3"},
    }
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_RERANK_PROVIDERS", json.dumps(providers))
    settings = load_settings(RetrievalSettings)
    assert {name: p.model for name, p in settings.rerank_providers.items()} == {
        "tei": "",
        "vllm": "BAAI/bge-reranker-v2-m3",
    }


# Each service's default model settings, held to that service's MAX_MODEL_CHARS (they were
# held to a fixed 256 whatever it said): (the setting, its variable in the refusal).
_RERANK = {"tei": {"base_url": "http://tei:8080/v1", "model": "MODEL"}}
DEFAULT_MODEL_SETTINGS = [
    (
        GatewaySettings,
        {"GENSEARCH_GATEWAY_DEFAULT_MODEL": "MODEL"},
        "GENSEARCH_GATEWAY_DEFAULT_MODEL",
        "GENSEARCH_GATEWAY_MAX_MODEL_CHARS",
    ),
    (
        RetrievalSettings,
        {"GENSEARCH_RETRIEVAL_RERANK_PROVIDERS": json.dumps(_RERANK)},
        "GENSEARCH_RETRIEVAL_RERANK_PROVIDERS.tei.model",
        "GENSEARCH_RETRIEVAL_MAX_MODEL_CHARS",
    ),
    (
        GenerationSettings,
        {"GENSEARCH_GENERATION_FAKE_MODEL": "MODEL"},
        "GENSEARCH_GENERATION_FAKE_MODEL (provider 'fake')",
        "GENSEARCH_GENERATION_MAX_MODEL_CHARS",
    ),
    (
        GenerationSettings,
        {
            "GENSEARCH_GENERATION_PROVIDERS": json.dumps(
                [
                    {
                        "name": "fake",
                        "base_url": "http://127.0.0.1:1/v1",
                        "default_model": "m",
                        "models": ["m", "MODEL"],
                    }
                ]
            )
        },
        "GENSEARCH_GENERATION_PROVIDERS[0].models (provider 'fake')",
        "GENSEARCH_GENERATION_MAX_MODEL_CHARS",
    ),
]


@dataclass
class DefaultModel:
    """One of DEFAULT_MODEL_SETTINGS, its service's other settings set: ``model`` sets
    the default model and the service's MAX_MODEL_CHARS."""

    cls: type[CommonSettings]
    variable: str  # the variable a refusal names
    setting: str  # the service's MAX_MODEL_CHARS
    model: Callable[[str, int], None]


@pytest.fixture(
    params=DEFAULT_MODEL_SETTINGS,
    ids=["gateway", "retrieval-rerank", "generation-model", "generation-models"],
)
def default_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> DefaultModel:
    cls, variables, variable, setting = request.param
    if cls is GenerationSettings:
        _generation_env(monkeypatch)

    def model(name: str, max_chars: int) -> None:
        monkeypatch.setenv(setting, str(max_chars))
        for env, value in variables.items():
            monkeypatch.setenv(env, value.replace("MODEL", name))

    return DefaultModel(cls, variable, setting, model)


def test_a_default_model_longer_than_max_model_chars_stops_the_service(
    default_model: DefaultModel,
) -> None:
    # 20 characters, under the old fixed 256 but past the service's own bound of 10: it
    # was accepted, and sent with every call naming no model, which the same bound
    # refuses when a caller names it.
    default_model.model("m" * 20, 10)
    assert _refusal(default_model.cls) == (
        f"invalid setting {default_model.variable}: a model name is at most 10 characters "
        f"({default_model.setting}); it has 20"
    )


def test_a_default_model_within_a_raised_max_model_chars_is_accepted(
    default_model: DefaultModel,
) -> None:
    # 300 characters with the bound raised to 512: refused at start ("at most 256") whatever
    # MAX_MODEL_CHARS said, though every request could name it.
    default_model.model("m" * 300, 512)
    settings = load_settings(default_model.cls)
    if isinstance(settings, GatewaySettings):
        assert settings.default_model == "m" * 300
    elif isinstance(settings, RetrievalSettings):
        assert settings.rerank_providers["tei"].model == "m" * 300
    else:
        assert isinstance(settings, GenerationSettings)
        assert "m" * 300 in settings.provider_configs()["fake"].known_models


def test_a_preset_default_model_past_a_lowered_max_model_chars_does_not_stop_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The presets' models are not the operator's settings: a bound of 5 must not stop the
    # start for "gpt-4o-mini" on a provider nobody configured.
    _generation_env(monkeypatch)
    monkeypatch.setenv("GENSEARCH_GENERATION_MAX_MODEL_CHARS", "5")
    settings = load_settings(GenerationSettings)
    assert settings.provider_configs()["openai"].default_model == "gpt-4o-mini"


HOST_FORMS = "a host name or an IP address (0.0.0.0 or :: for every interface)"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not a host!!", f"must be {HOST_FORMS}"),
        ("[::1", f"must be {HOST_FORMS}"),
        ("::1]", f"must be {HOST_FORMS}"),
        ("[127.0.0.1]", f"must be {HOST_FORMS}"),  # brackets hold an IPv6 address only
        ("[]", f"must be {HOST_FORMS}"),
        ("", f"must be {HOST_FORMS}"),
        ("  ", f"must be {HOST_FORMS}"),
        ("local\nhost", f"must be {HOST_FORMS}"),
        ("999.1.1.1", f"must be {HOST_FORMS}"),
        ("1::2::3", f"must be {HOST_FORMS}"),
        ("127.0.0.1:8080", f"must be {HOST_FORMS}, without a port (each service has its own)"),
        ("[::1]:8080", f"must be {HOST_FORMS}, without a port (each service has its own)"),
    ],
)
def test_a_bind_host_no_server_can_bind_names_the_variable(
    value: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC or the metrics server refused these only when binding, with a traceback.
    monkeypatch.setenv("GENSEARCH_HOST", value)
    for settings in (MemorySettings, RetrievalSettings, GenerationSettings, GatewaySettings):
        if settings is GenerationSettings:
            _generation_env(monkeypatch)
        assert _refusal(settings) == f"invalid setting GENSEARCH_HOST: {reason}"


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("localhost", "localhost"),
        ("memory.gensearch.svc.cluster.local", "memory.gensearch.svc.cluster.local"),
        ("::1", "::1"),
        ("::", "::"),
        ("[::1]", "::1"),  # kept bare: join_host_port adds the brackets gRPC needs
        ("[::]", "::"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_every_bind_host_form_is_accepted(
    value: str, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_HOST", value)
    assert load_settings(MemorySettings).host == host


async def test_a_service_started_with_an_invalid_host_exits_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update({"GENSEARCH_DATA_DIR": str(tmp_path), "GENSEARCH_HOST": "[::1"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.memory", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stderr = await _stderr_at_exit(proc)
    assert proc.returncode == 1
    assert stderr.decode().splitlines() == [f"invalid setting GENSEARCH_HOST: must be {HOST_FORMS}"]


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"GENSEARCH_GATEWAY_PORT": "{taken}"},
            "cannot listen on 127.0.0.1:{taken}: address already in use "
            "(GENSEARCH_HOST, GENSEARCH_GATEWAY_PORT)",
        ),
        (
            {"GENSEARCH_GATEWAY_PORT": "0", "GENSEARCH_GATEWAY_METRICS_PORT": "{taken}"},
            "cannot listen on 127.0.0.1:{taken}: address already in use "
            "(GENSEARCH_HOST, GENSEARCH_GATEWAY_METRICS_PORT)",
        ),
        (
            # A well-formed address that is not this machine's (TEST-NET-1).
            {"GENSEARCH_HOST": "192.0.2.1", "GENSEARCH_GATEWAY_PORT": "50050"},
            "cannot listen on 192.0.2.1:50050: cannot assign requested address "
            "(GENSEARCH_HOST, GENSEARCH_GATEWAY_PORT)",
        ),
    ],
)
async def test_an_address_a_service_cannot_listen_on_is_one_line(
    variables: dict[str, str], line: str, tmp_path: Path
) -> None:
    # gRPC raised "Failed to bind to address …" (its reason in a log line of its own),
    # and the metrics server an OSError: a traceback either way.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
        env["GENSEARCH_DATA_DIR"] = str(tmp_path)
        env.update({k: v.replace("{taken}", port) for k, v in variables.items()})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.gateway", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stderr = (await _stderr_at_exit(proc)).decode()
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    # The last line (the gateway may log a warning first, e.g. that quotas are off).
    assert stderr.splitlines()[-1] == line.replace("{taken}", port)


@pytest.mark.parametrize(
    "settings", [GatewaySettings, MemorySettings, RetrievalSettings, GenerationSettings]
)
def test_a_metrics_port_equal_to_the_grpc_port_names_both(
    settings: type[CommonSettings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Both servers bound it, and the second said "address already in use" as though
    # another process held the port.
    namespace = settings.namespace()
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(f"{namespace}PORT", "51170")
    monkeypatch.setenv(f"{namespace}METRICS_PORT", "51170")
    assert _refusal(settings) == (
        f"invalid setting {namespace}METRICS_PORT must differ from {namespace}PORT: the gRPC "
        "server and /metrics cannot listen on one port"
    )
    monkeypatch.setenv(f"{namespace}PORT", "0")  # any free port: never the same
    monkeypatch.setenv(f"{namespace}METRICS_PORT", "0")
    assert load_settings(settings)
