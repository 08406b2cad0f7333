"""Control characters in names and other display strings a client sets (a conversation's
name): C0 controls (NUL, newline, tab, ESC …), DEL and the C1 controls (U+0080-U+009F:
CSI, NEL …), and the format characters that reorder or break what is shown: the
bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069: a name
that reads otherwise than it is) and the line and paragraph separators (U+2028, U+2029).
A terminal acts on them rather than shows them, a log line splits at them, a list of names
printed by a script carries them to whoever reads it. Identifiers elsewhere
already keep to narrower patterns (collection and property names, tenant and user ids,
model and provider names, request ids); free text (questions, turns, property values)
keeps them as sent."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def check_no_controls(value: str, field: str) -> str:
    """``value``, or INVALID_ARGUMENT (``CONTROL_CHARACTER``) naming ``field`` and the
    first control character by its code point and position (echoed, it would do what it
    does)."""
    found = _CONTROL.search(value)
    if found is not None:
        raise InvalidArgument(
            f"{field} must not contain control characters; U+{ord(found.group()):04X} at "
            f"position {found.start()} is one",
            field=field,
            reason="CONTROL_CHARACTER",
            metadata={"position": str(found.start())},
        )
    return value


def without_controls(text: str) -> str:
    """``text`` with each character ``check_no_controls`` refuses made a space: a name the
    service makes from free text (an Ask's question names its new conversation)."""
    return _CONTROL.sub(" ", text)
