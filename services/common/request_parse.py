"""Requests protobuf cannot parse: too deep (its limit is 100 message levels) or not the
method's message at all. grpc-python answers a deserializer's exception itself, as UNKNOWN
quoting the Python exception; the chassis wraps each method's deserializer with
``tolerant`` so the handler gets an ``Undecodable`` instead, and answers INVALID_ARGUMENT
with ErrorInfo (after authenticating the caller, as for ``request_size.TooLarge``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.errors import InvalidArgument


class Undecodable:
    """Stands in for a request message protobuf could not parse. grpc-python answers a
    deserializer's exception itself, as UNKNOWN quoting the Python exception; handed to
    the handler instead, it becomes INVALID_ARGUMENT with ErrorInfo like any bad input
    (once the caller is authenticated, as ``TooLarge`` does)."""

    __slots__ = ("error_text", "message_type")

    def __init__(self, error: Exception, message_type: str) -> None:
        self.error_text = str(error)
        self.message_type = message_type

    def error(self) -> InvalidArgument:
        metadata = {"message_type": self.message_type}
        # upb names the limit it hit ("Exceeded upb_DecodeOptions_MaxDepth"), nothing more.
        if "MaxDepth" in self.error_text:
            return InvalidArgument(
                f"the request nests deeper than protobuf parses ({_PARSE_DEPTH} message "
                "levels, about 32 levels of objects and lists); nothing of it was processed",
                reason="NESTING_TOO_DEEP",
                metadata=metadata,
            )
        return InvalidArgument(
            f"the request is not a valid {self.message_type} message",
            reason="MALFORMED_REQUEST",
            metadata=metadata,
        )


# protobuf's default recursion limit when parsing.
_PARSE_DEPTH = 100


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    # Generated handlers deserialize with ``<Message>.FromString``, bound to the class.
    cls = getattr(deserializer, "__self__", None)
    message_type = getattr(getattr(cls, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # protobuf's DecodeError, or a custom deserializer's
            return Undecodable(err, message_type)

    return parse
