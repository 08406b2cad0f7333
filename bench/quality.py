"""Retrieval and answer quality on the demo corpus: recall@k and MRR per retrieval mode,
and, for Ask with an LLM, citation coverage, answers citing a relevant passage and
follow-up retrieval after question condensing.

    .venv/bin/python bench/quality.py [--k 5] [--llm local|fake|none] [--summary]
        [--passages N] [--questions N] [--ask-questions N] [--runs N]

The corpus is the demo's (services/cli/corpus.py: CPython's own pydoc topics, so nothing
is downloaded); the questions and the passages that answer them are kept in
bench/data/quality_questions.json (written once by hand, see its "about"). No public QA
set ships inside a package this project installs, so the issue's fallback applies.

Every service is its own process (bench/stack.py); the bundled model (``--llm local``)
is the llama.cpp server child process of services/devlaunch/llm_server.py.

Metrics, per question, averaged:
- recall@k: relevant passages in the top k / min(relevant passages, k) (capped, so a
  question with more relevant passages than k can still score 1);
- MRR: 1 / rank of the first relevant passage (0 when none is in the top ``--depth``).

Retrieval modes are rows of ``MODES``: a name and an async function from (bench,
question, depth) to passage keys in rank order. A new retrieval stage (the reranker of
issue 15 §3) adds its row there and is reported with the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from gensearch.client.types import to_proto  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from google.protobuf import duration_pb2, struct_pb2  # noqa: E402

from bench.report import Figures, machine, median_range  # noqa: E402
from bench.stack import Stack, provider  # noqa: E402
from services.cli import corpus, demo  # noqa: E402
from services.gateway.condense import fallback_query  # noqa: E402
from services.gateway.conversation import Turn  # noqa: E402
from services.generation.settings import LOCAL_MODEL  # noqa: E402

DATA = ROOT / "bench" / "data" / "quality_questions.json"
COLLECTION = "Quality"
ASK_MAX_TOKENS = 96
ASK_TIMEOUT = 300


def passage_key(hit: ret_pb.Hit) -> str:
    fields = hit.properties.fields
    return f"{fields['topic'].string_value}:{int(fields['part'].number_value)}"


@dataclass(frozen=True)
class Question:
    text: str
    relevant: frozenset[str]


@dataclass(frozen=True)
class FollowUp:
    first: str
    follow_up: str
    relevant: frozenset[str]


def load_questions() -> tuple[list[Question], list[FollowUp]]:
    data = json.loads(DATA.read_text())
    questions = [Question(q["question"], frozenset(q["relevant"])) for q in data["questions"]]
    follow_ups = [
        FollowUp(f["first"], f["follow_up"], frozenset(f["relevant"])) for f in data["follow_ups"]
    ]
    return questions, follow_ups


def recall_at(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    found = len(relevant & set(ranked[:k]))
    return found / min(len(relevant), k)


def reciprocal_rank(ranked: Sequence[str], relevant: frozenset[str]) -> float:
    for rank, key in enumerate(ranked, start=1):
        if key in relevant:
            return 1.0 / rank
    return 0.0


# -- retrieval modes --------------------------------------------------------------------

Mode = Callable[["Bench", str, int], Awaitable[list[str]]]


async def keyword(bench: Bench, question: str, depth: int) -> list[str]:
    return await bench.search(ret_pb.SearchRequest(keyword=ret_pb.Keyword(text=question)), depth)


async def near_text(bench: Bench, question: str, depth: int) -> list[str]:
    request = ret_pb.SearchRequest(near_text=ret_pb.NearText(text=question))
    return await bench.search(request, depth)


async def hybrid(bench: Bench, question: str, depth: int) -> list[str]:
    return await bench.search(ret_pb.SearchRequest(hybrid=ret_pb.Hybrid(text=question)), depth)


async def hybrid_rerank(bench: Bench, question: str, depth: int) -> list[str]:
    """Hybrid, then the rerank stage with the provider that needs no download: local MMR
    over 50 candidates (no cross-encoder is available offline; MMR trades some relevance
    for diversity, so it is the row to watch when a real reranker is configured)."""
    request = ret_pb.SearchRequest(
        hybrid=ret_pb.Hybrid(text=question), rerank=ret_pb.Rerank(provider="mmr", candidates=50)
    )
    return await bench.search(request, depth)


# The rows reported, in order. A new stage adds its own row.
MODES: dict[str, Mode] = {
    "keyword": keyword,
    "near_text": near_text,
    "hybrid": hybrid,
    "hybrid+rerank": hybrid_rerank,
}


@dataclass
class ModeScores:
    recall: list[float] = field(default_factory=list)
    mrr: list[float] = field(default_factory=list)


@dataclass
class AskScores:
    coverage: list[float] = field(default_factory=list)
    cites_relevant: list[bool] = field(default_factory=list)
    follow_up_hit: list[bool] = field(default_factory=list)
    follow_up_rr: list[float] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)


class Bench:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.llm_server: Any = None

    async def start(self) -> None:
        stack, args = self.stack, self.args
        providers: dict[str, dict[str, Any]] = {}
        if args.llm == "local":
            from services.devlaunch.llm_server import LocalLLMServer

            self.llm_server = LocalLLMServer(port=0)
            await self.llm_server.start()
            providers["local"] = {
                **provider(self.llm_server.base_url, LOCAL_MODEL, concurrency=1),
                "models": [LOCAL_MODEL],
                "context_window": 2048,
            }
            self.provider, self.model = "local", LOCAL_MODEL
        else:
            providers["fake"] = provider(await stack.fake_llm(0.0))
            self.provider, self.model = "fake", "fake-model"
        memory, retrieval, generation = await asyncio.gather(
            stack.memory(), stack.retrieval(), stack.generation(providers)
        )
        gateway = await stack.gateway(memory, retrieval, generation)
        channel = stack.channel(gateway)
        self.gateway = gw_grpc.GatewayServiceStub(channel)
        self.retrieval = ret_grpc.RetrievalServiceStub(channel)

    async def close(self) -> None:
        if self.llm_server is not None:
            await self.llm_server.stop()

    async def load(self, passages: list[corpus.Passage]) -> float:
        spec = to_proto(demo.collection_spec(self.provider, self.model), ret_pb.Collection)
        spec.name = COLLECTION
        await self.retrieval.CreateCollection(
            ret_pb.CreateCollectionRequest(collection=spec), timeout=60
        )
        started = time.perf_counter()
        for start in range(0, len(passages), 64):
            objects = []
            for passage in passages[start : start + 64]:
                props = struct_pb2.Struct()
                props.update(cast(dict[str, Any], passage.properties()))
                objects.append(ret_pb.DataObject(id=passage.id, properties=props))
            done = await self.retrieval.UpsertObjects(
                ret_pb.UpsertObjectsRequest(collection=COLLECTION, objects=objects), timeout=600
            )
            if done.errors:
                raise RuntimeError(f"import failed: {done.errors[0]}")
        return time.perf_counter() - started

    async def search(self, request: ret_pb.SearchRequest, depth: int) -> list[str]:
        request.collection = COLLECTION
        request.limit = depth
        request.return_properties[:] = ["topic", "part"]
        found = await self.retrieval.Search(request, timeout=120)
        return [passage_key(hit) for hit in found.hits]

    async def ask(self, question: str, conversation_id: str = "") -> gw_pb.AskResponse:
        return await self.gateway.Ask(
            gw_pb.AskRequest(
                collection=COLLECTION,
                llm_question=question,
                provider=self.provider,
                llm_model=self.model,
                conversation_id=conversation_id,
                new_conversation=not conversation_id,
                context_size=self.args.k,
                max_tokens=ASK_MAX_TOKENS,
                temperature=0.0,
                timeout=duration_pb2.Duration(seconds=ASK_TIMEOUT),
            ),
            timeout=ASK_TIMEOUT + 10,
        )

    # -- the measurements ------------------------------------------------------------------
    async def retrieval_scores(self, questions: list[Question]) -> dict[str, ModeScores]:
        scores: dict[str, ModeScores] = {}
        for name, mode in MODES.items():
            row = scores[name] = ModeScores()
            for q in questions:
                ranked = await mode(self, q.text, self.args.depth)
                row.recall.append(recall_at(ranked, q.relevant, self.args.k))
                row.mrr.append(reciprocal_rank(ranked, q.relevant))
        return scores

    async def follow_up_baselines(self, follow_ups: list[FollowUp]) -> dict[str, float]:
        """Follow-up hit@k without an LLM: hybrid over the follow-up as asked, and over the
        deterministic fallback query Ask uses when it rejects the model's rewrite."""
        queries: dict[str, Callable[[FollowUp], str]] = {
            "as asked": lambda f: f.follow_up,
            "fallback query": lambda f: fallback_query(f.follow_up, [Turn(f.first, "")]),
        }
        out: dict[str, float] = {}
        for name, query in queries.items():
            hits = []
            for f in follow_ups:
                ranked = await hybrid(self, query(f), self.args.k)
                hits.append(float(bool(set(ranked) & f.relevant)))
            out[name] = _mean(hits)
        return out

    async def ask_scores(self, questions: list[Question], follow_ups: list[FollowUp]) -> AskScores:
        scores = AskScores()
        for q in questions:
            answer = await self.ask(q.text)
            scores.coverage.append(answer.citation_coverage)
            cited = {passage_key(answer.hits[c.number - 1]) for c in answer.citations}
            scores.cites_relevant.append(bool(cited & q.relevant))
            log.info("answer to %r: %r", q.text, answer.answer[:300])
        for f in follow_ups:
            first = await self.ask(f.first)
            second = await self.ask(f.follow_up, first.conversation_id)
            method = gw_pb.RewriteMethod.Name(second.rewrite_method).removeprefix("REWRITE_METHOD_")
            if second.rewrite_method == gw_pb.REWRITE_METHOD_FALLBACK:
                reason = gw_pb.RewriteRejection.Name(second.rewrite_rejection)
                method += f" ({reason.removeprefix('REWRITE_REJECTION_')})"
            scores.methods[method] = scores.methods.get(method, 0) + 1
            ranked = [passage_key(hit) for hit in second.hits]
            scores.follow_up_hit.append(bool(set(ranked) & f.relevant))
            scores.follow_up_rr.append(reciprocal_rank(ranked, f.relevant))
            log.info(
                "follow-up %r -> %r (%s); top %s",
                f.follow_up,
                second.rewritten_query,
                method,
                ranked[:3],
            )
        return scores


log = logging.getLogger("bench.quality")


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


async def run(args: argparse.Namespace) -> None:
    questions, follow_ups = load_questions()
    questions = questions[: args.questions] if args.questions else questions
    follow_ups = follow_ups[: args.follow_ups] if args.follow_ups is not None else follow_ups
    wanted = [q.relevant for q in questions] + [f.relevant for f in follow_ups]
    topics = sorted({key.split(":")[0] for relevant in wanted for key in relevant})
    passages = corpus.passages(max_passages=args.passages or None, prefer=topics)
    figures = Figures()
    runs: dict[str, dict[str, list[float]]] = {}
    asked: list[AskScores] = []
    baselines: dict[str, float] = {}
    async with Stack() as stack:
        bench = Bench(stack, args)
        try:
            await bench.start()
            seconds = await bench.load(passages)
            print(f"{len(passages)} passages imported in {seconds:.1f}s; {machine()}")
            for _ in range(args.runs):
                for name, row in (await bench.retrieval_scores(questions)).items():
                    got = runs.setdefault(name, {"recall": [], "mrr": []})
                    got["recall"].append(_mean(row.recall))
                    got["mrr"].append(_mean(row.mrr))
            if follow_ups:
                baselines = await bench.follow_up_baselines(follow_ups)
            if args.llm != "none":
                ask_questions = questions[: args.ask_questions]
                asked.append(await bench.ask_scores(ask_questions, follow_ups))
        finally:
            await bench.close()

    k = args.k
    print(f"\nretrieval, {len(questions)} questions, {args.runs} run(s): median (range)")
    print(f"{'mode':<16} | {f'recall@{k}':>22} | {'MRR':>22}")
    for name, got in runs.items():
        recall, mrr = median_range(got["recall"], ".3f"), median_range(got["mrr"], ".3f")
        print(f"{name:<16} | {recall:>22} | {mrr:>22}")
        figures.add(f"quality {name} recall@{k}", statistics.median(got["recall"]), "")
        figures.add(f"quality {name} MRR", statistics.median(got["mrr"]), "")
    for name, value in baselines.items():
        print(f"follow-ups, hybrid over the {name}: relevant passage in the top {k} {value:.3f}")
        figures.add(f"quality follow-up hit@{k}, hybrid over the {name}", value, "")
    for scores in asked:
        coverage = _mean(scores.coverage)
        cites = _mean([float(x) for x in scores.cites_relevant])
        print(
            f"\nAsk ({bench.provider}/{bench.model}), {len(scores.coverage)} questions: "
            f"citation coverage {coverage:.3f}, answers citing a relevant passage {cites:.3f}"
        )
        figures.add(f"quality Ask citation coverage ({bench.provider})", coverage, "")
        figures.add(f"quality Ask answers citing a relevant passage ({bench.provider})", cites, "")
        if scores.follow_up_hit:
            hit = _mean([float(x) for x in scores.follow_up_hit])
            print(
                f"follow-ups, {len(scores.follow_up_hit)}: relevant passage in the top {k} "
                f"{hit:.3f}, MRR {_mean(scores.follow_up_rr):.3f}; rewrite methods "
                f"{dict(sorted(scores.methods.items()))}"
            )
            figures.add(f"quality Ask follow-up hit@{k} ({bench.provider})", hit, "")
    if args.summary:
        figures.emit()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--k", type=int, default=5, help="recall@k; Ask's context_size")
    parser.add_argument("--depth", type=int, default=20, help="hits retrieved for MRR")
    parser.add_argument(
        "--llm",
        choices=("local", "fake", "none"),
        default="local",
        help="the bundled model, the fake endpoint (plumbing only) or no Ask",
    )
    parser.add_argument("--passages", type=int, default=0, help="corpus cap (0: all)")
    parser.add_argument("--questions", type=int, default=0, help="first N questions (0: all)")
    parser.add_argument("--ask-questions", type=int, default=12, help="questions asked")
    parser.add_argument("--follow-ups", type=int, default=None, help="follow-ups (all)")
    parser.add_argument("--runs", type=int, default=1, help="retrieval runs (median, range)")
    parser.add_argument("--summary", action="store_true", help="figures as JSON, last line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if not args.summary else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
