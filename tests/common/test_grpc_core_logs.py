"""gRPC's C core stays quiet on stderr, where the services write one JSON object a line.

Without ``GRPC_VERBOSITY`` the core logs at INFO through absl: a channel whose connection
the other side closed for idleness (every service's ``MAX_CONNECTION_IDLE``, 300 s) printed
``I1203 08:28:09.589545 25914 chttp2_transport.cc:1403] ipv4:127.0.0.1:50051: Got goaway
[2] …`` into the gateway's JSON log and onto ``gensearch up``'s console.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.logs import GRPC_SERVER_LOGGER
from services.common.server import GrpcServer
from services.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]

# A process that imports our code first, as `python -m services.<name>` does, then lets a
# server close an idle connection under a client's channel.
SCRIPT = """
import asyncio
import services  # noqa: F401  (what every service and the CLI import first)
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server(options=[("grpc.max_connection_idle_ms", 300)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest())
        await asyncio.sleep(1.5)
        await stub.Check(health_pb2.HealthCheckRequest())
    await server.stop(0)
    print("done")

asyncio.run(main())
"""


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_an_idle_connection_closed_under_a_channel_logs_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    done = _run(env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "goaway" not in done.stderr.lower(), done.stderr


def test_an_operator_may_still_ask_for_the_core_s_logs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    done = _run({**env, "GRPC_VERBOSITY": "INFO"})
    assert done.returncode == 0, done.stderr
    assert "goaway" in done.stderr.lower()


# A service's server (GrpcServer, logging configured as every service's __main__ does) that
# answers 2 MiB to a client taking at most 1 MiB. gRPC's server sees its send fail only when
# the client's refusal reaches it before the send completed, which depends on timing: many
# calls at once on the one connection (each reply's end then waits behind the others' bytes),
# in rounds until gRPC logged about one. A process of its own: in one that has moved large
# messages before (other tests), gRPC's sends complete sooner and the race is rarely lost.
REFUSED_REPLY_SCRIPT = """
import asyncio
import logging
import sys
import services  # noqa: F401
import grpc
from services.common.logs import GRPC_SERVER_LOGGER, configure_logging
from services.common.server import GrpcServer
from services.gateway.settings import GatewaySettings

SERVICE = "gensearch.test.v1.Replies"
MIB = 1024 * 1024
seen = []


class Seen(logging.Handler):
    def emit(self, record):
        seen.append(record)


async def twice(request, context):
    return b"t" * 2 * MIB


def register(_servicer, server):
    handler = grpc.unary_unary_rpc_method_handler(
        twice, request_deserializer=bytes, response_serializer=bytes
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Twice": handler}),)
    )


async def main():
    configure_logging("INFO", service="gateway")
    logging.getLogger(GRPC_SERVER_LOGGER).addHandler(Seen())
    settings = GatewaySettings(
        api_keys="ann:key-ann", max_reply_bytes_in_flight_per_tenant=0,
        max_reply_bytes_in_flight=0, metrics_port=None,
    )
    server = GrpcServer(settings, port=0)
    server.add_service(register, None, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", MIB)]
    )
    call = channel.unary_unary(f"/{SERVICE}/Twice")
    calls = 0
    refused = True  # every call failed on the client's side, for its own limit
    for _ in range(100):
        answers = await asyncio.gather(
            *(call(b"", metadata=(("authorization", "Bearer key-ann"),), timeout=60)
              for _ in range(32)),
            return_exceptions=True,
        )
        calls += len(answers)
        refused &= all(
            isinstance(a, grpc.aio.AioRpcError)
            and a.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "Received message larger than max" in (a.details() or "")
            for a in answers
        )
        await asyncio.sleep(0.05)  # the server's side of the calls ends
        if seen:
            break
    await channel.close()
    await server.stop(0)
    print(calls, len(seen), refused)

asyncio.run(main())
"""


def test_a_reply_over_its_clients_receive_limit_is_one_info_line() -> None:
    """A client that did not raise its receive limit (gRPC's default 4 MiB) refuses a larger
    reply: its library fails the call RESOURCE_EXHAUSTED. gRPC's server, whose send then
    failed, logged "ExecuteBatchError raised in core by servicer method" at ERROR with a
    traceback, as if the service had failed; it is one INFO line now."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "GENSEARCH_"))}
    done = subprocess.run(
        [sys.executable, "-c", REFUSED_REPLY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    calls, logged, refused = done.stdout.split()
    assert refused == "True", "a call did not fail RESOURCE_EXHAUSTED for its client's limit"
    if int(logged) == 0:
        # Seen on a loaded machine: every send completed first. It cannot be made certain
        # with gRPC's public options: the client's library grants the flow-control window
        # a pending read's whole message needs (bdp_probe off, a small lookahead or a far
        # larger reply made a failed send likelier, never certain), and even a send that
        # does fail is logged only when gRPC's server sees that failure before the
        # client's close (else it drops it silently, client_closed), an order inside gRPC.
        # The filter itself is tested without the race below.
        pytest.skip("gRPC completed every send before its client refused it: nothing to test")
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")], done.stderr
    assert "Traceback" not in done.stderr
    assert "ExecuteBatchError" not in done.stderr
    undelivered = [line for line in lines if "was not delivered" in line["message"]]
    assert 0 < len(undelivered) <= int(calls)  # at most one line per call
    for line in undelivered:
        assert line["level"] == "INFO", line
        assert line["message"].startswith(
            "the reply to /gensearch.test.v1.Replies/Twice was not delivered"
        )
        assert "receive limit" in line["message"]
        assert "exc_info" not in line


class ExecuteBatchError(Exception):
    """Stands for gRPC's own (grpc._cython.cygrpc.ExecuteBatchError, a private module's):
    the filter knows it by its name."""


async def test_grpc_s_failed_send_is_one_info_line_once_a_server_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line gRPC's server logs when a unary reply's send fails, as gRPC logs it, without
    the race above: once a service's server has started, it is one INFO line; any other
    error gRPC's server logs keeps its level and traceback."""
    settings = GatewaySettings(api_keys=SecretStr("ann:key-ann"), metrics_port=None)
    server = GrpcServer(settings, port=0)
    await server.start()
    try:
        caplog.set_level(logging.INFO)
        grpc_log = logging.getLogger(GRPC_SERVER_LOGGER)
        method = "/gensearch.retrieval.v1.RetrievalService/GetObject"
        for err in (ExecuteBatchError('Failed "execute_batch": (...)'), ValueError("boom")):
            try:
                raise err
            except Exception:
                grpc_log.exception(
                    "%s raised in core by servicer method [%s]", type(err).__name__, method
                )
        failed_send, other = [r for r in caplog.records if r.name == GRPC_SERVER_LOGGER]
    finally:
        await server.stop(0)
    assert failed_send.levelno == logging.INFO
    assert failed_send.exc_info is None and not failed_send.exc_text
    assert failed_send.getMessage().startswith(f"the reply to {method} was not delivered")
    assert other.levelno == logging.ERROR and other.exc_info is not None
    assert other.getMessage() == f"ValueError raised in core by servicer method [{method}]"
