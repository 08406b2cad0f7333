"""One gRPC call written as HTTP/2 frames by hand (with ``h2``, already installed with
httpx): what no gRPC library sends, since each validates its own metadata first (a header
value with a control character or non-ASCII byte, say). An HTTP/2 client of any other
kind, or a proxy, sends it all the same."""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
from google.rpc import error_details_pb2, status_pb2


@dataclass
class RawStatus:
    code: int | None
    message: str
    details: status_pb2.Status | None

    def error_info(self) -> error_details_pb2.ErrorInfo:
        assert self.details is not None, f"no rich status details ({self.code}: {self.message})"
        for detail in self.details.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
        raise AssertionError(f"no ErrorInfo ({self.code}: {self.message})")


async def raw_unary(
    port: int,
    path: str,
    headers: list[tuple[str, str | bytes]],
    request: bytes,
    *,
    compressed: bool = False,
) -> RawStatus:
    """Sends ``request`` (one message, its bytes as given: with ``compressed``, the
    message's compressed flag is set, and a ``grpc-encoding`` header is the caller's to
    add) to ``path`` on loopback ``port`` with ``headers`` as they are, half-closes, and
    reads the call's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    sent = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
    ] + [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers]
    conn.send_headers(stream, sent)
    flag = b"\1" if compressed else b"\0"
    message = flag + struct.pack(">I", len(request)) + request
    # In frames no larger than HTTP/2's default maximum (16 KiB), within the flow-control
    # windows the server grants as it reads.
    chunks = [message[i : i + 16_384] for i in range(0, len(message), 16_384)] or [b""]
    for chunk in chunks[:-1]:
        conn.send_data(stream, chunk)
    conn.send_data(stream, chunks[-1], end_stream=True)
    received: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(30):
            while True:
                writer.write(conn.data_to_send())
                await writer.drain()
                data = await reader.read(65536)
                assert data, "the server closed the connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        received.update(dict(event.headers))
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream reset: {event.error_code}")
                if b"grpc-status" in received:
                    break
    finally:
        writer.close()
    raw = received.get(b"grpc-status-details-bin")
    details = None
    if raw is not None:
        details = status_pb2.Status.FromString(base64.b64decode(raw + b"=" * (-len(raw) % 4)))
    return RawStatus(
        int(received[b"grpc-status"]), received.get(b"grpc-message", b"").decode(), details
    )
