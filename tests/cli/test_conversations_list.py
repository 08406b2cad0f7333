"""``gensearch conversations list`` of an owner whose first pages are empty, each with a
next_page_token (the other legacy owner of a shared list fills all they read,
docs/memory.md#legacy-owners): only an empty token is the end, so the command reads on to
the first page holding a conversation, a bounded number of pages; ``status`` probes memory
with one page."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.cli import conversations
from tests.cli.conftest import Gateway, Result, SharedList


def listing(cli: Any, gateway: Gateway, *args: str) -> Result:
    """``gensearch conversations list ARGS`` through ``gateway`` with its key."""
    result: Result = cli(
        "--api-key", gateway.api_key, "conversations", "list", *args, address=gateway.address
    )
    assert result.code == 0, result.err
    return result


def ids(result: Result) -> list[str]:
    return [c["conversation_id"] for c in json.loads(result.out)["conversations"]]


def test_list_reads_past_empty_pages_to_the_first_conversation(
    cli: Any, shared_list: SharedList
) -> None:
    # page_size 1: a page reads 4 members, so her first five pages are empty. Before, the
    # command printed the first: "(none)" and "(more: --page-token …)".
    listed = listing(cli, shared_list.legacy, "--page-size", "1")
    assert shared_list.legacy_id in listed.out
    assert "(none" not in listed.out and "more:" not in listed.out  # hers is the last

    as_json = listing(cli, shared_list.legacy, "--page-size", "1", "--json")
    assert ids(as_json) == [shared_list.legacy_id]
    assert json.loads(as_json.out)["next_page_token"] == ""


def test_list_stops_after_a_few_empty_pages_with_the_token_to_go_on(
    cli: Any, shared_list: SharedList, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversations, "PAGES_FOR_ONE", 2)  # 8 of the other's 20 read
    report = json.loads(listing(cli, shared_list.legacy, "--page-size", "1", "--json").out)
    assert report["conversations"] == [] and report["next_page_token"]

    listed = listing(cli, shared_list.legacy, "--page-size", "1")
    assert listed.out.splitlines()[0] == "(none)"
    hint = listed.out.splitlines()[-1]
    assert hint.startswith("(none in the 2 pages read; more: --page-token "), listed.out
    token = hint.split("--page-token ")[1].split(",")[0]

    # Going on from that token reaches hers (four pages more), and --all from the top.
    monkeypatch.setattr(conversations, "PAGES_FOR_ONE", 4)
    more = listing(cli, shared_list.legacy, "--page-size", "1", "--page-token", token, "--json")
    assert ids(more) == [shared_list.legacy_id]
    every = listing(cli, shared_list.legacy, "--page-size", "1", "--all", "--json")
    assert ids(every) == [shared_list.legacy_id]


def test_a_page_holding_conversations_ends_the_listing(cli: Any, shared_list: SharedList) -> None:
    # The other owner's first page is full: shown alone, with the token for the rest.
    newest = shared_list.theirs[::-1]
    first = listing(cli, shared_list.other, "--page-size", "5", "--json")
    assert ids(first) == newest[:5] and json.loads(first.out)["next_page_token"]
    assert "(more: --page-token " in listing(cli, shared_list.other, "--page-size", "5").out
    assert ids(listing(cli, shared_list.other, "--page-size", "5", "--all", "--json")) == newest


def list_conversations_calls() -> float:
    """ListConversations calls served in this process (the stack's gateway and memory
    count each of theirs in one series)."""
    labels = {
        "grpc_type": "unary",
        "grpc_service": "gensearch.memory.v1.MemoryService",
        "grpc_method": "ListConversations",
    }
    return REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0.0


def test_status_probes_memory_with_one_page(cli: Any, shared_list: SharedList) -> None:
    # Her conversations list starts with empty pages: status read on to her first one
    # (conversations.list(limit=1, page_size=1), six pages) to learn that memory answers.
    before = list_conversations_calls()
    gateway = shared_list.legacy
    result = cli("--api-key", gateway.api_key, "status", address=gateway.address)
    assert result.code == 0, result.out + result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert "SERVING" in rows["memory"] and "via" in rows["memory"], result.out
    # One call, counted by the gateway and by memory.
    assert 0 < list_conversations_calls() - before <= 2
