"""Which string field of a request's wire bytes is not UTF-8.

protobuf refuses a request whose string field (at any depth) holds bytes that are not
UTF-8, and says no more than "String field had bad UTF-8": the client learned only that
the whole message was malformed. Walking the bytes once more against the message's
descriptor finds the field, named the way our other errors name fields
(``messages[0].content``, ``generate.single_prompt``, ``inline.objects[2].title``).

Only a request protobuf already refused for that reason is walked, so a well-formed
request costs nothing; the walk reads at most the bytes gRPC received (the method's size
limit bounds them), and gives up (None) on anything it cannot read rather than guess.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# protobuf's own parsing limit (message levels); bytes deeper than it were refused for that.
_MAX_DEPTH = 100
# Keys of a Struct (or any map) are client text: a path quotes at most this much of each.
_KEY_CHARS = 64
# Messages whose own field names a path leaves out, as a JSON path would: a Struct's keys,
# a ListValue's indexes, a Value's kinds (``inline.objects[0].title``, ``….tags[1]``).
_JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


class _Unreadable(Exception):
    """Bytes that are not protobuf at all: the walk cannot say which field is at fault."""


def bad_utf8_field(descriptor: Descriptor, data: bytes) -> str | None:
    """The path of the first string field in ``data`` (a serialized ``descriptor``
    message) that is not UTF-8; None when there is none, or the bytes cannot be read."""
    try:
        return _in_message(descriptor, memoryview(data), "", 0)
    except _Unreadable:
        return None


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Unreadable
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _is_utf8(payload: memoryview) -> bool:
    try:
        bytes(payload).decode("utf-8")  # strict: surrogates (CESU-8) are refused too
    except UnicodeDecodeError:
        return False
    return True


def _fields(data: memoryview) -> list[tuple[int, memoryview]]:
    """The length-delimited fields of one message, as (number, payload), in order; the
    other wire types skipped."""
    found: list[tuple[int, memoryview]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise _Unreadable
            found.append((tag >> 3, data[pos : pos + length]))
            pos += length
        else:  # groups, and wire types that do not exist
            raise _Unreadable
    return found


def _in_message(descriptor: Descriptor, data: memoryview, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        raise _Unreadable
    seen: dict[int, int] = {}
    for number, payload in _fields(data):
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue  # an unknown field: kept as bytes, never decoded as text
        name = _name(descriptor, field, path, seen)
        found = _in_field(field, payload, name, depth)
        if found is not None:
            return found
    return None


def _name(owner: Descriptor, field: FieldDescriptor, path: str, seen: dict[int, int]) -> str:
    if owner.full_name in _JSON_TYPES:
        base = path
    else:
        base = f"{path}.{field.name}" if path else field.name
    entry = field.message_type
    if not field.is_repeated or (entry is not None and entry.GetOptions().map_entry):
        return base
    index = seen.get(field.number, 0)
    seen[field.number] = index + 1
    return f"{base}[{index}]"


def _in_field(field: FieldDescriptor, payload: memoryview, name: str, depth: int) -> str | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return None if _is_utf8(payload) else name
    entry = field.message_type
    if field.type != FieldDescriptor.TYPE_MESSAGE or entry is None:
        return None  # bytes, packed numbers: no text
    if entry.GetOptions().map_entry:
        return _in_entry(entry, payload, name, depth + 1)
    return _in_message(entry, payload, name, depth + 1)


def _in_entry(entry: Descriptor, data: memoryview, path: str, depth: int) -> str | None:
    """One entry of a map field at ``path``: a key that is not UTF-8 is the map's fault;
    a value's, the key's (``path.key``)."""
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    key = ""
    for number, payload in _fields(data):
        if number == key_field.number and key_field.type == FieldDescriptor.TYPE_STRING:
            if not _is_utf8(payload):
                return path
            key = bytes(payload).decode("utf-8")[:_KEY_CHARS]
        elif number == value_field.number:
            found = _in_field(value_field, payload, f"{path}.{key}", depth)
            if found is not None:
                return found
    return None
