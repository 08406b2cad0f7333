"""What to say when no gateway could be reached at the client's address.

gRPC's own text for a failed connection ("failed to connect to all addresses; last error:
UNKNOWN: ipv4:127.0.0.1:50050: Failed to connect to remote host: Connection refused")
names neither what the client was pointed at nor what to check, and a new user meets it
first: calling before ``make run``, at a wrong port, or plaintext at a TLS gateway. The
message here names the address, reads gRPC's detail for the likely cause, says what to
check, and keeps gRPC's text at its end.

Only the channel's own failures are explained: gRPC core writes these texts when it
cannot connect or resolve, and they carry no ``ErrorInfo`` (a service's UNAVAILABLE
always does, and is left as it came).
"""

from __future__ import annotations

from dataclasses import dataclass

# How gRPC core words a failure to connect (pick_first) or to resolve the host.
_CONNECT_FAILED = "failed to connect to all addresses"
_RESOLVE_FAILED = ("errors resolving", "dns resolution failed")

# Nothing accepted the TCP connection: no server at that host and port.
_REFUSED = ("connection refused",)
# No TCP connection at all: the host is down, firewalled or not routed to.
_NO_ROUTE = ("timed out", "timeout", "no route to host", "network is unreachable")
# A TLS client meeting a plaintext server: its answer is not a TLS record.
_NOT_TLS = ("wrong_version_number", "packet_length_too_long", "http_request")


@dataclass(frozen=True)
class Target:
    """What the client dialled: ``origin`` says where the address came from (the
    ``address`` argument, ``GENSEARCH_ADDRESS`` or the default), ``tls`` whether the
    channel has credentials."""

    address: str
    origin: str
    tls: bool


def explain(detail: str, target: Target) -> str | None:
    """The message for gRPC's ``detail`` when it is a failed connection to ``target``;
    None when it is not one (then the error keeps gRPC's text)."""
    lowered = detail.lower()
    resolve_failed = lowered.startswith(_RESOLVE_FAILED)
    if not (lowered.startswith(_CONNECT_FAILED) or resolve_failed):
        return None
    where = f"the gateway at {target.address}{_origin(target)}"
    if resolve_failed:
        cause = "its host name does not resolve: check the address"
    elif any(text in lowered for text in _REFUSED):
        cause = (
            "nothing listens there (connection refused): is the stack up (`make run`), "
            "and are the host and port the gateway's (default port 50050)?"
        )
    elif target.tls and any(text in lowered for text in _NOT_TLS):
        cause = (
            "the server there does not speak TLS: drop `credentials` for a plaintext "
            "gateway (as `make run` starts)"
        )
    elif target.tls and ("handshake" in lowered or "ssl" in lowered):
        cause = (
            "the TLS handshake failed: do your `credentials` trust the gateway's "
            "certificate, and does it name that host?"
        )
    elif any(text in lowered for text in _NO_ROUTE):
        cause = "no connection to that host: are the host and port the gateway's?"
    elif not target.tls:
        # A TCP connection was made, then closed, reset or answered in something that is
        # not HTTP/2 (gRPC words these many ways): a TLS server, or another program.
        cause = (
            "something listens there but closed the connection or is no plaintext gRPC "
            "server: a TLS gateway needs credentials=grpc.ssl_channel_credentials(); "
            "else check the port (another program may hold it)"
        )
    else:
        cause = (
            "something there closed the connection: is it a gateway that speaks TLS (your "
            "`credentials` say so), or another program on that port?"
        )
    return f"cannot reach {where}: {cause} (gRPC: {detail})"


def _origin(target: Target) -> str:
    if target.origin == "default":
        return " (the default: pass `address` or set GENSEARCH_ADDRESS)"
    if target.origin == "GENSEARCH_ADDRESS":
        return " (from GENSEARCH_ADDRESS)"
    return ""
