"""The grouped prompt: one task over all hits, each hit a numbered, labelled block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.gateway.templates import is_empty, to_text


def hit_block(number: int, properties: Mapping[str, Any], only: Sequence[str] = ()) -> str:
    """``[n]`` then one ``name: value`` line per (selected, non-empty) property; a name
    selected twice is shown once (grouped_properties, context_field_list and a collection's
    context_fields may repeat one: each repeat was paid for in tokens)."""
    names = list(dict.fromkeys(only)) if only else sorted(properties)
    lines = [f"[{number}]"]
    for name in names:
        value = properties.get(name)
        if not is_empty(value):
            lines.append(f"{name}: {to_text(value)}")
    return "\n".join(lines)


def grouped_prompt(task: str, hits: Sequence[Mapping[str, Any]], only: Sequence[str] = ()) -> str:
    blocks = "\n\n".join(hit_block(i, props, only) for i, props in enumerate(hits, start=1))
    if not hits:
        blocks = "(no results)"
    return f"{task.strip()}\n\nSearch results:\n\n{blocks}"
