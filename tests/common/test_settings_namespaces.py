"""One namespace per service: no variable name means two things, and typos are named."""

from __future__ import annotations

import logging
import re
from itertools import combinations
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import (
    NAMESPACES,
    TOOL_VARIABLES,
    CommonSettings,
    unknown_variables,
    warn_unknown_variables,
)
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.memory.settings import MemorySettings
from services.retrieval.settings import RetrievalSettings

SERVICES: dict[str, type[CommonSettings]] = {
    "gateway": GatewaySettings,
    "memory": MemorySettings,
    "retrieval": RetrievalSettings,
    "generation": GenerationSettings,
}
SHARED = {"GENSEARCH_HOST", "GENSEARCH_DATA_DIR", "GENSEARCH_API_KEYS", "GENSEARCH_API_KEYS_FILE"}
SHARED |= {"GENSEARCH_INTERNAL_TOKEN", "GENSEARCH_LOG_LEVEL"}


def shared_clashes(classes: dict[str, type[CommonSettings]]) -> list[str]:
    """Variables two services both read, unless it is one shared field of the base (same
    declaration, so the same meaning and default everywhere; FieldInfo compares by
    identity, its repr by content)."""
    clashes = []
    for (a, cls_a), (b, cls_b) in combinations(classes.items(), 2):
        names_a, names_b = cls_a.env_names(), cls_b.env_names()
        for name in sorted(names_a.keys() & names_b.keys()):
            field_a, field_b = names_a[name], names_b[name]
            base = CommonSettings.model_fields.get(field_a)
            same = (
                field_a == field_b
                and base is not None
                and repr(cls_a.model_fields[field_a]) == repr(base)
                and repr(cls_b.model_fields[field_b]) == repr(base)
                and name in CommonSettings.env_names()
            )
            if not same:
                clashes.append(f"{name} ({a}.{field_a}, {b}.{field_b})")
    return clashes


def test_no_variable_is_read_by_two_services_unless_shared() -> None:
    assert shared_clashes(SERVICES) == []


def test_the_check_fails_on_an_unprefixed_field_declared_twice() -> None:
    """What GENSEARCH_MAX_PROMPT_CHARS was: 32k in the gateway, 1M in generation."""

    class Gateway(GatewaySettings):
        max_prompt_chars: int = Field(default=32_000, validation_alias="GENSEARCH_MAX_PROMPT_CHARS")

    class Generation(GenerationSettings):
        max_prompt_chars: int = Field(
            default=1_000_000, validation_alias="GENSEARCH_MAX_PROMPT_CHARS"
        )

    assert shared_clashes({"gateway": Gateway, "generation": Generation}) == [
        "GENSEARCH_MAX_PROMPT_CHARS (gateway.max_prompt_chars, generation.max_prompt_chars)"
    ]

    class Memory(MemorySettings):  # a shared field redeclared with another default
        log_level: str = Field(default="DEBUG", validation_alias="GENSEARCH_LOG_LEVEL")

    assert shared_clashes({"gateway": GatewaySettings, "memory": Memory}) == [
        "GENSEARCH_LOG_LEVEL (gateway.log_level, memory.log_level)"
    ]

    class Retrieval(RetrievalSettings):  # a service in another's namespace
        model_config = SettingsConfigDict(env_prefix=NAMESPACES["memory"])

    assert "GENSEARCH_MEMORY_PORT (memory.port, retrieval.port)" in shared_clashes(
        {"memory": MemorySettings, "retrieval": Retrieval}
    )


@pytest.mark.parametrize("service", list(SERVICES))
def test_every_field_is_in_the_namespace_or_shared(service: str) -> None:
    cls = SERVICES[service]
    assert cls.namespace() == NAMESPACES[service]
    outside = {n for n in cls.env_names() if not n.startswith(NAMESPACES[service])}
    assert outside == SHARED


def test_former_names_now_differ_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_GATEWAY_MAX_PROMPT_CHARS", "5000")
    monkeypatch.setenv("GENSEARCH_GENERATION_MAX_PROMPT_CHARS", "7000")
    monkeypatch.setenv("GENSEARCH_GATEWAY_DEFAULT_PROVIDER", "openai")
    monkeypatch.setenv("GENSEARCH_MEMORY_PORT", "6001")
    monkeypatch.setenv("GENSEARCH_HOST", "0.0.0.0")
    gateway, generation = GatewaySettings(), GenerationSettings()
    assert (gateway.max_prompt_chars, generation.max_prompt_chars) == (5000, 7000)
    assert (gateway.default_provider, generation.default_provider) == ("openai", "local")
    assert (MemorySettings().port, RetrievalSettings().port) == (6001, 50052)
    assert gateway.host == generation.host == "0.0.0.0"
    # Fields are also accepted by name, as tests and `gensearch up` pass them.
    assert MemorySettings(port=0, host="::1").port == 0


def test_the_stream_idle_timeout_is_set_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chassis setting (services/common/stream_idle.py): every service reads its own."""
    monkeypatch.setenv("GENSEARCH_GATEWAY_STREAM_IDLE_TIMEOUT", "5")
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_STREAM_IDLE_TIMEOUT", "120")
    assert GatewaySettings().stream_idle_timeout == 5
    assert RetrievalSettings().stream_idle_timeout == 120
    assert MemorySettings().stream_idle_timeout == GenerationSettings().stream_idle_timeout == 30
    for cls in SERVICES.values():
        assert f"{cls.namespace()}STREAM_IDLE_TIMEOUT" in cls.env_names()
    monkeypatch.setenv("GENSEARCH_GATEWAY_STREAM_IDLE_TIMEOUT", "0")
    with pytest.raises(ValueError, match="stream_idle_timeout"):
        GatewaySettings()


def test_unknown_variables_are_typos_in_our_namespace_or_the_shared_one() -> None:
    memory = MemorySettings()
    env = {
        "GENSEARCH_MEMORY_REDIS_URL": "redis://x:6379/0",  # ours
        "GENSEARCH_MEMORY_REDIS_ULR": "redis://x:6379/0",  # typo
        "GENSEARCH_LOG_LEVEL": "INFO",  # shared
        "GENSEARCH_LOGLEVEL": "INFO",  # typo
        "GENSEARCH_REDIS_URL": "redis://x",  # the old name: unknown now
        "GENSEARCH_GATEWAY_ANYTHING": "1",  # another service's business
        "GENSEARCH_ADDRESS": "127.0.0.1:50050",  # the CLI's
        "gensearch_memory_prot": "1",  # names are case-insensitive, as pydantic reads them
        "HOME": "/root",
    }
    assert unknown_variables(memory, environ=env) == [
        "GENSEARCH_LOGLEVEL",
        "GENSEARCH_MEMORY_REDIS_ULR",
        "GENSEARCH_REDIS_URL",
        "gensearch_memory_prot",
    ]
    assert TOOL_VARIABLES.isdisjoint(n for cls in SERVICES.values() for n in cls.env_names())


def test_the_example_clients_variables_are_not_typos() -> None:
    # Before: docs/clients.md has a user export GENSEARCH_URL and GENSEARCH_KEY (TypeScript
    # examples) or GENSEARCH_ADDR (Go), and a service started in that shell then warned
    # about them as "unknown GENSEARCH_ variables ignored (a typo?)".
    env = {
        "GENSEARCH_URL": "http://localhost:50050",
        "GENSEARCH_KEY": "alice-key",
        "GENSEARCH_ADDR": "localhost:50050",
    }
    assert unknown_variables(MemorySettings(), environ=env) == []
    assert set(env) <= TOOL_VARIABLES


# How a program of ours reads a variable: TypeScript, Go, Python.
_READS = re.compile(
    r"process\.env\.(GENSEARCH_\w+)"
    r"|os\.(?:Getenv|LookupEnv)\(\"(GENSEARCH_\w+)\"\)"
    r"|os\.environ(?:\.get\(|\[)\"(GENSEARCH_\w+)\""
)


def test_every_variable_the_examples_and_tests_read_is_known() -> None:
    # Before: features.ts/go (GENSEARCH_PRIMARY_MODEL, GENSEARCH_BACKUP_PROVIDER), keys.ts/go
    # (GENSEARCH_EMBEDDING_URL, GENSEARCH_EMBEDDING_KEY), quota and leave
    # (GENSEARCH_COLLECTION) and the test suite (GENSEARCH_ALLOW_SKIP_NODE,
    # GENSEARCH_FUZZ_EXAMPLES) read variables a service started in the same shell warned
    # about as "unknown GENSEARCH_ variables ignored (a typo?)".
    root = Path(__file__).resolve().parents[2]
    sources = [
        *(root / "clients" / "typescript" / "src").glob("*.ts"),
        *(root / "clients" / "go").rglob("*.go"),
        *(root / "tests").rglob("*.py"),
    ]
    read = {
        name
        for path in sources
        if "/gen/" not in path.as_posix()
        for found in _READS.findall(path.read_text(encoding="utf-8"))
        for name in found
        if name
    }
    # It scans: the examples' names (the deprecated ones still read, for one release).
    assert {"GENSEARCH_ADDRESS", "GENSEARCH_API_KEY", "GENSEARCH_URL", "GENSEARCH_ADDR"} <= read
    assert "GENSEARCH_FUZZ_EXAMPLES" in read
    unknown = unknown_variables(
        *(cls() for cls in SERVICES.values()), environ=dict.fromkeys(read, "1")
    )
    assert unknown == [], f"add to TOOL_VARIABLES (and docs/operations.md): {unknown}"
    operations = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    assert [n for n in sorted(TOOL_VARIABLES) if f"`{n}`" not in operations] == []


def test_several_services_in_one_process_know_each_other() -> None:
    env = {"GENSEARCH_GATEWAY_MAX_HITS": "5", "GENSEARCH_GATEWAY_MAX_HTIS": "5"}
    assert unknown_variables(MemorySettings(), environ=env) == []
    both = (MemorySettings(), GatewaySettings())
    assert unknown_variables(*both, environ=env) == ["GENSEARCH_GATEWAY_MAX_HTIS"]


def test_generation_knows_its_providers_variables() -> None:
    settings = GenerationSettings(providers=[{"name": "my-llm", "base_url": "http://h/v1"}])
    env = {
        "GENSEARCH_GENERATION_OPENAI_MAX_CONCURRENCY": "8",
        "GENSEARCH_GENERATION_MY_LLM_MODEL": "m",
        "GENSEARCH_GENERATION_OPENIA_BASE_URL": "http://typo/v1",
        "GENSEARCH_GENERATION_LOCAL_BASE_URLS": "http://typo/v1",
    }
    assert unknown_variables(settings, environ=env) == [
        "GENSEARCH_GENERATION_LOCAL_BASE_URLS",
        "GENSEARCH_GENERATION_OPENIA_BASE_URL",
    ]


def test_the_warning_names_variables_never_values(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GENSEARCH_MEMORY_PAGE_TOKEN_SECRETT", "do-not-log-me")
    with caplog.at_level(logging.WARNING, logger="gensearch.settings"):
        assert "GENSEARCH_MEMORY_PAGE_TOKEN_SECRETT" in warn_unknown_variables(MemorySettings())
    assert "GENSEARCH_MEMORY_PAGE_TOKEN_SECRETT" in caplog.text
    assert "do-not-log-me" not in caplog.text


def test_the_warning_suggests_the_variable_meant(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It named the typo alone ("GENSEARCH_GATEWAY_PROT"), and the user went looking.
    monkeypatch.setenv("GENSEARCH_GATEWAY_PROT", "50060")
    monkeypatch.setenv("GENSEARCH_GENERATION_OPENIA_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("GENSEARCH_GATEWAY_ZZZZZZZZ", "1")
    with caplog.at_level(logging.WARNING, logger="gensearch.settings"):
        warn_unknown_variables(GatewaySettings(), GenerationSettings())
    assert "GENSEARCH_GATEWAY_PROT (did you mean GENSEARCH_GATEWAY_PORT?)" in caplog.text
    assert (
        "GENSEARCH_GENERATION_OPENIA_BASE_URL (did you mean "
        "GENSEARCH_GENERATION_OPENAI_BASE_URL?)" in caplog.text
    )
    assert "GENSEARCH_GATEWAY_ZZZZZZZZ" in caplog.text
    assert "GENSEARCH_GATEWAY_ZZZZZZZZ (did you mean" not in caplog.text
