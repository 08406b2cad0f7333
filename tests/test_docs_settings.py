"""Each service doc's settings table names variables the service really reads.

A row is either the whole variable (``GENSEARCH_MEMORY_PORT``) or its name inside the
service's namespace (``PORT`` under ``GENSEARCH_GENERATION_``); either way it must be one of
the settings class's variables, so a row cannot read as ``GENSEARCH_GENERATION_GENERATION_PORT``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

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


# A default cell as the tables write it: the value, then perhaps a unit or a note.
UNITS = {"s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
EMPTY = ("empty", "*(empty)*", "unset")
ROW_DEFAULT = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", re.M)


def _documented(cell: str) -> object:
    """What a default cell says, as a value to compare with the field's default: a number,
    a bool, a string, JSON, or None for empty/unset."""
    cell = cell.strip()
    if cell.startswith(EMPTY):
        return None
    if cell.startswith("`"):
        text = cell[1 : cell.index("`", 1)]
        try:
            return json.loads(text)
        except ValueError:
            return text
    value, _, rest = cell.partition(" ")
    try:
        number = float(value.replace(",", ""))
    except ValueError:
        return value  # a word: true, false, a model's name
    return number * UNITS.get(rest.split(" ", 1)[0], 1)


def _default(settings: type[CommonSettings], field: str) -> object:
    info = settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, Path):
        value = str(value)
    if value == "" or value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_rows_default_is_the_codes(service: str) -> None:
    """The default column says what the service takes when the variable is unset (a table
    that said 30 where the code said 10 sent operators tuning the wrong way)."""
    settings = SETTINGS[service]
    (table,) = TABLE.findall((DOCS / f"{service}.md").read_text(encoding="utf-8"))
    namespace = settings.namespace()
    read = settings.env_names()
    wrong = []
    for name, cell in ROW_DEFAULT.findall(table):
        field = read[name if name.startswith("GENSEARCH_") else namespace + name]
        documented, actual = _documented(cell), _default(settings, field)
        if isinstance(documented, str) and isinstance(actual, bool):
            documented = {"true": True, "false": False}.get(documented, documented)
        if isinstance(documented, str) and isinstance(actual, float):
            documented = float(documented)
        if documented != actual:
            wrong.append(f"{name}: docs say {cell.strip()!r}, the code {actual!r}")
    assert wrong == [], f"docs/{service}.md"
