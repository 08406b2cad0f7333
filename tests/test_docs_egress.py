"""docs/operations.md's "Where outbound calls may go" names every allowlist a service has.

An operator sets egress from that section; QA: it said the only URL callers name is a
collection's vectorizer, and named GENSEARCH_RETRIEVAL_ALLOWED_HOSTS alone, while rerank
URLs (retrieval) and a request's LLM base_url (generation,
GENSEARCH_GENERATION_ALLOWED_HOSTS) are caller-named too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.settings import CommonSettings
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.memory.settings import MemorySettings
from services.retrieval.settings import RetrievalSettings

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
SETTINGS: dict[str, type[CommonSettings]] = {
    "gateway": GatewaySettings,
    "memory": MemorySettings,
    "retrieval": RetrievalSettings,
    "generation": GenerationSettings,
}


def _section() -> str:
    text = OPERATIONS.read_text(encoding="utf-8")
    found = re.search(r"^## Where outbound calls may go\n(.*?)^## ", text, re.M | re.S)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_allowlist_is_in_the_egress_section(service: str) -> None:
    allowlists = [
        f"GENSEARCH_{service.upper()}_{name.upper()}"
        for name in SETTINGS[service].model_fields
        if name.endswith("allowed_hosts")
    ]
    section = _section()
    assert [name for name in allowlists if f"`{name}`" not in section] == []
