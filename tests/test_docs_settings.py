"""Each service doc's settings table names variables the service really reads.

A row is either the whole variable (``GENSEARCH_MEMORY_PORT``) or its name inside the
service's namespace (``PORT`` under ``GENSEARCH_GENERATION_``); either way it must be one of
the settings class's variables, so a row cannot read as ``GENSEARCH_GENERATION_GENERATION_PORT``.
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

DOCS = Path(__file__).resolve().parents[1] / "docs"
SETTINGS: dict[str, type[CommonSettings]] = {
    "gateway": GatewaySettings,
    "memory": MemorySettings,
    "retrieval": RetrievalSettings,
    "generation": GenerationSettings,
}
# The table: its header row, then its rows up to the first line that is not one.
TABLE = re.compile(
    r"^\| (?:variable|setting) \| default \| meaning \|\n\|[-|]+\|\n((?:\|.*\n)+)", re.M
)
ROW_NAME = re.compile(r"^\| `([A-Z0-9_]+)` \|", re.M)


def _rows(service: str) -> list[str]:
    (table,) = TABLE.findall((DOCS / f"{service}.md").read_text(encoding="utf-8"))
    return ROW_NAME.findall(table)


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_row_is_a_variable_the_service_reads(service: str) -> None:
    settings = SETTINGS[service]
    rows = _rows(service)
    assert len(rows) >= 5
    namespace = settings.namespace()
    read = settings.env_names()
    unknown = [
        row
        for row in rows
        if (row if row.startswith("GENSEARCH_") else namespace + row) not in read
    ]
    assert unknown == [], f"docs/{service}.md names variables {namespace}* does not read"
