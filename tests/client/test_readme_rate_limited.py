"""The README's "A rate-limited provider" walk-through, run as written against a provider
that enforces a requests-per-minute limit.

The stack is started from the README's own lines (its ``export``s and its ``gensearch up``
flags) with the one change a loopback test needs: ``--llm-base-url`` points the ``openai``
preset at a fake OpenAI-compatible server (tests/support/fake_openai.py) that lets
``RATE_LIMIT`` chat requests through per window of ``RATE_WINDOW`` seconds and answers
the rest 429 with ``Retry-After`` (the time left in the window). The README declares 500
requests a minute, far more than the fake allows: exactly the "should the provider still
answer 429" case it describes. The grpcurl command is the README's, run by bash.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from gensearch.client import Gensearch

from services.cli import stack as stack_mod
from services.generation.rate_buckets import Bucket
from services.generation.settings import ProviderConfig
from tests.cli.conftest import STACK_ENV, LoopThread, up_args
from tests.client.test_readme import README, blocks, tool
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

RATE_LIMIT = 4  # chat requests the fake provider answers per window
RATE_WINDOW = 4.0  # seconds
HITS = 8


def rate_limited_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n### A rate-limited provider\n")
    return text[start : text.index("\n## ", start)]


def up_block() -> tuple[dict[str, str], list[str]]:
    """The README's exports and the flags of its ``gensearch up``."""
    script = blocks(rate_limited_section(), "sh")[0]
    env = dict(re.findall(r"^export (GENSEARCH_\w+)=(\S+)$", script, re.M))
    (up,) = re.findall(r"^gensearch up (.*)$", script, re.M)
    return env, shlex.split(up)


def search_command() -> str:
    (command,) = [b for b in blocks(rate_limited_section(), "sh") if "grpcurl" in b]
    return command


class Stack:
    def __init__(self, loop: LoopThread, fake: FakeOpenAI, stack: stack_mod.Stack) -> None:
        self.loop, self.fake, self.stack = loop, fake, stack

    def at_window_start(self) -> None:
        """Waits for the start of the fake's next rate window (it counts on this process's
        monotonic clock), so a search starts with the whole window's allowance."""
        left = RATE_WINDOW - time.monotonic() % RATE_WINDOW
        time.sleep(left + 0.05)

    async def _reset_fake(self) -> None:  # on the fake's own loop
        self.fake.reset_stats()

    def search(self, tmp_path: Path, *, timeout: str | None = None) -> dict[str, Any]:
        command = search_command().replace("localhost:50050", self.stack.gateway_address)
        if timeout is not None:
            command = command.replace('"timeout": "120s"', f'"timeout": "{timeout}"')
        script = "\n".join(
            [
                "set -euo pipefail",
                "KEY='authorization: Bearer alice-key'",  # as the README's earlier block
                "G=gensearch.gateway.v1.GatewayService",
                f'export PATH="{Path(tool("grpcurl")).parent}:$PATH"',
                command,
            ]
        )
        self.loop.run(self._reset_fake())
        self.at_window_start()
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        reply: dict[str, Any] = json.loads(done.stdout)
        return reply


@pytest.fixture(scope="module")
def rate_limited_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    readme_env, up_flags = up_block()
    assert readme_env == {
        "GENSEARCH_GENERATION_OPENAI_REQUESTS_PER_MINUTE": "500",
        "GENSEARCH_GENERATION_OPENAI_TOKENS_PER_MINUTE": "200000",
    }
    assert up_flags == ["--llm-provider", "openai"]
    loop = LoopThread()
    fake = FakeOpenAI(rate_limit=RATE_LIMIT, rate_window=RATE_WINDOW, models=("gpt-4o-mini",))
    loop.run(fake.start())
    data_dir = tmp_path_factory.mktemp("rate-limited") / "data"
    args = up_args(data_dir, llm_provider="openai", llm_base_url=fake.base_url)
    env = {**STACK_ENV, **readme_env, "OPENAI_API_KEY": "sk-test-rate-limited"}
    # For the stack's whole life, as in the shell that ran `gensearch up`: the provider's
    # key is read from the environment at each call.
    environment = mock.patch.dict(os.environ, env)
    environment.start()
    stack_mod._quiet_libraries()
    stack = loop.run(stack_mod.start(args))
    try:
        with Gensearch(stack.gateway_address) as client:
            books = client.collections.create(
                "Books", {"title": "text", "body": "text", "year": "int"}
            )
            books.data.import_(
                [
                    {"title": f"Space {i}", "body": f"A voyage through space, {i}.", "year": i}
                    for i in range(HITS)
                ]
            )
        yield Stack(loop, fake, stack)
    finally:
        loop.run(stack.close())
        loop.run(fake.stop())
        loop.close()
        environment.stop()


def seconds(generation: dict[str, Any]) -> float:
    """A result's wait_time (proto3 JSON: "7.412s"; left out when zero)."""
    return float(generation.get("wait_time", "0s").rstrip("s"))


def test_every_hit_is_answered_within_the_providers_limit(
    rate_limited_stack: Stack, tmp_path: Path
) -> None:
    reply = rate_limited_stack.search(tmp_path)
    fake = rate_limited_stack.fake
    generations = [hit["generation"] for hit in reply["hits"]]
    assert len(generations) == HITS
    assert all(g.get("result") and "error" not in g for g in generations), generations
    assert fake.rate_limited > 0, "the provider never answered 429: nothing was exercised"
    # The refused hits retried in their place, after the Retry-After: 2 attempts or more,
    # and a wait_time of at least some of the window.
    retried = [g for g in generations if int(g["attempts"]) >= 2]
    first = [g for g in generations if int(g["attempts"]) == 1]
    assert retried and first
    # Those the provider took at once waited less than any hit that waited out a 429's
    # pause (the README's "attempts": 1 and "attempts": 2 lines).
    assert min(seconds(g) for g in first) < min(seconds(g) for g in retried), generations
    # Each hit says what it cost: the upstream calls add up to what the provider saw.
    assert sum(int(g["upstream_calls"]) for g in generations) == len(fake.chat_requests)


def test_a_hit_whose_wait_outlasts_its_timeout_fails_alone_as_the_readme_says(
    rate_limited_stack: Stack, tmp_path: Path
) -> None:
    # A timeout shorter than the provider's window: the hits over its allowance cannot
    # wait for the next one.
    reply = rate_limited_stack.search(tmp_path, timeout="1.5s")
    generations = [hit["generation"] for hit in reply["hits"]]
    answered = [g for g in generations if "error" not in g]
    failed = [g["error"] for g in generations if "error" in g]
    assert answered and failed, generations  # the others keep their answers
    assert {e["status"] for e in failed} == {"RESOURCE_EXHAUSTED"}
    # Every reason a user sees is one the README's section names. Before, it named only
    # PROVIDER_LIMIT_WAIT, while the hits the provider itself refused with a Retry-After
    # beyond their timeout failed UPSTREAM_RATE_LIMITED.
    section = rate_limited_section()
    assert {e["reason"] for e in failed} <= set(re.findall(r"`([A-Z_]{6,})`", section))


def test_the_pace_the_readme_states_is_the_buckets() -> None:
    """ "50 at once, then 7.5 a second" is what the declared limits' requests bucket admits
    (services/generation/rate_buckets.py). Before, the README said the rest of a 100-hit
    search was "spread evenly over the minute": the 50 after the first 50 go in under 7 s."""
    env, _ = up_block()
    at_once, per_second = re.findall(
        r"\((\d+) at once, then ([\d.]+) a second", rate_limited_section()
    )[0]
    requests = Bucket.of(
        float(env["GENSEARCH_GENERATION_OPENAI_REQUESTS_PER_MINUTE"]),
        window=ProviderConfig.model_fields["rate_window"].default,
        burst=ProviderConfig.model_fields["rate_burst"].default,
    )
    assert requests is not None
    assert (float(at_once), float(per_second)) == (requests.capacity, requests.per_second)
