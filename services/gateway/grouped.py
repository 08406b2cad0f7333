"""The grouped prompt: one task over all hits, each hit a numbered, labelled block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.gateway.templates import is_empty, to_text


def selection(only: Sequence[str]) -> dict[str, int]:
    """Each selected name once, with its place in the block (its first in ``only``)."""
    return {name: place for place, name in enumerate(dict.fromkeys(only))}


def hit_block(
    number: int,
    properties: Mapping[str, Any],
    only: Sequence[str] = (),
    *,
    selected: Mapping[str, int] | None = None,
) -> str:
    """``[n]`` then one ``name: value`` line per (selected, non-empty) property; a name
    selected twice is shown once (grouped_properties, context_field_list and a collection's
    context_fields may repeat one: each repeat was paid for in tokens). ``selected``:
    ``selection(only)``, made once by a caller writing many blocks."""
    if not only:
        names = sorted(properties)
    else:
        order = selection(only) if selected is None else selected
        # Whichever of the two is shorter is read: inline objects without a collection may
        # select ~100,000 names, each hit holding a few of them, and reading every name
        # for every hit held the event loop for seconds (hits x names).
        if len(order) <= len(properties):
            names = list(order)
        else:
            names = sorted((name for name in properties if name in order), key=order.__getitem__)
    lines = [f"[{number}]"]
    for name in names:
        value = properties.get(name)
        if not is_empty(value):
            lines.append(f"{name}: {to_text(value)}")
    return "\n".join(lines)


def grouped_prompt(task: str, hits: Sequence[Mapping[str, Any]], only: Sequence[str] = ()) -> str:
    selected = selection(only) if only else None
    blocks = "\n\n".join(
        hit_block(i, props, only, selected=selected) for i, props in enumerate(hits, start=1)
    )
    if not hits:
        blocks = "(no results)"
    return f"{task.strip()}\n\nSearch results:\n\n{blocks}"
