"""gRPC channel arguments shared by servers (``server.py``) and client channels (the
gateway's, ``services/gateway/clients/channel.py``): one rule, set the same on both ends."""

from __future__ import annotations


def metadata_options(limit: int) -> list[tuple[str, int]]:
    """gRPC's soft and hard metadata limits, both ``limit``: gRPC refuses metadata between
    the two at random (by default 8 and 16 KiB), so a 12 KB header passed or not by chance.
    Equal, one size always passes and the next always fails."""
    return [("grpc.max_metadata_size", limit), ("grpc.absolute_max_metadata_size", limit)]
