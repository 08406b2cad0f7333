"""The keys of JSON object settings, checked at start as GENSEARCH_*_REQUEST_LIMITS' are
(test_settings_load.py): a key that names something the code knows (a field of a provider
entry) is refused when it names nothing, with the closest known key; a key that is
open-ended (a model name, a provider of the generation service) is held to its shape.
One line naming the variable, exit 1, never a value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.settings import load_settings
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.retrieval.settings import RetrievalSettings
from tests.common.test_settings_load import lines_at_exit

PROVIDER = '"name": "fake", "base_url": "http://127.0.0.1:1/v1", "default_model": "m"'


@pytest.mark.parametrize(
    ("service", "variables", "line"),
    [
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
                "GENSEARCH_GENERATION_PROVIDERS": f'[{{{PROVIDER}, "max_concurency": 4}}]',
                "GENSEARCH_GENERATION_DEFAULT_PROVIDER": "fake",
            },
            "GENSEARCH_GENERATION_PROVIDERS[0].max_concurency (provider 'fake'): not a field "
            "of a provider (did you mean max_concurrency?)",
        ),
    ],
)
async def test_a_key_naming_nothing_stops_the_service_with_one_line(
    service: str, variables: dict[str, str], line: str, tmp_path: Path
) -> None:
    assert await lines_at_exit(service, variables, tmp_path) == [f"invalid setting {line}"]


def test_open_ended_keys_of_the_right_shape_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any model an endpoint serves, any provider generation has: only the shape is held.
    monkeypatch.setenv(
        "GENSEARCH_GATEWAY_CONTEXT_WINDOWS", '{"Llama-3.1-8B": 131072, "my org/model v2": 8192}'
    )
    # Provider names are read lower-cased, as the tokenizer and generation read them.
    monkeypatch.setenv(
        "GENSEARCH_GATEWAY_TOKENIZE_URLS",
        '{"Local": "http://127.0.0.1:8088", "my-llama_2": "http://llama:8080"}',
    )
    settings = load_settings(GatewaySettings)
    assert settings.context_windows["my org/model v2"] == 8192
    assert set(settings.tokenize_urls) == {"Local", "my-llama_2"}


def test_provider_entries_of_known_fields_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GENSEARCH_RETRIEVAL_RERANK_PROVIDERS",
        '{"tei": {"base_url": "http://tei:8080/v1", "api_key_env": "TEI_KEY", "model": "m"}}',
    )
    assert load_settings(RetrievalSettings).rerank_providers["tei"].api_key_env == "TEI_KEY"
    for name in [n for n in os.environ if n.startswith("GENSEARCH_GENERATION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GENSEARCH_GENERATION_PROVIDERS", f'[{{{PROVIDER}, "max_concurrency": 4}}]')
    monkeypatch.setenv("GENSEARCH_GENERATION_DEFAULT_PROVIDER", "fake")
    settings = load_settings(GenerationSettings)
    assert settings.provider_configs()["fake"].max_concurrency == 4


def test_the_typo_of_a_required_field_is_said_beside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every problem of the entry is said, the typo with the field it may mean.
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_RERANK_PROVIDERS", '{"tei": {"base_ur": "http://x"}}')
    with pytest.raises(SystemExit) as err:
        load_settings(RetrievalSettings)
    assert str(err.value.code).splitlines() == [
        "invalid setting GENSEARCH_RETRIEVAL_RERANK_PROVIDERS.tei.base_url: Field required",
        "invalid setting GENSEARCH_RETRIEVAL_RERANK_PROVIDERS.tei.base_ur: not a field of a "
        "rerank provider (did you mean base_url?)",
    ]
