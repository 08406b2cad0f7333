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

    __slots__ = ("limit", "method", "size")

    def __init__(self, size: int, limit: int, method: str) -> None:
        self.size = size
        self.limit = limit
        self.method = method

    def error(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the request is {self.size} bytes; {split_method(self.method)[1]} accepts at "
            f"most {self.limit}",
            reason="REQUEST_TOO_LARGE",
            metadata={"limit_bytes": str(self.limit), "size_bytes": str(self.size)},
        )


def bounded(
    deserializer: Callable[[bytes], Any], limit: int, method: str
) -> Callable[[bytes], Any]:
    """``deserializer``, except that a message over ``limit`` bytes becomes a ``TooLarge``
    unparsed."""

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return TooLarge(len(data), limit, method)
        return deserializer(data)

    return deserialize
