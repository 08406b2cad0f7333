"""Requests protobuf cannot parse: too deep (its limit is 100 message levels), a string
field that is not UTF-8, or not the method's message at all. grpc-python answers a
deserializer's exception itself, as UNKNOWN quoting the Python exception; the chassis wraps
each method's deserializer with ``tolerant`` so the handler gets an ``Undecodable``
instead, and answers INVALID_ARGUMENT with ErrorInfo (after authenticating the caller, as
for ``request_size.TooLarge``). For a string that is not UTF-8 the answer names the field
(``wire_strings``), which protobuf's error does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.errors import InvalidArgument, ServiceError
from services.common.wire_strings import bad_utf8_field


class Undecodable:
    """Stands in for a request message protobuf could not parse. grpc-python answers a
    deserializer's exception itself, as UNKNOWN quoting the Python exception; handed to
    the handler instead, it becomes INVALID_ARGUMENT with ErrorInfo like any bad input
    (once the caller is authenticated, as ``TooLarge`` does)."""

    __slots__ = ("error_text", "field", "message_type")

    def __init__(self, error: Exception, message_type: str, field: str | None = None) -> None:
        self.error_text = str(error)
        self.message_type = message_type
        # The string field that is not UTF-8, when that is what protobuf refused.
        self.field = field

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
        if self.field is not None:
            # The same reason as any malformed request (clients already match on it), with
            # the field a client must fix.
            return InvalidArgument(
                f"{self.field} is not valid UTF-8: a protobuf string must be UTF-8 text "
                f"(send binary data base64-encoded); nothing of the request was processed",
                field=self.field,
                reason="MALFORMED_REQUEST",
                metadata=metadata,
            )
        return InvalidArgument(
            f"the request is not a valid {self.message_type} message",
            reason="MALFORMED_REQUEST",
            metadata=metadata,
        )


# What upb's error says of a string field that is not UTF-8 (it names no field).
_BAD_UTF8 = "bad UTF-8"
# protobuf's default recursion limit when parsing.
_PARSE_DEPTH = 100


def request_descriptor(deserializer: Callable[[bytes], Any] | None) -> Any:
    # Generated handlers deserialize with ``<Message>.FromString``, bound to the class.
    cls = getattr(deserializer, "__self__", None)
    return getattr(cls, "DESCRIPTOR", None)


def message_type(deserializer: Callable[[bytes], Any] | None) -> str:
    """The full name of the message ``deserializer`` parses ("request" when unknown)."""
    return getattr(request_descriptor(deserializer), "full_name", "request")


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    descriptor = request_descriptor(deserializer)
    message_type = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # protobuf's DecodeError, or a custom deserializer's
            field = None
            if descriptor is not None and _BAD_UTF8 in str(err):
                field = bad_utf8_field(descriptor, data)
            return Undecodable(err, message_type, field)

    return parse


class Unreceived:
    """Stands in for the request of a unary-request call that never came: the client
    half-closed without sending one, or sent nothing within the stream idle limit. The
    handler answers ``refusal`` (once the caller is authenticated, as for ``Undecodable``)."""

    __slots__ = ("refusal",)

    def __init__(self, refusal: ServiceError) -> None:
        self.refusal = refusal

    def error(self) -> ServiceError:
        return self.refusal


def no_request(message_type: str) -> InvalidArgument:
    """The refusal of a unary-request call that half-closed without a request message."""
    return InvalidArgument(
        f"the call carried no {message_type} message: a unary method takes exactly one",
        reason="MALFORMED_REQUEST",
        metadata={"message_type": message_type},
    )
