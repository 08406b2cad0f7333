"""Hand-made protobuf wire bytes: what a client built from another (say newer) .proto
sends, which the generated Python classes cannot produce on their own."""

from __future__ import annotations

from google.protobuf.message import Message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def add_unknown_field(message: Message, number: int, payload: bytes) -> None:
    """Merges into ``message`` a length-delimited field ``number`` its type does not
    declare, carrying ``payload``: protobuf keeps it as an unknown field, serializes it
    again and counts it in ``ByteSize()``."""
    message.MergeFromString(_varint(number << 3 | 2) + _varint(len(payload)) + payload)
