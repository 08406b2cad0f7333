"""The request metadata limit (``max_metadata_bytes``), held by the chassis.

gRPC refuses metadata over its own limits with a bare RESOURCE_EXHAUSTED ("received
metadata size exceeds hard limit"): no ErrorInfo, so a client could not tell which header
was too large, nor what the limit was. The chassis counts a call's headers the way gRPC
does and refuses past the setting itself, with METADATA_TOO_LARGE naming the largest
header. gRPC's own limits (``core_limit``) stay above the setting, as the bound on what a
server buffers before any of our code runs: past them gRPC still refuses bare
(docs/operations.md#limits).
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.errors import ResourceExhausted, over_limit, quote
from services.common.metrics import split_method

REASON = "METADATA_TOO_LARGE"
# What gRPC adds to each header's name and value when it counts them (HPACK's entry
# overhead, RFC 7541 section 4.1).
ENTRY_BYTES = 32
# The headers gRPC reads itself and never shows a service (:method, :scheme, :authority,
# te, content-type, grpc-accept-encoding), as gRPC counted them for a grpc-python 1.85
# client calling a host:port on loopback without a deadline: with them the boundary is
# where gRPC's own count put it. A longer host name, a deadline (grpc-timeout, ~47 bytes)
# or another client's headers move gRPC's count by that much; ours does not move.
TRANSPORT_BYTES = 321
# gRPC's own limit is this many times the setting (both soft and hard, so it refuses the
# same way every time): room for what the allowance above misses, and the bound on what
# a server buffers for one call (at most 2 MiB, with the setting's upper bound).
CORE_LIMIT_FACTOR = 2


def core_limit(setting: int) -> int:
    """gRPC's soft and hard metadata limits for a server whose setting is ``setting``."""
    return CORE_LIMIT_FACTOR * setting


def entry_size(key: str, value: str | bytes) -> int:
    """One header as gRPC counts it: name + value (bytes) + 32."""
    raw = value if isinstance(value, bytes) else value.encode()
    return len(key.encode()) + len(raw) + ENTRY_BYTES


class MetadataLimit:
    def __init__(self, limit: int, setting: str) -> None:
        """``limit``: bytes of request metadata a call may carry; ``setting``: the
        variable that sets it, named in the refusal."""
        self.limit = limit
        self.setting = setting

    def check(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Raises METADATA_TOO_LARGE when the call's headers (those gRPC shows us, plus
        ``:path`` and the transport's own, ``TRANSPORT_BYTES``) count more than the
        limit."""
        size = entry_size(":path", method) + TRANSPORT_BYTES
        largest, largest_size = "", 0
        for key, value in metadata or ():
            entry = entry_size(key, value)
            size += entry
            if entry > largest_size:
                largest, largest_size = key, entry
        if size > self.limit:
            raise over_limit(
                ResourceExhausted,
                f"the request metadata is {size} bytes (each header's name and value plus "
                f"32); {split_method(method)[1]} accepts at most {self.limit} "
                f"({self.setting}); the largest header is {quote(largest)} "
                f"({largest_size} bytes)",
                field=largest,
                size=size,
                limit=self.limit,
                setting=self.setting,
                reason=REASON,
            )
