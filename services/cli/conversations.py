"""``gensearch conversations list|show|delete`` (through the gateway's MemoryService)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime

from gensearch.client import Conversation

from services.cli import state
from services.cli.client import Client, int32
from services.cli.output import dump_json, message_dict, table

# Pages ``conversations list`` (without --all) reads for its first conversation. Memory
# bounds each page's work (page_size + 1 + 1,000 members read at most), so with its
# default limits (10,000 conversations a list) ten pages reach past all of the other
# owner's of a shared list; past them the command prints the token to go on from.
PAGES_FOR_ONE = 10


def add_arguments(parser: argparse.ArgumentParser, client_options: Callable[..., None]) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        client_options(p, suppress=True)
        return p

    list_ = action("list", "your conversations, most recently updated first")
    list_.add_argument("--page-size", type=int32, default=20)
    list_.add_argument("--page-token", default="", help="from a previous --json listing")
    list_.add_argument("--all", action="store_true", help="follow every page")

    show = action("show", "a conversation and its turns, oldest first")
    show.add_argument("conversation_id", metavar="ID")
    show.add_argument("--limit", type=int32, default=100, help="most recent turns shown")

    delete = action("delete", "delete a conversation and all its turns")
    delete.add_argument("conversation_id", metavar="ID")
    delete.add_argument("--state-dir", help=argparse.SUPPRESS)


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else ""


async def _list(
    client: Client, args: argparse.Namespace, timeout: float | None
) -> tuple[list[Conversation], str, int]:
    """The conversations of the pages read, the token after the last one ("" at the end)
    and how many pages were read: every page with ``--all``; else the first page that
    holds one, or the end, or PAGES_FOR_ONE pages. A page may be empty and still have a
    next_page_token (the other owner of a shared list filled all it read,
    docs/memory.md#legacy-owners): only an empty token ends the list."""
    found: list[Conversation] = []
    token = args.page_token
    read = 0
    while True:
        page, token = await client.conversations.page(
            page_size=args.page_size, page_token=token, timeout=timeout
        )
        read += 1
        found.extend(page)
        if not token:
            break
        if not args.all and (found or read >= PAGES_FOR_ONE):
            break
    return found, token, read


async def run(client: Client, args: argparse.Namespace) -> int:
    timeout = client.timeout(30.0)
    if args.action == "list":
        found, token, read = await _list(client, args, timeout)
        if args.json:
            dump_json(
                {
                    "conversations": [message_dict(c.raw) for c in found],
                    "next_page_token": token,
                }
            )
            return 0
        table(
            ["id", "name", "turns", "updated"],
            [(c.id, c.name, c.interaction_count, _when(c.update_time)) for c in found],
        )
        if token and not found:
            print(f"(none in the {read} pages read; more: --page-token {token}, or --all)")
        elif token:
            print(f"(more: --page-token {token}, or --all)")
        return 0

    if args.action == "delete":
        await client.conversations.delete(args.conversation_id, timeout=timeout)
        state.LastConversation(args.state_dir, client.conn.address, client.conn.api_key).clear(
            args.conversation_id
        )
        if args.json:
            dump_json({"deleted": args.conversation_id})
        else:
            print(f"deleted conversation {args.conversation_id}")
        return 0

    conv = await client.conversations.get(args.conversation_id, timeout=timeout)
    turns = await client.conversations.interactions(
        args.conversation_id, limit=args.limit, timeout=timeout
    )
    turns.reverse()  # the API lists newest first; a transcript reads oldest first
    if args.json:
        dump_json(
            {
                "conversation": message_dict(conv.raw),
                "interactions": [message_dict(t.raw) for t in turns],
            }
        )
        return 0
    print(f"conversation {conv.id}: {conv.name}")
    print(
        f"{conv.interaction_count} turn{'' if conv.interaction_count == 1 else 's'} · "
        f"created {_when(conv.create_time)} · "
        f"updated {_when(conv.update_time)}"
    )
    for turn in turns:
        print()
        print(f"[{_when(turn.create_time)}] you: {turn.input}")
        origin = f" ({turn.origin})" if turn.origin else ""
        print(f"answer{origin}: {turn.response.strip()}")
    if conv.interaction_count > len(turns):
        print(f"\n(older turns not shown: --limit {args.limit * 2})")
    return 0
