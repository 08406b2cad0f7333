"""How the answer cache's hidden engine collections are told apart from collections (a
module of its own: the catalog reads it, and the answer cache reads the catalog)."""

from __future__ import annotations

from typing import Any

CACHE_MARKER = "gensearch_answer_cache"


def is_cache_schema(data: dict[str, Any]) -> bool:
    return bool(data.get(CACHE_MARKER))
