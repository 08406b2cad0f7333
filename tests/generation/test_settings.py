"""Provider presets and how the environment overrides and extends them."""

from __future__ import annotations

import pytest

from services.generation.settings import (
    LOCAL_CONTEXT,
    LOCAL_MAX_TOKENS,
    LOCAL_MODEL,
    GenerationSettings,
    ProviderError,
    resolve_providers,
)


def test_presets() -> None:
    providers = resolve_providers([], environ={})
    assert set(providers) == {"openai", "anyscale", "vllm", "ollama", "local"}
    anyscale = providers["anyscale"]
    assert anyscale.base_url == "https://api.endpoints.anyscale.com/v1"
    assert anyscale.default_model == "meta-llama/Llama-2-70b-chat-hf"
    assert anyscale.temperature == 0.0
    assert anyscale.api_key_env[0] == "ANYSCALE_APIKEY"
    assert anyscale.key_header == "x-anyscale-api-key"
    openai = providers["openai"]
    assert openai.base_url == "https://api.openai.com/v1"
    assert {"OPENAI_APIKEY", "OPENAI_API_KEY"} <= set(openai.api_key_env)
    assert providers["vllm"].base_url == "http://127.0.0.1:8000/v1"
    assert providers["ollama"].base_url == "http://127.0.0.1:11434/v1"
    local = providers["local"]
    assert local.default_model == LOCAL_MODEL
    assert local.models == [LOCAL_MODEL]
    assert not local.requires_key


def test_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEFAULT_PROVIDER", "PROVIDERS", "PORT", "METRICS_PORT"):
        monkeypatch.delenv(f"GENSEARCH_GENERATION_{name}", raising=False)
    settings = GenerationSettings()
    assert settings.port == 50053
    assert settings.metrics_port == 9093
    assert settings.default_provider == "local"
    assert "local" in settings.provider_configs(environ={})


def test_providers_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GENSEARCH_GENERATION_PROVIDERS",
        '[{"name": "mistral", "base_url": "https://api.mistral.ai/v1/", '
        '"default_model": "mistral-small", "api_key_env": "MISTRAL_API_KEY", '
        '"requires_key": true, "max_concurrency": 3},'
        ' {"name": "anyscale", "default_model": "mistralai/Mixtral-8x7B-Instruct-v0.1"}]',
    )
    monkeypatch.setenv("GENSEARCH_GENERATION_DEFAULT_PROVIDER", "mistral")
    settings = GenerationSettings()
    providers = settings.provider_configs(environ={})
    mistral = providers["mistral"]
    assert mistral.base_url == "https://api.mistral.ai/v1"  # trailing slash dropped
    assert mistral.api_key_env == ["MISTRAL_API_KEY"]
    assert mistral.max_concurrency == 3
    assert mistral.key_header == "x-mistral-api-key"
    # A preset entry changes only what it names.
    anyscale = providers["anyscale"]
    assert anyscale.default_model == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert anyscale.base_url == "https://api.endpoints.anyscale.com/v1"
    assert anyscale.temperature == 0.0


def test_per_field_variables() -> None:
    env = {
        "GENSEARCH_GENERATION_LOCAL_BASE_URL": "http://10.0.0.5:9000/v1",
        "GENSEARCH_GENERATION_LOCAL_MODEL": "qwen2.5-0.5b",
        "GENSEARCH_GENERATION_VLLM_MAX_CONCURRENCY": "128",
        "GENSEARCH_GENERATION_OPENAI_TEMPERATURE": "0.2",
        "GENSEARCH_GENERATION_OLLAMA_MODELS": "llama3.2,qwen2.5",
        "GENSEARCH_GENERATION_OPENAI_API_KEY_ENV": "MY_OPENAI_KEY",
    }
    providers = resolve_providers([], environ=env)
    assert providers["local"].base_url == "http://10.0.0.5:9000/v1"
    assert providers["local"].default_model == "qwen2.5-0.5b"
    assert providers["local"].models == ["qwen2.5-0.5b"]  # the fixed list follows the model
    assert providers["vllm"].max_concurrency == 128
    assert providers["openai"].temperature == 0.2
    assert providers["ollama"].models == ["llama3.2", "qwen2.5"]
    assert providers["openai"].api_key_env == ["MY_OPENAI_KEY"]


def test_unknown_default_provider_is_refused() -> None:
    settings = GenerationSettings(default_provider="nope", providers=[])
    with pytest.raises(ValueError, match="GENSEARCH_GENERATION_DEFAULT_PROVIDER: not a configured"):
        settings.provider_configs(environ={})


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"name": "new"}, "base_url"),
        ({"name": "new", "base_url": "ftp://x", "default_model": "m"}, "base_url"),
        # A base URL the SDK appends its path to, after the query: every call failed 404,
        # with the query (a key, often) logged by the HTTP client. Accepted before.
        ({"name": "new", "base_url": "https://x/v1?api-version=1", "default_model": "m"}, "query"),
        ({"name": "local", "base_url": "http://127.0.0.1:8088/v1?"}, "query"),
        ({"name": "new", "base_url": "https://x/v1#frag", "default_model": "m"}, "fragment"),
        ({"name": "Bad Name", "base_url": "http://x", "default_model": "m"}, "name"),
        ({"name": "local", "max_concurrency": 0}, "max_concurrency"),
        ({"name": "local", "temperature": 3}, "temperature"),
        ({"name": "local", "api_key": "sk-should-not-be-here"}, "api_key"),
    ],
)
def test_misconfigured_providers(entry: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        resolve_providers([entry], environ={})
    assert "sk-should-not-be-here" not in str(caught.value)


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        ("http://x:99999/v1", "base_url must give its port as a number from 1 to 65535"),
        ("http://x:/v1", "base_url must give its port as a number from 1 to 65535"),
        ("http:///v1", "base_url must name a host"),
        ("https://x/v1?k=v", "base_url must not have a query or fragment"),
    ],
)
def test_a_bad_base_url_is_said_in_a_sentence(base_url: str, said: str) -> None:
    # The problem is joined after the field's name: "base_url its port must be a number
    # from 1 to 65535" before.
    with pytest.raises(ProviderError) as caught:
        resolve_providers([{"name": "new", "base_url": base_url, "default_model": "m"}], environ={})
    assert str(caught.value) == (
        f"GENSEARCH_GENERATION_PROVIDERS[0].base_url (provider 'new'): {said}"
    )


def test_presets_carry_their_known_models() -> None:
    providers = resolve_providers([], environ={})
    anyscale = providers["anyscale"]
    assert anyscale.known_models == [
        "meta-llama/Llama-2-70b-chat-hf",
        "meta-llama/Llama-2-13b-chat-hf",
        "meta-llama/Llama-2-7b-chat-hf",
        "codellama/CodeLlama-34b-Instruct-hf",
        "HuggingFaceH4/zephyr-7b-beta",
        "mistralai/Mistral-7B-Instruct-v0.1",
    ]
    assert anyscale.check_models
    # OpenAI's list is shown, not enforced: it adds models faster than a list is updated.
    assert "gpt-4o" in providers["openai"].models and not providers["openai"].check_models
    off = resolve_providers([], environ={"GENSEARCH_GENERATION_ANYSCALE_CHECK_MODELS": "false"})
    assert not off["anyscale"].check_models


def test_the_base_url_allowlist_is_checked_at_load() -> None:
    assert GenerationSettings(allowed_hosts="*.example.com, http://10.0.0.0/8").allowed_hosts
    with pytest.raises(ValueError, match="allowlist entry"):
        GenerationSettings(allowed_hosts="https://example.com/path")


def test_no_fixed_caps_by_default_and_limits_from_the_environment() -> None:
    providers = resolve_providers([], environ={})
    for name in ("openai", "anyscale", "vllm"):
        config = providers[name]
        assert config.max_concurrency is None and config.max_in_flight is None, name
        assert config.requests_per_minute is None and config.tokens_per_minute is None
    env = {
        "GENSEARCH_GENERATION_OPENAI_REQUESTS_PER_MINUTE": "3500",
        "GENSEARCH_GENERATION_OPENAI_TOKENS_PER_MINUTE": "90000",
        "GENSEARCH_GENERATION_OPENAI_MAX_IN_FLIGHT": "50",
        "GENSEARCH_GENERATION_OPENAI_RATE_WINDOW": "10",
        "GENSEARCH_GENERATION_OPENAI_RATE_BURST": "0.2",
        "GENSEARCH_GENERATION_OPENAI_ADAPTIVE": "false",
    }
    openai = resolve_providers([], environ=env)["openai"]
    assert (openai.requests_per_minute, openai.tokens_per_minute) == (3500, 90000)
    assert (openai.max_in_flight, openai.rate_window, openai.rate_burst) == (50, 10, 0.2)
    assert openai.adaptive is False
    with pytest.raises(ValueError, match="GENSEARCH_GENERATION_OPENAI_RATE_BURST"):
        resolve_providers([], environ={"GENSEARCH_GENERATION_OPENAI_RATE_BURST": "0.9"})


def test_tokens_are_counted_as_reserved_unless_the_provider_counts_usage() -> None:
    # OpenAI counts a call's prompt + max_tokens when it arrives and gives nothing back.
    assert all(c.tokens_counted == "reserved" for c in resolve_providers([], environ={}).values())
    env = {"GENSEARCH_GENERATION_VLLM_TOKENS_COUNTED": "used"}
    assert resolve_providers([], environ=env)["vllm"].tokens_counted == "used"
    with pytest.raises(ValueError, match="GENSEARCH_GENERATION_VLLM_TOKENS_COUNTED"):
        resolve_providers([], environ={"GENSEARCH_GENERATION_VLLM_TOKENS_COUNTED": "billed"})


def test_a_redis_cluster_needs_a_url() -> None:
    with pytest.raises(ValueError, match="redis_cluster needs redis_url"):
        GenerationSettings(redis_cluster=True)


def test_the_local_preset_bounds_an_answer_the_request_does_not() -> None:
    # SmolLM2-135M often repeats itself until its 2048-token context is full: without a
    # bound, a per-hit call with no max_tokens ran past the 60 s first-byte timeout and the
    # generation budget on 2 cores (docs/generation.md#providers-and-settings).
    providers = resolve_providers([], environ={})
    assert providers["local"].max_tokens == LOCAL_MAX_TOKENS < LOCAL_CONTEXT
    assert all(providers[name].max_tokens is None for name in ("openai", "anyscale", "vllm"))
    env = {"GENSEARCH_GENERATION_LOCAL_MAX_TOKENS": "64"}
    assert resolve_providers([], environ=env)["local"].max_tokens == 64
    with pytest.raises(ValueError, match="GENSEARCH_GENERATION_LOCAL_MAX_TOKENS"):
        resolve_providers([], environ={"GENSEARCH_GENERATION_LOCAL_MAX_TOKENS": "0"})


def test_a_providers_max_tokens_past_its_context_window_stops_the_service() -> None:
    # A request's max_tokens past the window is refused (CONTEXT_WINDOW_EXCEEDED), but a
    # provider's default was not checked: GENSEARCH_GENERATION_LOCAL_MAX_TOKENS=5000 on the
    # 2048-token local model started, and every call that set none asked for 5000 tokens
    # (an upstream that checks refused each one, blaming a max_tokens the caller never sent).
    env = {"GENSEARCH_GENERATION_LOCAL_MAX_TOKENS": str(LOCAL_CONTEXT + 1)}
    with pytest.raises(ValueError) as err:
        resolve_providers([], environ=env)
    assert str(err.value).startswith("GENSEARCH_GENERATION_LOCAL_MAX_TOKENS (provider 'local')")
    assert str(LOCAL_CONTEXT) in str(err.value)
    # Blamed on the variable that set the window when that one moved.
    env = {"GENSEARCH_GENERATION_LOCAL_CONTEXT_WINDOW": str(LOCAL_MAX_TOKENS - 1)}
    with pytest.raises(ValueError, match="GENSEARCH_GENERATION_LOCAL_CONTEXT_WINDOW"):
        resolve_providers([], environ=env)
    # In a PROVIDERS entry: the entry's field.
    entry = {"name": "mine", "base_url": "http://llm:8000/v1", "default_model": "m",
             "context_window": 100, "max_tokens": 200}  # fmt: skip
    with pytest.raises(ValueError, match=r"GENSEARCH_GENERATION_PROVIDERS\[0\]\.max_tokens"):
        resolve_providers([entry], environ={})
    # Equal to the window, or either unset, is fine.
    env = {"GENSEARCH_GENERATION_LOCAL_MAX_TOKENS": str(LOCAL_CONTEXT)}
    assert resolve_providers([], environ=env)["local"].max_tokens == LOCAL_CONTEXT
    assert resolve_providers([{**entry, "max_tokens": 100}], environ={})["mine"].max_tokens == 100


def test_a_providers_max_tokens_past_the_services_limit_stops_the_service() -> None:
    # GENSEARCH_GENERATION_MAX_TOKENS_LIMIT refuses a request's max_tokens above it, but a
    # provider's default above it went out with every call that set none.
    settings = GenerationSettings(max_tokens_limit=100)
    env = {"GENSEARCH_GENERATION_LOCAL_MAX_TOKENS": "200"}
    with pytest.raises(ValueError) as err:
        settings.provider_configs(environ=env)
    assert str(err.value).startswith("GENSEARCH_GENERATION_LOCAL_MAX_TOKENS (provider 'local')")
    assert "GENSEARCH_GENERATION_MAX_TOKENS_LIMIT (100)" in str(err.value)
    # The local preset's own 256 against a lower limit: the preset is what to lower.
    with pytest.raises(ValueError, match="GENSEARCH_GENERATION_LOCAL_MAX_TOKENS"):
        settings.provider_configs(environ={})
    assert settings.provider_configs(environ={"GENSEARCH_GENERATION_LOCAL_MAX_TOKENS": "100"})
