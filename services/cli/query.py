"""``gensearch search`` and ``gensearch ask``."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

from gensearch.client import types as t
from gensearch.client.errors import ConversationNotFoundError
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.protobuf import json_format

from services.cli import render, state
from services.cli.client import Client, CliError, UsageError, int32
from services.cli.output import dump_json, message_dict, note

OPERATORS = {name.removeprefix("OPERATOR_").lower(): value for name, value in rpb.Operator.items()}
GROUPS = ("all_of", "any_of", "none_of")


# --- arguments -----------------------------------------------------------------------------


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", "-c", required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--near-text", metavar="TEXT", help="dense search by the text's embedding")
    mode.add_argument("--keyword", metavar="TEXT", help="BM25 keyword search")
    mode.add_argument("--hybrid", metavar="TEXT", help="dense + BM25, fused")
    mode.add_argument("--near-vector", metavar="JSON", help="dense search by a vector: [0.1, ...]")
    parser.add_argument("--alpha", type=float, help="hybrid: weight of the dense side, 0..1")
    _filter_argument(parser)
    parser.add_argument("--limit", type=int32, default=5, help="hits (default 5)")
    parser.add_argument("--offset", type=int32, default=0)
    parser.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="NAME",
        help="property returned per hit (repeatable; default all)",
    )
    parser.add_argument("--single-prompt", metavar="TEMPLATE", help="per-hit prompt: '{text}'")
    parser.add_argument("--grouped-task", metavar="TASK", help="one prompt over all hits")
    parser.add_argument(
        "--grouped-property",
        action="append",
        default=[],
        metavar="NAME",
        help="property given to the grouped task (repeatable; default all)",
    )
    _llm_arguments(parser)
    parser.add_argument(
        "--max-concurrency", type=int32, default=0, help="per-hit LLM calls at once"
    )
    parser.add_argument("--stream", action="store_true", help="print results as they arrive")
    parser.add_argument("--debug", action="store_true", help="also show the prompts sent")


def add_ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--collection", "-c", required=True)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--conversation", metavar="ID", help="continue this conversation")
    which.add_argument("--new", action="store_true", help="start a new conversation")
    which.add_argument("--no-memory", action="store_true", help="answer without any conversation")
    parser.add_argument("--context-size", type=int32, help="hits given to the LLM (default 5)")
    parser.add_argument("--interaction-size", type=int32, help="past turns given (default 10)")
    parser.add_argument("--system-prompt", default="")
    parser.add_argument("--user-instructions", default="")
    parser.add_argument(
        "--context-field", action="append", default=[], metavar="NAME", help="(repeatable)"
    )
    _filter_argument(parser)
    parser.add_argument(
        "--no-rewrite", action="store_true", help="search with the question as asked"
    )
    _llm_arguments(parser)
    parser.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    parser.add_argument("--show-hits", action="store_true", help="also list the hits used")
    parser.add_argument(
        "--state-dir",
        help="where the last conversation id is kept "
        "(default: $GENSEARCH_STATE_DIR, else ~/.gensearch; the same for every command)",
    )


def _filter_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--filter",
        metavar="JSON",
        help='e.g. \'{"property": "year", "operator": "greater_than", "value": 2000}\'',
    )


def _llm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="", help="LLM provider (default: collection's)")
    parser.add_argument("--model", default="", help="LLM model (default: collection's)")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--max-tokens", type=int32)


# --- request building ------------------------------------------------------------------------


def parse_filter(text: str) -> rpb.Filter:
    """A Filter from JSON: the proto's JSON form, with short cuts.

    A bare condition (``{"property", "operator", "value"}``) needs no ``condition``
    wrapper, and operators may be written ``equal`` / ``greater_than`` / ``text_match``.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--filter is not valid JSON: {err.msg} at column {err.colno}") from None
    try:
        return json_format.ParseDict(_normalize_filter(value), rpb.Filter())
    except (json_format.ParseError, ValueError, TypeError) as err:
        raise UsageError(f"--filter: {err}") from None


def _normalize_filter(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("a filter is a JSON object")
    if "property" in value:
        value = {"condition": value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        if key == "condition" and isinstance(inner, dict):
            cond = dict(inner)
            op = cond.get("operator")
            if isinstance(op, str):
                short = op.lower().removeprefix("operator_")
                if short not in OPERATORS or short == "unspecified":
                    known = ", ".join(n for n in OPERATORS if n != "unspecified")
                    raise ValueError(f"unknown operator {op[:64]!r}: use one of {known}")
                cond["operator"] = rpb.Operator.Name(OPERATORS[short])
            out[key] = cond
        elif key in GROUPS or key in ("allOf", "anyOf", "noneOf"):
            filters = inner.get("filters", inner) if isinstance(inner, dict) else inner
            if not isinstance(filters, list):
                raise ValueError(f"{key} takes a list of filters")
            out[key] = {"filters": [_normalize_filter(f) for f in filters]}
        else:
            out[key] = inner
    return out


def parse_vector(text: str) -> list[float]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--near-vector is not valid JSON: {err.msg}") from None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        raise UsageError("--near-vector must be a JSON list of numbers, e.g. [0.1, 0.2]")
    return [float(x) for x in value]


def check_query(args: argparse.Namespace) -> None:
    if args.alpha is not None and args.hybrid is None:
        raise UsageError("--alpha only applies to --hybrid")


def run_query(searcher: Any, args: argparse.Namespace, **fields: Any) -> Any:
    """The chosen query (near_text, keyword, hybrid or near_vector) on ``searcher``
    (``collection.query``, ``.generate`` or ``.generate_stream``)."""
    if args.filter:
        fields["filter"] = parse_filter(args.filter)
    if args.near_text is not None:
        return searcher.near_text(args.near_text, **fields)
    if args.keyword is not None:
        return searcher.keyword(args.keyword, **fields)
    if args.hybrid is not None:
        return searcher.hybrid(args.hybrid, alpha=args.alpha, **fields)
    return searcher.near_vector(parse_vector(args.near_vector), **fields)


def generate_fields(args: argparse.Namespace, *, stream: bool) -> dict[str, Any] | None:
    """The Generate fields from the flags (None: plain search)."""
    if not args.single_prompt and not args.grouped_task:
        if args.grouped_property:
            raise UsageError("--grouped-property needs --grouped-task")
        return None
    return dict(
        single_prompt=args.single_prompt or "",
        grouped_task=args.grouped_task or "",
        grouped_properties=args.grouped_property,
        provider=args.provider,
        model=args.model,
        max_concurrency=args.max_concurrency,
        debug=args.debug,
        stream_tokens=stream,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )


# --- search ----------------------------------------------------------------------------------


async def search(client: Client, args: argparse.Namespace) -> int:
    check_query(args)
    generate = generate_fields(args, stream=args.stream)
    collection = client.collections.get(args.collection)
    # Property types: integers print as integers; table columns follow the schema.
    types = await collection.property_types()
    common: dict[str, Any] = dict(
        limit=args.limit,
        offset=args.offset,
        return_properties=args.property,
        timeout=client.timeout(None if generate else 30.0),
    )
    if args.stream:
        events = run_query(collection.generate_stream, args, **common, **(generate or {}))
        if args.json:
            async for event in events:
                dump_json(message_dict(event.raw, types), line=True)
            return 0
        await render.stream_search(events, per_hit=bool(args.single_prompt))
        return 0
    if generate is None:
        found = await run_query(collection.query, args, **common)
        if args.json:
            dump_json(message_dict(found.raw, types))
        else:
            render.hits_table(found.hits, args.property or list(types))
        return 0
    generated = await run_query(collection.generate, args, **common, **generate)
    if args.json:
        dump_json(message_dict(generated.raw, types))
    else:
        render.generative(generated)
    return 0


# --- ask -------------------------------------------------------------------------------------


def _ask_fields(args: argparse.Namespace, conversation_id: str, new: bool) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        llm_model=args.model,
        provider=args.provider,
        conversation_id=conversation_id,
        new_conversation=new,
        system_prompt=args.system_prompt,
        user_instructions=args.user_instructions,
        context_field_list=args.context_field,
        context_size=args.context_size,
        interaction_size=args.interaction_size,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )
    if args.no_rewrite:
        fields["rewrite_query"] = False
    if args.filter:
        fields["filter"] = parse_filter(args.filter)
    if args.timeout is not None:
        fields["answer_timeout"] = timedelta(seconds=args.timeout)
    # The server enforces the Ask budget (30 s unless --timeout); the channel deadline
    # leaves it room to answer with its own DEADLINE_EXCEEDED.
    fields["timeout"] = args.timeout + 5 if args.timeout is not None else None
    return fields


async def ask(client: Client, args: argparse.Namespace) -> int:
    store = state.LastConversation(args.state_dir, client.conn.address)
    remembered = ""
    if args.conversation:
        conversation_id, new = args.conversation, False
    elif args.new or args.no_memory:
        conversation_id, new = "", args.new
    else:
        remembered = store.get()
        conversation_id, new = remembered, not remembered
    try:
        answer = await _ask_once(client, args, conversation_id, new)
    except ConversationNotFoundError:
        if not remembered:
            raise
        # The remembered conversation was deleted (or belongs to another server or user);
        # any other NOT_FOUND (a mistyped collection) leaves it remembered.
        note(f"(conversation {remembered} is gone; starting a new one)")
        store.clear()
        answer = await _ask_once(client, args, "", True)
    if answer.conversation_id:
        store.set(answer.conversation_id)
    return 0


async def _ask_once(
    client: Client, args: argparse.Namespace, conversation_id: str, new: bool
) -> t.Answer:
    collection = client.collections.get(args.collection)
    types = await collection.property_types()
    fields = _ask_fields(args, conversation_id, new)
    if args.stream:
        events = collection.ask_stream(args.question, **fields)
        final: t.Answer | None = None
        if args.json:
            async for event in events:
                dump_json(message_dict(event.raw, types), line=True)
                if isinstance(event, t.AnswerEvent):
                    final = event.answer
        else:
            final = await render.stream_ask(events, show_hits=args.show_hits)
        if final is None:
            raise CliError("the answer stream ended without an answer")
        return final
    reply = await collection.ask(args.question, **fields)
    if args.json:
        dump_json(message_dict(reply.raw, types))
    else:
        render.answer(reply, show_hits=args.show_hits)
    return reply
