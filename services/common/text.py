"""Text that a protobuf string can carry."""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with its UTF-16 surrogates made valid. JSON may escape half a character
    (``"\\ud83d"``, from a server that cut an emoji between tokens, or quoted it in an error
    message), and Python keeps it as a lone surrogate, which no protobuf string or gRPC
    status can carry: the call failed with INTERNAL, or reached the caller as a bare
    UNKNOWN. Pairs are joined, lone halves become U+FFFD."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
