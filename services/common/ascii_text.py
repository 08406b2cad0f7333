"""Text a caller sends that must keep to ASCII: a key or URL in a header the service passes
on (printable: gRPC sends no other character in a header that is not -bin), a request_id
(visible: no space either). Refused at the first other character, named by its position
(and by the message the caller's check words): the character itself may be what must not
be echoed, a control character or part of a key."""

from __future__ import annotations

import re
from collections.abc import Callable

from services.common.errors import InvalidArgument

# Outside printable ASCII (0x20-0x7e, the space included).
OUTSIDE_PRINTABLE = re.compile(r"[^\x20-\x7e]")
# Outside visible ASCII (0x21-0x7e, no space).
OUTSIDE_VISIBLE = re.compile(r"[^\x21-\x7e]")


def check_ascii(
    value: str,
    outside: re.Pattern[str],
    field: str,
    says: Callable[[str, int], str],
    *,
    reason: str | None = None,
) -> str:
    """``value``, or INVALID_ARGUMENT naming ``field`` (``reason``, the default one if
    None) at the first character ``outside`` finds: the message is ``says(character,
    position)``, metadata ``position``."""
    found = outside.search(value)
    if found is not None:
        raise InvalidArgument(
            says(found.group(), found.start()),
            field=field,
            reason=reason,
            metadata={"position": str(found.start())},
        )
    return value
