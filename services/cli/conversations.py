"""``gensearch conversations list|show|delete`` (through the gateway's MemoryService)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gensearch.memory.v1 import memory_service_pb2 as mpb
from google.protobuf import timestamp_pb2

from services.cli import state
from services.cli.client import Client
from services.cli.output import dump_json, message_dict, table


def add_arguments(parser: argparse.ArgumentParser, client_options: Callable[..., None]) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        client_options(p, suppress=True)
        return p

    list_ = action("list", "your conversations, most recently updated first")
    list_.add_argument("--page-size", type=int, default=20)
    list_.add_argument("--page-token", default="", help="from a previous --json listing")
    list_.add_argument("--all", action="store_true", help="follow every page")

    show = action("show", "a conversation and its turns, oldest first")
    show.add_argument("conversation_id", metavar="ID")
    show.add_argument("--limit", type=int, default=100, help="most recent turns shown")

    delete = action("delete", "delete a conversation and all its turns")
    delete.add_argument("conversation_id", metavar="ID")
    delete.add_argument("--state-dir", help=argparse.SUPPRESS)


def _when(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


async def run(client: Client, args: argparse.Namespace) -> int:
    timeout = client.timeout(30.0)
    md = client.metadata
    if args.action == "list":
        found: list[mpb.Conversation] = []
        token = args.page_token
        while True:
            page = await client.memory.ListConversations(
                mpb.ListConversationsRequest(page_size=args.page_size, page_token=token),
                metadata=md,
                timeout=timeout,
            )
            found.extend(page.conversations)
            token = page.next_page_token
            if not token or not args.all:
                break
        if args.json:
            dump_json(
                {
                    "conversations": [message_dict(c) for c in found],
                    "next_page_token": token,
                }
            )
            return 0
        table(
            ["id", "name", "turns", "updated"],
            [(c.conversation_id, c.name, c.interaction_count, _when(c.update_time)) for c in found],
        )
        if token:
            print(f"(more: --page-token {token}, or --all)")
        return 0

    if args.action == "delete":
        await client.memory.DeleteConversation(
            mpb.DeleteConversationRequest(conversation_id=args.conversation_id),
            metadata=md,
            timeout=timeout,
        )
        state.LastConversation(args.state_dir, client.conn.address).clear(args.conversation_id)
        if args.json:
            dump_json({"deleted": args.conversation_id})
        else:
            print(f"deleted conversation {args.conversation_id}")
        return 0

    got = await client.memory.GetConversation(
        mpb.GetConversationRequest(conversation_id=args.conversation_id),
        metadata=md,
        timeout=timeout,
    )
    turns: list[mpb.Interaction] = []
    token = ""
    while len(turns) < args.limit:
        page = await client.memory.ListInteractions(
            mpb.ListInteractionsRequest(
                conversation_id=args.conversation_id,
                page_size=min(100, args.limit - len(turns)),
                page_token=token,
            ),
            metadata=md,
            timeout=timeout,
        )
        turns.extend(page.interactions)
        token = page.next_page_token
        if not token:
            break
    turns.reverse()  # the API lists newest first; a transcript reads oldest first
    conv = got.conversation
    if args.json:
        dump_json(
            {
                "conversation": message_dict(conv),
                "interactions": [message_dict(t) for t in turns],
            }
        )
        return 0
    print(f"conversation {conv.conversation_id}: {conv.name}")
    print(
        f"{conv.interaction_count} turns · created {_when(conv.create_time)} · "
        f"updated {_when(conv.update_time)}"
    )
    for turn in turns:
        print()
        print(f"[{_when(turn.create_time)}] you: {turn.input}")
        origin = f" ({turn.origin})" if turn.origin else ""
        print(f"answer{origin}: {turn.response.strip()}")
    if token:
        print(f"\n(older turns not shown: --limit {args.limit * 2})")
    return 0
