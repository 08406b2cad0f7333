"""The benchmarks still run: each starts the services as deployed (bench/stack.py: one
process per service, configured by environment) and prints its headline figures. Tiny
sizes, so a renamed setting or a changed RPC fails here rather than in the next
``make bench``."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from bench.report import Figure, parse_figures
from tests.support.processes import owned_ports_known

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


async def run_bench(bench: str, *args: str) -> str:
    """What ``bench/<bench>.py`` printed, run with ``args``; it must succeed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / f"{bench}.py"),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


async def summary(bench: str, *args: str) -> dict[str, Figure]:
    return {f.name: f for f in parse_figures(await run_bench(bench, "--summary", *args))}


async def test_fanout_measures_the_gateway_beside_its_floor() -> None:
    text = await run_bench(
        "fanout", "--summary", "--latency", "0.05", "--sizes", "3,40", "--repeat", "1",
        "--rounds", "20", "--token-rounds", "3",
    )  # fmt: skip
    figures = {f.name: f for f in parse_figures(text)}
    fanout = [f for name, f in figures.items() if name.startswith("fan-out")]
    # N = 3 and 40 through the gateway at its defaults (no cap), through a second gateway
    # in front of 2 generation replicas (the default), and beside gather.
    assert len(fanout) == 6, sorted(figures)
    assert figures["fan-out N=40, 2 generation replicas / L"].target == "≤ 1.3 x L"
    cpu = [f for name, f in figures.items() if name.startswith("CPU per hit")]
    assert len(cpu) == 5 and all(f.value > 0 and f.unit == "ms" for f in cpu), cpu
    replicas = {"generation replica 1", "generation replica 2"}
    per_replica = {f"CPU per hit at N=100, 2 generation replicas, {r}" for r in replicas}
    assert per_replica <= {f.name for f in cpu}, cpu
    # Each replica (127.0.0.1 and 127.0.0.2 on one port, one ipv4: target) made LLM
    # requests for those hits, one a hit between them: the gateway's round robin reached
    # both (CPU alone would not show it: an idle process spends some too).
    if owned_ports_known():  # each replica's metrics port is read back from /proc
        line = re.search(
            r"^LLM requests per generation replica over those (\d+) hits: (.*)$", text, re.M
        )
        assert line, text
        made = {name: int(n) for name, n in (p.rsplit(" ", 1) for p in line[2].split(", "))}
        assert set(made) == replicas and all(n > 0 for n in made.values()), line[0]
        assert sum(made.values()) == int(line[1]), line[0]
    # Every answer waits at least 0.9 x L, so nothing finishes sooner: a ratio below that
    # would mean the calls never reached the fake endpoint.
    assert all(f.value >= 0.9 and f.unit == "x L" for f in fanout), fanout
    overhead = figures["gateway overhead p50, search without generation"]
    first = figures["first token through StreamGenerativeSearch p50"]
    assert overhead.unit == first.unit == "ms"
    assert 0 < first.value < 1000


async def test_fanout_spreads_hits_over_the_generation_replicas_asked_for() -> None:
    """--generation-replicas 3: three replicas, the column named by their number, each
    replica doing part of the hits; 0 leaves the column and its CPU figures out."""
    figures = await summary(
        "fanout", "--latency", "0.05", "--sizes", "2", "--repeat", "1", "--rounds", "5",
        "--token-rounds", "1", "--generation-replicas", "3",
    )  # fmt: skip
    assert figures["fan-out N=2, 3 generation replicas / L"].value >= 0.9
    for replica in (1, 2, 3):
        name = f"CPU per hit at N=100, 3 generation replicas, generation replica {replica}"
        assert figures[name].value > 0, figures[name]
    figures = await summary(
        "fanout", "--latency", "0.05", "--sizes", "2", "--repeat", "1", "--rounds", "5",
        "--token-rounds", "1", "--generation-replicas", "0",
    )  # fmt: skip
    assert not [name for name in figures if "replica" in name], sorted(figures)


async def test_rate_limits_keeps_two_gateways_within_the_providers_limit() -> None:
    text = await run_bench(
        "rate_limits", "--hits", "20", "--rpm", "600", "--window", "1", "--repeat", "1"
    )
    assert "20 hits, 0 failed" in text and "refused 0" in text, text
    assert "pool of 10, no retries" in text


async def test_retrieval_times_grpc_beside_the_engine() -> None:
    figures = await summary("retrieval", "--sizes", "300", "--queries", "20")
    assert figures["import with client vectors (300 x 384 dims)"].value > 0
    over = figures["retrieval Search over the engine p50 (300 x 384 dims)"]
    assert over.unit == "ms" and over.target


async def test_filters_times_filtered_calls_with_and_without_payload_indexes() -> None:
    text = await run_bench("filters", "--objects", "2000", "--queries", "3", "--dim", "8")
    # Six filters, a count and a search each (the bench checks both copies count alike),
    # then two of them again on a full-text index in place of the keyword one.
    assert text.count(" | count  | ") == text.count(" | search | ") == 6 + 2, text
    assert text.count(" | full-text ") == 4, text
    assert "the 6 missing indexes were built after it" in text, text


async def test_cache_bench_serves_repeats_from_the_cache() -> None:
    figures = await summary("cache", "--rounds", "5", "--latency", "0.05")
    assert figures["cached 10-hit GenerativeSearch p50"].value > 0


async def test_memory_bench_runs_the_service_beside_its_floors() -> None:
    """bench/memory.py runs the store's own create script through redis-py as its floor,
    with the store's arguments: a change to the script's arguments must reach it too."""
    figures = await summary(
        "memory", "--rounds", "1", "--slice", "0.2", "--in-flight", "1", "--modes", "standalone"
    )
    assert figures["CreateInteraction standalone x1"].value > 0
    assert figures["CreateInteraction standalone x1 / redis-py"].value > 0


async def test_memory_by_conversation_length_runs() -> None:
    """With --versus, a second memory service (here of this same checkout) is timed in
    the same rounds."""
    text = await run_bench("memory_ask", "--rounds", "1", "--asks", "2", "--versus", str(ROOT))
    for row in (
        "Ask, 2-turn",
        "Ask, 200-turn",
        "memory per turn, 200-turn conv.",
        "memory per turn, 200-turn, versus",
    ):
        assert row in text, text


async def test_quality_reports_every_retrieval_mode_and_ask() -> None:
    """bench/quality.py on a few passages and questions, the fake LLM standing in for the
    bundled model (the plumbing of the Ask figures, not their values)."""
    from bench.quality import MODES

    figures = await summary(
        "quality", "--llm", "fake", "--passages", "40", "--questions", "6",
        "--ask-questions", "2", "--follow-ups", "1",
    )  # fmt: skip
    for mode in MODES:
        recall, mrr = figures[f"quality {mode} recall@5"], figures[f"quality {mode} MRR"]
        assert 0 <= mrr.value <= 1 and 0 <= recall.value <= 1
    # Six questions about single passages on a 40-passage corpus: keyword search finds
    # most; a broken metric or a search returning nothing shows as 0.
    assert figures["quality keyword recall@5"].value > 0.5
    assert 0 <= figures["quality Ask citation coverage (fake)"].value <= 1
    assert figures["quality Ask follow-up hit@5 (fake)"].value in (0.0, 1.0)


async def test_rss_measures_every_service_under_each_load_with_bounds_and_without(
    tmp_path: Path,
) -> None:
    """bench/rss.py at tiny sizes: every load runs against a stack with the bounds at their
    defaults and one with them lifted, and each service it goes through gets its figures."""
    from bench.rss import LOADS

    out = tmp_path / "rss.json"
    text = await run_bench(
        "rss", "--clients", "3", "--request-mb", "0.2", "--turn-mb", "0.1", "--reads", "2",
        "--objects", "2", "--object-mb", "0.1", "--searches", "2", "--hits", "2",
        "--hit-mb", "0.05", "--answer-mb", "0.05", "--latency", "0.05", "--settle", "0.2",
        "--tenants", "2", "--stall", "0.5", "--json", str(out), "--summary",
    )  # fmt: skip
    rows = json.loads(out.read_text())["runs"][0]
    seen = {(r["load"], r["config"]) for r in rows}
    assert seen == {(load, c) for load in LOADS for c in ("defaults", "lifted")}, seen
    for row in rows:
        assert row["peak"] >= row["idle"] > 0 and row["peak_anon"] > 0, row
        assert row["allowed"] <= row["demand"], row
    # Tiny loads pass every bound: each call answered, and every service the load goes
    # through was sent bytes (GenerativeSearch: gateway, retrieval and generation).
    calls = {"UpsertObjects": 3, "CreateInteraction": 3}
    for row in rows:
        assert row["ends"] == {"OK": calls.get(row["load"], 2)}, row
    sent = {r["service"] for r in rows if r["load"] == "GenerativeSearch" and r["demand"]}
    assert sent == {"gateway", "retrieval", "generation"}
    figures = {f.name: f for f in parse_figures(text)}
    assert figures["UpsertObjects retrieval defaults peak RSS"].value > 0
    assert figures["CreateInteraction memory lifted peak RSS"].unit == "MiB"


async def test_inline_objects_reports_the_call_and_the_loops_longest_turn() -> None:
    text = await run_bench("inline_objects", "--runs", "1", "--objects", "3", "--values", "50")
    assert "3 objects x 50 booleans" in text, text
    assert "whole call, median of 1:" in text and "longest loop turn, median of 1:" in text
    assert "answered: served" in text, text
    text = await run_bench("inline_objects", "--runs", "1", "--objects", "2", "--empty")
    assert "kind-less Values" in text, text
