"""'Did you mean …?' for a name the caller got wrong (a property named in a filter or a
template): the closest known name, when one is close enough.

The known names are always the caller's own (the schema of a collection it may read): a
suggestion must never show another tenant's names. The caller passes them in; nothing here
looks anything up.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable

# difflib's default: a third of the letters may differ ("yeer" -> "year", "titel" ->
# "title"), while "foo" suggests nothing for "year".
_CUTOFF = 0.6
# Longer than any property name can be (64 characters): nothing is close enough to it,
# and difflib's work grows with the length of what it compares.
_MAX_CHARS = 128
# Known names compared at most; among more, nothing is suggested. A collection holds 256
# by default (retrieval's MAX_PROPERTIES), but a caller's inline objects
# (GenerateOnObjects without a collection) may name ~190,000 within the request's 4 MiB,
# each of them a caller could make close enough for difflib's full comparison: 5.8 s of
# the gateway's event loop for one refusal. A constant: it refuses nothing.
MAX_KNOWN = 1000


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, or None when none is close (or when there are
    more than ``MAX_KNOWN`` known names)."""
    if not name or len(name) > _MAX_CHARS:
        return None
    head = list(itertools.islice(known, MAX_KNOWN + 1))
    if len(head) > MAX_KNOWN:
        return None
    candidates = [k for k in head if k != name]
    # The same name but for case first: difflib compares letters as they are, so a short
    # name in the other case ("nu3" for "NU3", "id" for "ID") shares too few to be close.
    folded = name.casefold()
    for known_name in candidates:
        if known_name.casefold() == folded:
            return known_name
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=_CUTOFF)
    return found[0] if found else None


def did_you_mean(name: str, known: Iterable[str]) -> tuple[str, dict[str, str]]:
    """The text to end a refusal's message with (``"; did you mean 'year'?"``) and the
    ErrorInfo metadata saying it (``{"suggestion": "year"}``); both empty without one."""
    match = closest(name, known)
    if match is None:
        return "", {}
    return f"; did you mean {match!r}?", {"suggestion": match}
