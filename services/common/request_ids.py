"""What a client's ``request_id`` (an idempotency key: an Ask's turn, a memory write) may
hold: visible ASCII, 0x21-0x7e (a UUID as AIP-155 suggests, a ULID, base64,
``order:42/retry``). Not control characters (they reach logs and traces, where a line
break forges a line), spaces (a key cut or padded by a shell reads the same) or non-ASCII
(look-alike letters, bidirectional overrides: two keys that read the same and differ).
Its length is the caller's to bound (memory's MAX_REQUEST_ID_BYTES)."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

_OUTSIDE = re.compile(r"[^\x21-\x7e]")


def check_request_id(value: str, field: str = "request_id") -> str:
    """``value``, or INVALID_ARGUMENT naming ``field`` and the first character refused (by
    its code point and position: the character itself may be what must not be echoed)."""
    found = _OUTSIDE.search(value)
    if found is not None:
        raise InvalidArgument(
            f"{field} may hold only visible ASCII characters (letters, digits and "
            f"punctuation, e.g. a UUID); U+{ord(found.group()):04X} at position "
            f"{found.start()} is not one",
            field=field,
            metadata={"position": str(found.start())},
        )
    return value
