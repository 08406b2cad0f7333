"""What the test machine's network offers."""

from __future__ import annotations

import socket


def has_ipv6_loopback() -> bool:
    """Whether ``::1`` can be bound here (containers often run without IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
