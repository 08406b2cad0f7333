"""``gensearch search`` and ``gensearch ask``."""

from __future__ import annotations

import argparse
import json
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gpb
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.protobuf import duration_pb2, json_format

from services.cli import render, state
from services.cli.client import Client, CliError
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
    parser.add_argument("--limit", type=int, default=5, help="hits (default 5)")
    parser.add_argument("--offset", type=int, default=0)
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
    parser.add_argument("--max-concurrency", type=int, default=0, help="per-hit LLM calls at once")
    parser.add_argument("--stream", action="store_true", help="print results as they arrive")
    parser.add_argument("--debug", action="store_true", help="also show the prompts sent")


def add_ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--collection", "-c", required=True)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--conversation", metavar="ID", help="continue this conversation")
    which.add_argument("--new", action="store_true", help="start a new conversation")
    which.add_argument("--no-memory", action="store_true", help="answer without any conversation")
    parser.add_argument("--context-size", type=int, help="hits given to the LLM (default 5)")
    parser.add_argument("--interaction-size", type=int, help="past turns given (default 10)")
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
        "(default: $GENSEARCH_STATE_DIR, else $GENSEARCH_DATA_DIR, else ~/.gensearch)",
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
    parser.add_argument("--max-tokens", type=int)


# --- request building ------------------------------------------------------------------------


def parse_filter(text: str) -> rpb.Filter:
    """A Filter from JSON: the proto's JSON form, with short cuts.

    A bare condition (``{"property", "operator", "value"}``) needs no ``condition``
    wrapper, and operators may be written ``equal`` / ``greater_than`` / ``text_match``.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"--filter is not valid JSON: {err.msg} at column {err.colno}") from None
    try:
        return json_format.ParseDict(_normalize_filter(value), rpb.Filter())
    except (json_format.ParseError, ValueError, TypeError) as err:
        raise CliError(f"--filter: {err}") from None


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
            if isinstance(op, str) and op.lower().removeprefix("operator_") in OPERATORS:
                cond["operator"] = rpb.Operator.Name(
                    OPERATORS[op.lower().removeprefix("operator_")]
                )
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
        raise CliError(f"--near-vector is not valid JSON: {err.msg}") from None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        raise CliError("--near-vector must be a JSON list of numbers, e.g. [0.1, 0.2]")
    return [float(x) for x in value]


def query_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The oneof query and the common search fields, as request keyword arguments."""
    fields: dict[str, Any] = {}
    if args.alpha is not None and args.hybrid is None:
        raise CliError("--alpha only applies to --hybrid")
    if args.near_text is not None:
        fields["near_text"] = rpb.NearText(text=args.near_text)
    elif args.keyword is not None:
        fields["keyword"] = rpb.Keyword(text=args.keyword)
    elif args.hybrid is not None:
        hybrid = rpb.Hybrid(text=args.hybrid)
        if args.alpha is not None:
            hybrid.alpha = args.alpha
        fields["hybrid"] = hybrid
    else:
        fields["near_vector"] = rpb.NearVector(vector=parse_vector(args.near_vector))
    if args.filter:
        fields["filter"] = parse_filter(args.filter)
    return fields


def build_generate(args: argparse.Namespace, *, stream: bool) -> gpb.Generate | None:
    if not args.single_prompt and not args.grouped_task:
        if args.grouped_property:
            raise CliError("--grouped-property needs --grouped-task")
        return None
    gen = gpb.Generate(
        single_prompt=args.single_prompt or "",
        grouped_task=args.grouped_task or "",
        grouped_properties=args.grouped_property,
        provider=args.provider,
        model=args.model,
        max_concurrency=args.max_concurrency,
        debug=args.debug,
        stream_tokens=stream,
    )
    if args.temperature is not None:
        gen.temperature = args.temperature
    if args.max_tokens is not None:
        gen.max_tokens = args.max_tokens
    return gen


# --- search ----------------------------------------------------------------------------------


async def search(client: Client, args: argparse.Namespace) -> int:
    fields = query_fields(args)
    common = dict(
        collection=args.collection,
        limit=args.limit,
        offset=args.offset,
        return_properties=args.property,
        **fields,
    )
    generate = build_generate(args, stream=args.stream)
    timeout = client.timeout(None if generate else 30.0)
    if args.stream:
        request = gpb.StreamGenerativeSearchRequest(**common)
        if generate is not None:
            request.generate.CopyFrom(generate)
        call = client.gateway.StreamGenerativeSearch(
            request, metadata=client.metadata, timeout=timeout
        )
        if args.json:
            async for event in call:
                dump_json(message_dict(event), line=True)
            return 0
        await render.stream_search(call, per_hit=bool(args.single_prompt))
        return 0
    if generate is None:
        reply = await client.retrieval.Search(
            rpb.SearchRequest(**common), metadata=client.metadata, timeout=timeout
        )
        if args.json:
            dump_json(message_dict(reply))
        else:
            render.hits_table(reply.hits)
        return 0
    gen_reply = await client.gateway.GenerativeSearch(
        gpb.GenerativeSearchRequest(generate=generate, **common),
        metadata=client.metadata,
        timeout=timeout,
    )
    if args.json:
        dump_json(message_dict(gen_reply))
    else:
        render.generative(gen_reply)
    return 0


# --- ask -------------------------------------------------------------------------------------


def _ask_fields(args: argparse.Namespace, conversation_id: str, new: bool) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        collection=args.collection,
        llm_question=args.question,
        llm_model=args.model,
        provider=args.provider,
        conversation_id=conversation_id,
        new_conversation=new,
        system_prompt=args.system_prompt,
        user_instructions=args.user_instructions,
        context_field_list=args.context_field,
    )
    for name in ("context_size", "interaction_size", "temperature", "max_tokens"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.no_rewrite:
        fields["rewrite_query"] = False
    if args.filter:
        fields["filter"] = parse_filter(args.filter)
    if args.timeout is not None:
        fields["timeout"] = duration_pb2.Duration(
            seconds=int(args.timeout), nanos=int((args.timeout % 1) * 1e9)
        )
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
    except grpc.aio.AioRpcError as err:
        if not remembered or err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        # The remembered conversation was deleted (or belongs to another server or user).
        note(f"(conversation {remembered} is gone; starting a new one)")
        store.clear()
        answer = await _ask_once(client, args, "", True)
    if answer.conversation_id:
        store.set(answer.conversation_id)
    return 0


async def _ask_once(
    client: Client, args: argparse.Namespace, conversation_id: str, new: bool
) -> gpb.AskResponse:
    fields = _ask_fields(args, conversation_id, new)
    # The server enforces the Ask budget (30 s unless --timeout); the channel deadline
    # leaves it room to answer with its own DEADLINE_EXCEEDED.
    deadline = args.timeout + 5 if args.timeout is not None else None
    if args.stream:
        call = client.gateway.StreamAsk(
            gpb.StreamAskRequest(**fields), metadata=client.metadata, timeout=deadline
        )
        final: gpb.AskResponse | None = None
        if args.json:
            async for event in call:
                dump_json(message_dict(event), line=True)
                if event.HasField("answer"):
                    final = event.answer
        else:
            final = await render.stream_ask(call, show_hits=args.show_hits)
        if final is None:
            raise CliError("the answer stream ended without an answer")
        return final
    reply = await client.gateway.Ask(
        gpb.AskRequest(**fields), metadata=client.metadata, timeout=deadline
    )
    if args.json:
        dump_json(message_dict(reply))
    else:
        render.answer(reply, show_hits=args.show_hits)
    return reply
