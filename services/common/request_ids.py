"""What a client's ``request_id`` (an idempotency key: an Ask's turn, a memory write) may
hold: visible ASCII, 0x21-0x7e (a UUID as AIP-155 suggests, a ULID, base64,
``order:42/retry``). Not control characters (they reach logs and traces, where a line
break forges a line), spaces (a key cut or padded by a shell reads the same) or non-ASCII
(look-alike letters, bidirectional overrides: two keys that read the same and differ).
Its length is the caller's to bound (memory's MAX_REQUEST_ID_BYTES).

A key reused for another request must be refused, not answered with the first one's
result (Stripe's idempotency keys, AIP-155): ``fingerprint`` is what tells the two apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from google.protobuf import json_format
from google.protobuf.message import Message

from services.common.ascii_text import OUTSIDE_VISIBLE, check_ascii


def check_request_id(value: str, field: str = "request_id") -> str:
    """``value``, or INVALID_ARGUMENT naming ``field`` and the first character refused (by
    its code point and position: the character itself may be what must not be echoed)."""

    def says(char: str, position: int) -> str:
        return (
            f"{field} may hold only visible ASCII characters (letters, digits and "
            f"punctuation, e.g. a UUID); U+{ord(char):04X} at position {position} is not one"
        )

    return check_ascii(value, OUTSIDE_VISIBLE, field, says)


def fingerprint(message: Message, leave_out: Iterable[str] = ()) -> str:
    """The SHA-256 (hex) of ``message`` with the fields ``leave_out`` cleared, over its
    canonical JSON: proto field names, keys sorted, unset fields absent. By name, not by
    field number: two messages with the same fields (AskRequest, StreamAskRequest) of the
    same values have one fingerprint, and a field added later that a request leaves unset
    changes no fingerprint."""
    copy = type(message)()
    copy.CopyFrom(message)
    for name in leave_out:
        copy.ClearField(name)
    try:
        fields = json_format.MessageToDict(copy, preserving_proto_field_name=True)
    except json_format.SerializeToJsonError:
        # A value JSON cannot carry (an infinite number in a Value, a Timestamp or
        # Duration out of range): the request is refused by its own check, later, naming
        # the field; until then its deterministic wire form tells it apart (the same for
        # an Ask and a StreamAsk: their fields share numbers), never INTERNAL.
        wire = copy.SerializeToString(deterministic=True)
        return hashlib.sha256(b"wire:" + wire).hexdigest()
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
