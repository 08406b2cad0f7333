"""The grouped prompt: one task over all hits, each hit a numbered, labelled block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.gateway.templates import is_empty, to_text


def selection(only: Sequence[str]) -> dict[str, int]:
    """Each selected name once, with its place in the block (its first in ``only``); empty
    for no selection (every property shown). Made once for all the blocks of a prompt."""
    return {name: place for place, name in enumerate(dict.fromkeys(only))}


def hit_block(number: int, properties: Mapping[str, Any], selected: Mapping[str, int]) -> str:
    """``[n]`` then one ``name: value`` line per (selected, non-empty) property, in the
    order of ``selected`` (``selection``; empty: every property, sorted by name). A name
    selected twice is shown once (grouped_properties, context_field_list and a collection's
    context_fields may repeat one: each repeat was paid for in tokens)."""
    if not selected:
        names = sorted(properties)
    elif len(selected) <= len(properties):
        names = list(selected)
    else:
        # Whichever of the two is shorter is read: inline objects without a collection may
        # select ~100,000 names, each hit holding a few of them, and reading every name
        # for every hit held the event loop for seconds (hits x names).
        names = sorted((n for n in properties if n in selected), key=selected.__getitem__)
    lines = [f"[{number}]"]
    for name in names:
        value = properties.get(name)
        if not is_empty(value):
            lines.append(f"{name}: {to_text(value)}")
    return "\n".join(lines)


def grouped_prompt(task: str, hits: Sequence[Mapping[str, Any]], only: Sequence[str] = ()) -> str:
    selected = selection(only)
    blocks = "\n\n".join(hit_block(i, props, selected) for i, props in enumerate(hits, start=1))
    if not hits:
        blocks = "(no results)"
    return f"{task.strip()}\n\nSearch results:\n\n{blocks}"
