"""Joining a host and a port into one address, the one way every part of gensearch does it.

An IPv6 literal holds colons itself, so ``::1`` and port 50051 written ``::1:50051`` is
ambiguous: gRPC reads it as a host with no port (every call then fails UNAVAILABLE) and an
http URL with it does not parse. Both gRPC targets and URLs (RFC 3986) write it in
brackets, ``[::1]:50051``; names and IPv4 addresses stay as they are.
"""

from __future__ import annotations


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 literal host in brackets (``[::1]:50051``), like Go's
    ``net.JoinHostPort``. A host already in brackets is kept as it is."""
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
