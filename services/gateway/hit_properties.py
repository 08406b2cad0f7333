"""A hit's properties as the prompts read them: plain Python values, each converted from
its protobuf ``Value`` when a prompt first reads it, once.

The plan used to convert every hit's whole Struct (``json_format.MessageToDict``) before
rendering, though a template reads only the properties it names. Inline objects may hold
~930,000 values in one request (60 lists of 15,500 booleans, within both size bounds):
converting those the template never named held the gateway's event loop about 0.6 s of
its 1.2 s. A property is converted by protobuf's own ``json_format``, as before, so
every value reads as it did (integral doubles, nulls, a Value with no kind as null).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

_UNREAD = object()


class HitProperties(Mapping[str, Any]):
    """``struct``'s properties by name; a property's value is converted on its first
    read and kept. Iterating or counting the names converts nothing."""

    def __init__(self, struct: struct_pb2.Struct) -> None:
        self._fields = struct.fields
        self._read: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        value = self._read.get(name, _UNREAD)
        if value is _UNREAD:
            # KeyError for a name the object does not have, as a dict's; reading a
            # protobuf map with [] would add the name.
            if name not in self._fields:
                raise KeyError(name)
            value = self._read[name] = json_format.MessageToDict(self._fields[name])
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)
