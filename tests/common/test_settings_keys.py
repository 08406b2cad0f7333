"""The keys of JSON object settings, checked at start as GENSEARCH_*_REQUEST_LIMITS' are:
a key that names something the code knows (a field of a provider entry) is refused when
it names nothing, with the closest known key; a key that is open-ended (a model name, a
provider of the generation service) is held to its shape. The one-line refusals at the
entry point are cases of test_settings_load.py's
test_a_service_with_a_problem_found_after_loading_exits_with_one_line."""

from __future__ import annotations

import os

import pytest

from services.common.settings import load_settings
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.retrieval.settings import RetrievalSettings

PROVIDER = '"name": "fake", "base_url": "http://127.0.0.1:1/v1", "default_model": "m"'


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
