"""Joining a host and a port into one address, the one way every part of gensearch does it.

An IPv6 literal holds colons itself, so ``::1`` and port 50051 written ``::1:50051`` is
ambiguous: gRPC reads it as a host with no port (every call then fails UNAVAILABLE) and an
http URL with it does not parse. Both gRPC targets and URLs (RFC 3986) write it in
brackets, ``[::1]:50051``; names and IPv4 addresses stay as they are.

``bind_problem`` says why a server could not listen on a host and port, before it tries.
"""

from __future__ import annotations

import socket


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 literal host in brackets (``[::1]:50051``), like Go's
    ``net.JoinHostPort``. A host already in brackets is kept as it is."""
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host`` and ``port`` now (the host does not
    resolve, the address is not this machine's, the port is taken …), or None. Bound the
    way gRPC and the metrics server bind (SO_REUSEADDR: a port held only by connections
    in TIME_WAIT is free to them, a listening one is not, on Linux); port 0 is any free
    port. A name resolving to several addresses is probed on the first, as the servers'
    first bind."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError):
        return "the host name does not resolve"
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as err:
        return (err.strerror or str(err)).lower()
    return None
