"""What the chassis' tracing and access log cost per call, on a bare unary echo.

    .venv/bin/python bench/chassis.py [--calls 2000] [--rounds 7]

One process serves the same one-method echo service twice through ``GrpcServer`` (full
chassis: auth, metrics, error mapping), once with tracing off (``OTEL_SDK_DISABLED=true``)
and once on (spans made, no exporter), and calls them over loopback, one call at a time:
with a plain channel, with a client interceptor that does nothing (the price of grpc.aio's
interceptor machinery alone), with the client interceptors the gateway uses, and with the
access log on (JSON to /dev/null). The configurations take turns round by round, so load from
elsewhere hits them alike; it prints the CPU time per call (client and server together,
``time.process_time``), median of the rounds, and the difference to tracing off. CPU
rather than wall time: on a shared machine it is the steadier of the two, and the cost of
a span is CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402

from services.common import tracing  # noqa: E402
from services.common.chassis import access_log  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.server import GrpcServer  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402


def _ident(b: bytes) -> bytes:
    return b


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


class _NoOp(grpc.aio.UnaryUnaryClientInterceptor):
    """What any grpc.aio client interceptor costs before it does anything."""

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(details, request)


async def _serve(name: str, traced: bool) -> tuple[GrpcServer, str, str]:
    # Read when the first service is added: one server of each kind in one process.
    os.environ["OTEL_SDK_DISABLED"] = "false" if traced else "true"
    service = f"gensearch.{name}.v1.EchoService"
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_ident, response_serializer=_ident
    )

    def register(_servicer: object, server: grpc.aio.Server) -> None:
        generic = grpc.method_handlers_generic_handler(service, {"Echo": handler})
        server.add_generic_rpc_handlers((generic,))

    server = GrpcServer(CommonSettings(), port=0)
    server.add_service(register, None, service)
    port = await server.start()
    return server, f"127.0.0.1:{port}", f"/{service}/Echo"


async def main(calls: int, rounds: int) -> None:
    configure_logging("WARNING", "bench")
    devnull = open(os.devnull, "w")  # noqa: ASYNC230, SIM115 (for the whole run)
    logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
    off = await _serve("off", traced=False)
    on = await _serve("on", traced=True)
    os.environ["OTEL_SDK_DISABLED"] = "false"

    def plain(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address)

    def noop(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address, interceptors=[_NoOp()])

    def traced(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            address, interceptors=tracing.client_interceptors("client")
        )

    Factory = Callable[[str], grpc.aio.Channel]
    configs: dict[str, tuple[tuple[GrpcServer, str, str], Factory, bool]] = {
        "tracing off (OTEL_SDK_DISABLED)": (off, plain, False),
        "server span": (on, plain, False),
        "server span + no-op interceptor": (on, noop, False),
        "server span + client span": (on, traced, False),
        "tracing off + access log": (off, plain, True),
        "both spans + access log": (on, traced, True),
    }
    channels = {name: factory(address) for name, ((_, address, _), factory, _) in configs.items()}
    stubs = {
        name: channels[name].unary_unary(method, _ident, _ident)
        for name, ((_, _, method), _, _) in configs.items()
    }
    for stub in stubs.values():
        for _ in range(300):
            await stub(b"x")
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (_, _, access) in configs.items():
            access_log.setLevel(logging.INFO if access else logging.WARNING)
            stub = stubs[name]
            started = time.process_time()
            for _ in range(calls):
                await stub(b"x")
            cpu[name].append((time.process_time() - started) / calls * 1e6)
    base = statistics.median(cpu["tracing off (OTEL_SDK_DISABLED)"])
    print(f"bare unary echo, CPU per call (client + server), median of {rounds} rounds")
    for name, values in cpu.items():
        median = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"  {name:32s} {median:7.1f} µs  {median - base:+6.1f} µs  (rounds {spread})")
    for channel in channels.values():
        await channel.close()
    for server, _, _ in (off, on):
        await server.stop(0)
    devnull.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
