"""docs/generation.md's list of a provider's per-field variables is the list the code reads.

``GENSEARCH_GENERATION_<NAME>_*`` are not fields of the settings class (one set per
provider, resolved in services/generation/settings.py), so the settings tables' tests do
not see them: the list named ``_MAX_IN_FLIGHT_PER_TENANT`` nowhere, though the service read
it.
"""

from __future__ import annotations

import re
from pathlib import Path

from services.generation.settings import _ENV_FIELDS

GENERATION = Path(__file__).resolve().parents[1] / "docs" / "generation.md"
# The numbered item "Per-field variables for any provider" up to its "Example:".
LIST = re.compile(r"\*\*Per-field variables\*\* for any provider(.*?)Example:", re.S)
SUFFIX = re.compile(r"`(?:GENSEARCH_GENERATION_<NAME>)?_([A-Z][A-Z0-9_]*)`")


def test_the_per_field_list_names_every_variable_read_and_no_other() -> None:
    (paragraph,) = LIST.findall(GENERATION.read_text(encoding="utf-8"))
    listed = set(SUFFIX.findall(paragraph))
    read = set(_ENV_FIELDS)
    assert sorted(read - listed) == [], "read, not in docs/generation.md's list"
    assert sorted(listed - read) == [], "in docs/generation.md's list, not read"
