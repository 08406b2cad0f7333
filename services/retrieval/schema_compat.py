"""What a stored schema holds that this version cannot read: a value of an enum it does
not know (a data type or vectorizer kind a newer version added, say).

protobuf's ``ParseDict(..., ignore_unknown_fields=True)``, which reads stored schemas so
that a key a newer version added is ignored, also drops an unknown enum name and leaves
the field at 0 (``..._UNSPECIFIED``): a property of a newer type read as one without a
type, a newer vectorizer as none. Serving such a collection would answer wrongly, so the
catalog reads it as a schema that does not parse (``Schema.from_json``)."""

from __future__ import annotations

from typing import Any


def unknown_enum_value(descriptor: Any, data: Any, path: str = "") -> str | None:
    """The path and value of the first enum value in ``data`` (a message's JSON form,
    proto field names or JSON names) that ``descriptor``'s enums do not have; None if
    every one is known. A name, a number, or a number written as a string ("2": ParseDict
    reads it as that number): an open enum would keep an unknown number, not refuse it.
    ``descriptor``: a message's Descriptor (typed Any: protobuf's Python one or upb's)."""
    if not isinstance(data, dict):
        return None  # a well-known type's JSON form (a time, a duration), or not ours
    for field in descriptor.fields:
        key = field.name if field.name in data else field.json_name
        if key not in data:
            continue
        where = f"{path}{field.name}"
        values = data[key]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            field = field.message_type.fields_by_name["value"]
            items = list(values.items()) if isinstance(values, dict) else []
        elif field.is_repeated:
            items = list(enumerate(values)) if isinstance(values, list) else []
        else:
            items = [(None, values)]
        for index, value in items:
            at = where if index is None else f"{where}[{index!r}]"
            if field.enum_type is not None:
                if _unknown_value(field.enum_type, value):
                    return f"{at}: {value!r}"
            elif field.message_type is not None and not _well_known(field.message_type):
                found = unknown_enum_value(field.message_type, value, f"{at}.")
                if found is not None:
                    return found
    return None


def _unknown_value(enum_type: Any, value: Any) -> bool:
    """Whether ``value`` is no value of ``enum_type``: a name it does not have, or a number
    (raw, or a string ``int()`` reads: ParseDict tries the name, then ``int(value)``) that
    is none of its values. An open enum keeps an unknown number, so left to protobuf such a
    collection would load with a value this version cannot handle."""
    if isinstance(value, bool):
        return False  # not a name nor a number: ParseDict refuses it itself
    if isinstance(value, int):
        return value not in enum_type.values_by_number
    if not isinstance(value, str) or value in enum_type.values_by_name:
        return False
    try:
        number = int(value)
    except ValueError:
        return True
    return number not in enum_type.values_by_number


def _well_known(descriptor: Any) -> bool:
    """google.protobuf's own types (Struct, Value, Timestamp ...): their JSON form is not
    their fields (a Struct's keys are the caller's, whatever they are called)."""
    return str(descriptor.full_name).startswith("google.protobuf.")
