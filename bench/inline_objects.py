"""How long one large GenerateOnObjects with inline objects holds the gateway's event loop.

In-process, as the tests build it: the generation service, the gateway and a loopback fake
OpenAI endpoint on this process's one event loop (memory and retrieval are not called for
inline objects without a collection; their addresses point where nothing listens). The
request: ``--objects`` inline objects, each a short ``name`` and a list of ``--values``
booleans (by default 60 x 15,500: 3.7 MB, within the default size bounds), with
``single_prompt = "About {name}"`` and a grouped task over ``name``. Reported, median of
``--runs``: the whole call, and the loop's longest turn during it (what every other call on
that replica waits at worst), measured by a task that yields and reads the clock, and
whether the call was served or refused (past ``GENSEARCH_GATEWAY_MAX_INLINE_VALUES``,
250,000 by default: set it in the environment to measure a served call of more).

    .venv/bin/python bench/inline_objects.py [--runs 5] [--objects 60] [--values 15500] [--empty]
    .venv/bin/python bench/inline_objects.py --tree /tmp/base   # another checkout (before)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--values", type=int, default=15_500)
    parser.add_argument(
        "--empty",
        action="store_true",
        help="lists of Values with no kind set (2 bytes each: most values per byte)",
    )
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose services run")
    return parser.parse_args()


ARGS = _parse()
sys.path[:0] = [str(ARGS.tree), str(ARGS.tree / "gen")]

import grpc  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from services.devlaunch.processes import free_port  # noqa: E402
from services.gateway.__main__ import build as build_gateway  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402
from services.generation.__main__ import build_server as build_generation  # noqa: E402
from services.generation.settings import GenerationSettings  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402

TOKEN = "bench-internal-token"
KEY = "bench-key-123"


def request(objects: int, values: int, empty: bool = False) -> gw_pb.GenerateOnObjectsRequest:
    structs = []
    for i in range(objects):
        struct = struct_pb2.Struct()
        struct.update({"name": f"o{i}", "flags": [bool(j % 2) for j in range(values)]})
        if empty:
            flags = struct.fields["flags"].list_value
            del flags.values[:]
            for _ in range(values):
                flags.values.add()
        structs.append(struct)
    return gw_pb.GenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=structs),
        generate=gw_pb.Generate(
            single_prompt="About {name}", grouped_task="Sum up", grouped_properties=["name"]
        ),
    )


async def longest_turn(done: asyncio.Event) -> float:
    worst, last = 0.0, time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    return worst


async def main() -> None:
    logging.disable(logging.WARNING)
    async with FakeOpenAI() as fake:
        common: dict[str, Any] = {"internal_token": TOKEN, "grace_period": 0.5}
        provider = {"name": "fake", "base_url": fake.base_url, "default_model": "fake-model"}
        generation = await build_generation(
            GenerationSettings(
                providers=[provider], default_provider="fake", metrics_port=None, **common
            ),
            port=0,
        )
        gen_port = await generation.start()
        nowhere = f"127.0.0.1:{free_port()}"
        built = await build_gateway(
            GatewaySettings(
                memory_addr=nowhere,
                retrieval_addr=nowhere,
                generation_addr=f"127.0.0.1:{gen_port}",
                metrics_port=None,
                api_keys=f"bench:{KEY}",
                **common,
            ),
            port=0,
        )
        port = await built.server.start()
        auth = (("authorization", f"Bearer {KEY}"),)
        big = request(ARGS.objects, ARGS.values, ARGS.empty)
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = gw_grpc.GatewayServiceStub(channel)
            warm = request(1, 10)
            await stub.GenerateOnObjects(warm, metadata=auth)
            calls, turns, answers = [], [], []
            for _ in range(ARGS.runs):
                done = asyncio.Event()
                watcher = asyncio.create_task(longest_turn(done))
                started = time.perf_counter()
                try:
                    response = await stub.GenerateOnObjects(big, metadata=auth)
                    answers.append("served")
                    assert response.hits[-1].generation.result == f"About o{ARGS.objects - 1}"
                except grpc.aio.AioRpcError as err:
                    # Past GENSEARCH_GATEWAY_MAX_INLINE_VALUES (where the tree has it):
                    # how long the refusal holds the loop.
                    answers.append(f"refused {err.code().name}")
                calls.append(time.perf_counter() - started)
                done.set()
                turns.append(await watcher)
        await built.server.stop(0)
        await generation.stop(0)

    def summary(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"

    kind = "kind-less Values" if ARGS.empty else "booleans"
    print(f"tree {ARGS.tree}: {ARGS.objects} objects x {ARGS.values} {kind}, {big.ByteSize():,} B")
    print(f"  answered: {', '.join(sorted(set(answers)))}")
    print(f"  whole call, median of {ARGS.runs}: {summary(calls)}")
    print(f"  longest loop turn, median of {ARGS.runs}: {summary(turns)}")


if __name__ == "__main__":
    asyncio.run(main())
