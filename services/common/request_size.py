"""Each method's request size limit, checked on the raw bytes before parsing.

gRPC-python has one receive limit per server; the chassis gives each method its own by
wrapping the method's request deserializer (docs/operations.md#limits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.errors import ResourceExhausted
from services.common.metrics import split_method


class TooLarge:
    """Stands in for a request over its method's limit: the deserializer hands it over
    instead of parsing, and the handler answers RESOURCE_EXHAUSTED once the caller is
    authenticated (an exception in a deserializer would reach the client as UNKNOWN)."""

    __slots__ = ("limit", "method", "setting", "size")

    def __init__(self, size: int, limit: int, method: str, setting: str = "") -> None:
        self.size = size
        self.limit = limit
        self.method = method
        self.setting = setting

    def error(self) -> ResourceExhausted:
        # The setting that holds the limit, named as every other size refusal names its
        # own (metadata ``setting``): the operator's knob, the client's number to stay under.
        named = f" ({self.setting})" if self.setting else ""
        metadata = {"limit_bytes": str(self.limit), "size_bytes": str(self.size)}
        if self.setting:
            metadata["setting"] = self.setting
        return ResourceExhausted(
            f"the request is {self.size} bytes; {split_method(self.method)[1]} accepts at "
            f"most {self.limit}{named}",
            reason="REQUEST_TOO_LARGE",
            metadata=metadata,
        )


def bounded(
    deserializer: Callable[[bytes], Any], limit: int, method: str, setting: str = ""
) -> Callable[[bytes], Any]:
    """``deserializer``, except that a message over ``limit`` bytes (held by the variable
    ``setting``) becomes a ``TooLarge`` unparsed."""

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return TooLarge(len(data), limit, method, setting)
        return deserializer(data)

    return deserialize
