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


# docs/operations.md's tables of settings several services share (Limits, Quotas) and the
# README's table: "| setting | default | ... |" or "| variable | default | what |". A row
# may name several variables ("`KEEPALIVE_TIME` / `KEEPALIVE_TIMEOUT`", "`A` / `_B`", a
# suffix of the first one's namespace) with as many defaults ("60 / 20 s", the unit said
# once), or one `<SERVICE>` variable with a default per service in the README's order
# (gateway / memory / retrieval / generation).
SHARED_TABLE = re.compile(
    r"^\| (?:setting|variable) \| default \| (?:what it stops|counts|what) \|\n\|[-|]+\|\n"
    r"((?:\|.*\n)+)",
    re.M,
)
SERVICE_ORDER = ("gateway", "memory", "retrieval", "generation")
BARE_NUMBER = re.compile(r"[0-9][0-9.,]*")
NAMESPACE_OF = re.compile(r"(GENSEARCH_(?:<SERVICE>|GATEWAY|MEMORY|RETRIEVAL|GENERATION))_")


def _shared_rows(text: str) -> list[tuple[str, str, str]]:
    """(service, variable, default cell) for every row naming a variable a service reads,
    where the cell says one value (free prose, such as a default per service spelt out in
    words, is left to the service's own table)."""
    found = []
    for table in SHARED_TABLE.findall(text):
        for line in table.splitlines():
            name_cell, default_cell = (c.strip() for c in line.strip("|").split(" | ")[:2])
            names = re.findall(r"`([A-Z0-9_<>]+)`", name_cell.split(",")[0])
            defaults = [d.strip() for d in default_cell.split(" / ")]
            unit = defaults[-1].partition(" ")[2].split(" ")[0]
            namespace = NAMESPACE_OF.match(names[0]) if names else None
            for i, name in enumerate(names):
                if name.startswith("_") and namespace:  # a suffix: the first one's namespace
                    name = namespace.group(1) + name
                for service in SERVICE_ORDER:
                    if len(names) == len(defaults):
                        cell = defaults[i]
                    elif len(names) == 1 and len(defaults) == len(SERVICE_ORDER):
                        cell = defaults[SERVICE_ORDER.index(service)]
                    else:
                        cell = default_cell
                    if unit in UNITS and BARE_NUMBER.fullmatch(cell):
                        cell = f"{cell} {unit}"
                    found.append((service, name.replace("<SERVICE>", service.upper()), cell))
    return found


def _wrong_shared_defaults(text: str) -> list[str]:
    wrong = []
    for service, name, cell in _shared_rows(text):
        settings = SETTINGS[service]
        # A bare name in operations.md's Limits table is in every service's namespace.
        variable = name if name.startswith("GENSEARCH_") else settings.namespace() + name
        field = settings.env_names().get(variable)
        if field is None:
            continue  # another service's variable
        documented, actual = _documented(cell), _default(settings, field)
        if isinstance(actual, dict) or (isinstance(documented, str) and " " in cell.strip("`")):
            continue  # a JSON default or prose: the service's own table says it exactly
        if isinstance(documented, str) and isinstance(actual, bool):
            documented = {"true": True, "false": False}.get(documented, documented)
        if isinstance(documented, str) and isinstance(actual, float):
            documented = float(documented) if BARE_NUMBER.fullmatch(documented) else documented
        if documented == "none":
            documented = None
        if settings.model_fields[field].annotation is Path:  # "./data" is "data"
            documented, actual = Path(str(documented)), Path(str(actual))
        if documented != actual:
            wrong.append(f"{variable}: docs say {cell!r}, the code {actual!r}")
    return wrong


@pytest.mark.parametrize("doc", ["docs/operations.md", "README.md"])
def test_the_shared_tables_defaults_are_the_codes(doc: str) -> None:
    text = (DOCS.parent / doc).read_text(encoding="utf-8")
    assert len(_shared_rows(text)) >= 40
    assert _wrong_shared_defaults(text) == [], doc


def test_the_shared_tables_check_finds_a_wrong_default() -> None:
    # Not vacuous: a value, a value of a pair and a per-service value each found wrong.
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    for right, wrong in (
        ("| `STREAM_IDLE_TIMEOUT` | 30 s |", "| `STREAM_IDLE_TIMEOUT` | 45 s |"),
        ("| 60 / 20 s |", "| 60 / 25 s |"),
        ("| `GENSEARCH_GATEWAY_QUOTA_LEASE` | 30 s |", "| `GENSEARCH_GATEWAY_QUOTA_LEASE` | 3 s |"),
    ):
        assert right in text
        assert _wrong_shared_defaults(text.replace(right, wrong)) != [], wrong
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    right = "| 9090 / 9091 / 9092 / 9093 |"
    assert right in readme
    assert _wrong_shared_defaults(readme.replace(right, "| 9090 / 9091 / 9099 / 9093 |"))
