"""The README's generation walk-throughs show what they say, run as written with grpcurl
against the real stack (the fake LLM behind the ``local`` preset): a fallback chain names
the pair that answered, a JSON-schema extraction returns each hit's answer parsed beside
its text, a repeated cached search answers every hit from the cache (and a repeated Ask
from the semantic cache), and generation over named objects answers each object and the
group.

test_readme.py runs the same blocks top to bottom and checks that they run; this module
reads their replies. The one change is the address, as there; the setup (``KEY``, ``R``,
``G``, the Books collection) is the README's own blocks before them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from gensearch.client import Gensearch

from tests.cli.conftest import RunningStack
from tests.client.test_readme import README, blocks, tool

# A reply to a prompt of the JSON-schema walk-through: "Extract the title and year as
# JSON: Dune (1965). A desert planet ..." -> the JSON a model would give.
EXTRACT = re.compile(r"JSON: (?P<title>.+?) \((?P<year>\d+)\)\.")


def subsection(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    ends = [i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i > 0]
    return text[start : min(ends)]


def replies(out: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed, in order."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := out.find("{", at)) >= 0:
        value, at = decoder.raw_decode(out, at)
        found.append(value)
    return found


def answer_like_a_model(body: dict[str, Any]) -> str:
    prompt = body["messages"][-1]["content"]
    extract = EXTRACT.search(prompt) if body.get("response_format") else None
    if extract:
        return json.dumps({"title": extract["title"], "year": int(extract["year"])})
    return f"An answer to: {prompt}"


class Shell:
    def __init__(self, running_stack: RunningStack, cwd: Path) -> None:
        self.address, self.cwd = running_stack.address, cwd
        setup = [
            *blocks(subsection("Tenants, users and roles"), "sh"),
            *blocks(subsection("Collections, import and search (retrieval)"), "sh"),
        ]
        (generative,) = blocks(
            subsection("Generative search: per object and grouped (gateway)"), "sh"
        )
        self.prelude = "\n".join(
            [
                "set -euo pipefail",
                f'export PATH="{Path(tool("grpcurl")).parent}:{Path(tool("jq")).parent}:$PATH"',
                *[line for line in "\n".join(setup).splitlines() if re.match(r"^[A-Z]+=", line)],
                *[line for line in generative.splitlines() if re.match(r"^[A-Z]+=", line)],
            ]
        )
        self.setup = "\n".join(setup)

    def run(self, script: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            ["bash", "-c", f"{self.prelude}\n{script.replace('localhost:50050', self.address)}"],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=self.cwd,
        )
        assert done.returncode == 0, (
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
        return replies(done.stdout)


def test_the_generation_walk_throughs_show_what_they_say(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    with Gensearch(running_stack.address) as client:
        if client.collections.exists("Books"):  # another test's Books
            client.collections.delete("Books")
    shell = Shell(running_stack, tmp_path)
    shell.run(shell.setup)
    fake = running_stack.fake
    before = fake.reply
    fake.reply = answer_like_a_model
    try:
        # A fallback chain: both Anyscale models unreachable (no network), local answered.
        (chain,) = shell.run(blocks(subsection("A fallback chain"), "sh")[0])
        for hit in chain["hits"]:
            generation = hit["generation"]
            assert generation["result"].startswith("An answer to: Summarise ")
            assert (generation["provider"], generation["fallback_index"]) == ("local", 2)

        # JSON-schema extraction: each hit's answer parsed beside its text.
        (extraction,) = shell.run(blocks(subsection("JSON-schema extraction per hit"), "sh")[0])
        assert len(extraction["hits"]) == 3
        for hit in extraction["hits"]:
            properties, generation = hit["hit"]["properties"], hit["generation"]
            expected = {"title": properties["title"], "year": properties["year"]}
            assert generation["structured"] == expected, generation
            assert json.loads(generation["result"]) == expected

        # A cached search, the semantic cache and named objects, twice over.
        (block,) = blocks(
            subsection("A cached search and generation over named objects (gateway)"), "sh"
        )
        calls = len(fake.chat_requests)
        first = shell.run(block)
        made_first = len(fake.chat_requests) - calls
        second = shell.run(block)
        made_second = len(fake.chat_requests) - calls - made_first
    finally:
        fake.reply = before
    search, ask, by_ids, inline = first
    cached_search, cached_ask, by_ids_again, inline_again = second
    assert not any(h["generation"].get("cached") for h in search["hits"])
    assert len(cached_search["hits"]) == len(search["hits"]) == 5
    for fresh, cached in zip(search["hits"], cached_search["hits"], strict=True):
        assert cached["generation"]["cached"] is True
        assert cached["generation"]["result"] == fresh["generation"]["result"]
        assert "usage" not in cached["generation"]
    assert not ask.get("cached")
    assert cached_ask["cached"] is True and cached_ask["answer"] == ask["answer"]
    assert cached_ask["cached_question"] == "Which novel takes place on a desert planet?"
    # Named objects: by id, each object and the group answered; inline, each object.
    for reply in (by_ids, by_ids_again):
        assert [h["generation"]["result"].split(": ", 1)[1] for h in reply["hits"]] == [
            f"Summarise {h['hit']['properties']['title']}: {h['hit']['properties']['body']}"
            for h in reply["hits"]
        ]
        assert len(reply["hits"]) == 2 and reply["grouped"]["result"]
    for reply in (inline, inline_again):
        assert [h["generation"]["result"] for h in reply["hits"]] == [
            "An answer to: A menu line for tea at 3 EUR",
            "An answer to: A menu line for cake at 4.5 EUR",
        ]
    # The second run called the LLM for the uncached named objects alone (2 + grouped, 2).
    assert made_second == 5 < made_first
