"""A list of a request in which each entry may appear once (ids, property names)."""

from __future__ import annotations

from collections.abc import Iterable

from services.common.errors import InvalidArgument, quote


def refuse_repeats(
    values: Iterable[str], field: str, *, what: str = "name", reason: str | None = None
) -> None:
    """INVALID_ARGUMENT naming the first repeated entry (``field[i]``) and, in metadata
    ``first``, the entry it repeats. One pass, before any per-entry work: a list of one
    name repeated (return_properties of a 3 MB request) cost ~2.5 s of CPU downstream."""
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        seen = first.setdefault(value, index)
        if seen != index:
            raise InvalidArgument(
                f"{field}[{index}] repeats {field}[{seen}] ({quote(value)}): give each {what} once",
                field=f"{field}[{index}]",
                reason=reason,
                metadata={"first": f"{field}[{seen}]"},
            )
