"""Peak memory of the gateway and retrieval when one tenant asks for many large replies at
once (``MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT``, services/common/reply_bytes.py).

Starts memory, retrieval, generation and the gateway as separate processes (bench/stack.py),
loads a collection of 100 objects of 600 kB each, then sends 16 concurrent retrieval
Searches through the gateway, each answered with all 100 (about 60 MB), and reports each
process's peak resident set (``VmHWM``, reset before the attack) and how the calls ended.
Run once with the bound off (0: as before it existed) and once at its default.
``--read-bound`` sets retrieval's bound on the bytes of reads being built
(``GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT``, services/retrieval/read_bytes.py;
unset: its default).

    .venv/bin/python bench/reply_bytes.py
    .venv/bin/python bench/reply_bytes.py --bounds 268435456 --read-bound 0
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from bench.stack import ServiceProcess, Stack, provider  # noqa: E402

SETTING = "MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT"
READ_SETTING = "GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT"
OBJECTS, OBJECT_BYTES, DIM = 100, 600_000, 4


def _peak_mib(proc: ServiceProcess) -> int:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM")


def _reset_peak(proc: ServiceProcess) -> None:
    assert proc.proc is not None
    Path(f"/proc/{proc.proc.pid}/clear_refs").write_text("5")


async def run(bound: str, calls: int, read_bound: str | None) -> None:
    async with Stack() as stack:
        for name in ("retrieval", "gateway"):
            stack.extra_env[name] = {f"GENSEARCH_{name.upper()}_{SETTING}": bound}
        if read_bound is not None:
            stack.extra_env["retrieval"][READ_SETTING] = read_bound
        memory = await stack.memory()
        retrieval = await stack.retrieval()
        generation = await stack.generation({"fake": provider("http://127.0.0.1:9/v1")})
        gateway = await stack.gateway(memory, retrieval, generation)
        channel = grpc.aio.insecure_channel(
            gateway.address, options=[("grpc.max_receive_message_length", -1)]
        )
        stub = ret_grpc.RetrievalServiceStub(channel)
        await stub.CreateCollection(
            ret_pb.CreateCollectionRequest(
                collection=ret_pb.Collection(
                    name="Big",
                    properties=[ret_pb.Property(name="body", data_type=ret_pb.DATA_TYPE_TEXT)],
                    vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
                )
            )
        )
        for start in range(0, OBJECTS, 20):
            objects = []
            for i in range(start, start + 20):
                props = struct_pb2.Struct()
                props.update({"body": chr(97 + i % 26) * OBJECT_BYTES})
                objects.append(ret_pb.DataObject(properties=props, vector=[1.0, i, 0.5, 0.1]))
            await stub.UpsertObjects(ret_pb.UpsertObjectsRequest(collection="Big", objects=objects))
        search = ret_pb.SearchRequest(
            collection="Big",
            near_vector=ret_pb.NearVector(vector=[1.0, 1.0, 0.5, 0.1]),
            limit=OBJECTS,
        )
        for proc in (retrieval, gateway):
            _reset_peak(proc)
        before = {p.name: _peak_mib(p) for p in (retrieval, gateway)}
        results = await asyncio.gather(
            *(stub.Search(search, timeout=120) for _ in range(calls)), return_exceptions=True
        )
        ends = collections.Counter(
            r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results
        )
        peaks = {p.name: _peak_mib(p) for p in (retrieval, gateway)}
        await channel.close()
        reads = "" if read_bound is None else f", {READ_SETTING}={read_bound}"
        print(
            f"{SETTING}={bound}{reads}: "
            f"{calls} x {OBJECTS * OBJECT_BYTES // 1_000_000} MB searches: "
            f"{dict(ends)}; peak RSS MiB (idle before): "
            + ", ".join(f"{n} {peaks[n]} ({before[n]})" for n in peaks)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounds", nargs="+", default=["0", str(256 * 1024 * 1024)])
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--read-bound", default=None)
    args = parser.parse_args()
    for bound in args.bounds:
        asyncio.run(run(bound, args.calls, args.read_bound))


if __name__ == "__main__":
    main()
