"""``gensearch search`` and ``gensearch ask``."""

from __future__ import annotations

import argparse
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from gensearch.client import types as t
from gensearch.client.errors import ConversationNotFoundError
from gensearch.gateway.v1 import gateway_service_pb2 as gpb
from gensearch.generation.v1 import generation_service_pb2 as genpb
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.protobuf import json_format

from services.cli import render, state
from services.cli.client import Client, CliError, UsageError, int32, int64
from services.cli.output import dump_json, inline_types, message_dict, note
from services.common import suggest

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
    add_generate_arguments(parser)


def add_generate_arguments(parser: argparse.ArgumentParser, what: str = "hit") -> None:
    """The generation flags of ``search`` (on its hits) and ``generate`` (on objects)."""
    parser.add_argument(
        "--single-prompt", metavar="TEMPLATE", help=f"per-{what} prompt: '{{text}}'"
    )
    parser.add_argument("--grouped-task", metavar="TASK", help=f"one prompt over all {what}s")
    parser.add_argument(
        "--grouped-property",
        action="append",
        default=[],
        metavar="NAME",
        help="property given to the grouped task (repeatable; default all)",
    )
    _llm_arguments(parser)
    _sampling_arguments(parser)
    parser.add_argument(
        "--max-concurrency", type=int32, default=0, help=f"per-{what} LLM calls at once"
    )
    parser.add_argument(
        "--cache",
        metavar="MODE[:TTL]",
        help="generation cache: use (read and store), refresh (store only) or bypass; "
        "TTL of stored answers as 600, 600s, 10m, 1h or 1d (default: the collection's)",
    )
    parser.add_argument(
        "--response-format",
        metavar="FILE|JSON",
        help="a JSON schema every answer must match (inline JSON or a file); the parsed "
        'answer is shown as "structured". {"name": ..., "json_schema": ..., "strict": ...} '
        "sets the name and strictness too",
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
    parser.add_argument(
        "--request-id",
        metavar="KEY",
        help="idempotency key of the turn (a UUID, say): asked again with it after the turn "
        "was stored, the stored turn comes back (replayed) with no LLM call; needs a "
        "conversation (not --no-memory)",
    )
    parser.add_argument(
        "--semantic-cache",
        metavar="MODE[:TTL]",
        help="answer from the semantic cache when a question close enough was answered "
        "before (questions without history): use, refresh or bypass; TTL as for "
        "search --cache (600, 10m, 1h, 1d)",
    )
    parser.add_argument(
        "--min-similarity",
        type=float,
        metavar="X",
        help="--semantic-cache: cosine similarity a stored question needs, 0.5..1 "
        "(default: the collection's, else the gateway's)",
    )
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
    parser.add_argument(
        "--fallback",
        action="append",
        default=[],
        metavar="PROVIDER[/MODEL]",
        help="tried in order when the pair before fails with a 5xx, a failed connection, a "
        "timeout or 429s past its share of the deadline, not with another 4xx (repeatable; "
        "default: the collection's chain); no model: the provider's default",
    )


# Generate's sampling parameters and base URL (Ask has none of them): flag, dest. Passed as
# given; the gateway checks the ranges (INVALID_ARGUMENT naming the field).
SAMPLING_FLAGS = (
    ("--top-p", "top_p"),
    ("--stop", "stop"),
    ("--frequency-penalty", "frequency_penalty"),
    ("--presence-penalty", "presence_penalty"),
    ("--seed", "seed"),
    ("--base-url", "base_url"),
)


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Unset, a field stays unset (the provider's default): ``--seed 0`` is a seed."""
    parser.add_argument("--top-p", type=float, metavar="X", help="nucleus sampling, (0, 1]")
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="a sequence that ends each answer (repeatable; the gateway allows 4 of up "
        "to 256 characters unless configured otherwise)",
    )
    parser.add_argument("--frequency-penalty", type=float, metavar="X", help="-2..2")
    parser.add_argument("--presence-penalty", type=float, metavar="X", help="-2..2")
    parser.add_argument(
        "--seed", type=int64, metavar="N", help="sampling seed (where the provider has one)"
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="the provider's OpenAI-compatible endpoint for this call instead of the "
        "operator's: a host on the operator's allowlist (GENSEARCH_GENERATION_ALLOWED_HOSTS) "
        "only; only your own key (--llm-key) or none is sent there",
    )


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
                    names = [n for n in OPERATORS if n != "unspecified"]
                    close = suggest.closest(short, names)
                    hint = f" (did you mean {close}?)" if close else ""
                    raise ValueError(
                        f"unknown operator {op[:64]!r}{hint}: use one of {', '.join(names)}"
                    )
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


CACHE_MODES = {
    name.removeprefix("CACHE_MODE_").lower(): name
    for name, _ in gpb.CacheMode.items()
    if name != "CACHE_MODE_UNSPECIFIED"
}
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_cache(text: str, flag: str = "--cache") -> dict[str, Any]:
    """``use``, ``refresh:10m``, ``bypass`` -> a GenerationCache (or SemanticCache) dict."""
    mode, sep, ttl = text.partition(":")
    name = CACHE_MODES.get(mode.strip().lower())
    if name is None:
        raise UsageError(
            f"{flag}: unknown mode {mode[:32]!r}: use one of {', '.join(CACHE_MODES)} "
            "(optionally :TTL, e.g. use:10m)"
        )
    cache: dict[str, Any] = {"mode": name}
    if sep:
        cache["ttl"] = parse_ttl(ttl, flag)
    return cache


def parse_ttl(text: str, flag: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if match is None or float(match[1]) <= 0:
        raise UsageError(
            f"{flag}: the TTL {text[:32]!r} is not a positive duration such as 600, 600s, "
            "10m, 1h or 1d"
        )
    seconds = float(match[1]) * _TTL_UNITS[match[2]]
    if seconds > timedelta.max.total_seconds() / 2:
        raise UsageError(f"{flag}: the TTL {text[:32]!r} is too long")
    return timedelta(seconds=seconds)


def parse_fallback(values: list[str], flag: str = "--fallback") -> list[dict[str, str]]:
    """``["anyscale/meta-llama/Llama-2-70b-chat-hf", "local"]`` -> ModelChoice dicts (the
    model is everything after the first "/": model names hold slashes)."""
    chain = []
    for value in values:
        provider, _, model = value.strip().partition("/")
        if not provider.strip():
            raise UsageError(
                f"{flag} must look like PROVIDER or PROVIDER/MODEL, e.g. local or "
                "openai/gpt-4o-mini"
            )
        chain.append({"provider": provider.strip(), "model": model.strip()})
    return chain


def parse_response_format(text: str, flag: str = "--response-format") -> dict[str, Any]:
    """A ResponseFormat dict from inline JSON or a file holding it: a bare JSON schema, or
    ``{"name", "json_schema", "strict"}``."""
    source = "JSON"
    if not text.lstrip().startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise UsageError(
                f"{flag}: cannot read {str(path)[:200]!r} ({reason}); give a file or "
                "inline JSON starting with '{'"
            ) from None
        source = f"the JSON in {str(path)[:200]!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{flag}: {source} is not valid: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{flag}: the schema must be a non-empty JSON object")
    wrapped = "json_schema" in value and isinstance(value["json_schema"], dict)
    form: dict[str, Any] = dict(value) if wrapped else {"json_schema": value}
    unknown = set(form) - {"json_schema", "name", "strict"}
    if unknown:
        raise UsageError(
            f"{flag}: unknown key {sorted(unknown)[0][:32]!r} beside json_schema "
            "(name and strict are allowed)"
        )
    try:
        json_format.ParseDict(form, genpb.ResponseFormat())
    except (json_format.ParseError, ValueError, TypeError) as err:
        raise UsageError(f"{flag}: {' '.join(str(err).split())[:200]}") from None
    return form


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
    fields: dict[str, Any] = dict(
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
        **{dest: getattr(args, dest) for _, dest in SAMPLING_FLAGS},
    )
    if args.cache:
        fields["cache"] = parse_cache(args.cache)
    if args.fallback:
        fields["fallback"] = parse_fallback(args.fallback)
    if args.response_format:
        fields["response_format"] = parse_response_format(args.response_format)
    return fields


def check_generate_flags(args: argparse.Namespace) -> None:
    """Generation flags given with no --single-prompt or --grouped-task did nothing."""
    given = [
        flag
        for flag, value in (
            ("--cache", args.cache),
            ("--fallback", args.fallback),
            ("--response-format", args.response_format),
            *((flag, getattr(args, dest)) for flag, dest in SAMPLING_FLAGS),
        )
        if value not in (None, "", [])
    ]
    if given:
        raise UsageError(f"{', '.join(given)} needs --single-prompt or --grouped-task")


# --- search ----------------------------------------------------------------------------------


async def search(client: Client, args: argparse.Namespace) -> int:
    check_query(args)
    generate = generate_fields(args, stream=args.stream)
    if generate is None:
        check_generate_flags(args)
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
        render.generative(generated, provider=args.provider, model=args.model)
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
    if args.fallback:
        fields["fallback"] = parse_fallback(args.fallback)
    if args.request_id is not None:
        if not args.request_id.strip():
            raise UsageError("--request-id: the key is empty")
        fields["request_id"] = args.request_id
    if args.semantic_cache:
        fields["semantic_cache"] = parse_cache(args.semantic_cache, "--semantic-cache")
        if args.min_similarity is not None:
            fields["semantic_cache"]["min_similarity"] = args.min_similarity
    elif args.min_similarity is not None:
        raise UsageError("--min-similarity needs --semantic-cache")
    if args.filter:
        fields["filter"] = parse_filter(args.filter)
    if args.timeout is not None:
        fields["answer_timeout"] = timedelta(seconds=args.timeout)
    # The server enforces the Ask budget (30 s unless --timeout); the channel deadline
    # leaves it room to answer with its own DEADLINE_EXCEEDED.
    fields["timeout"] = args.timeout + 5 if args.timeout is not None else None
    return fields


async def ask(client: Client, args: argparse.Namespace) -> int:
    store = state.LastConversation(args.state_dir, client.conn.address, client.conn.api_key)
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


# --- generate (on objects named by id or given inline) ---------------------------------------


def add_generate_on_objects_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection",
        "-c",
        help="the collection holding the --id objects; with inline objects optional (its "
        "schema checks them and its generative defaults apply)",
    )
    objects = parser.add_argument_group("objects (one kind: ids or inline)")
    objects.add_argument(
        "--id",
        action="append",
        default=[],
        metavar="ID",
        dest="ids",
        help="an object of --collection by id (repeatable, in order)",
    )
    objects.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="JSON",
        dest="objects",
        help='an object given inline as its properties: \'{"title": "Dune"}\' (repeatable)',
    )
    objects.add_argument(
        "--objects-file",
        metavar="FILE",
        help="inline objects from a JSON Lines file, one object a line (after any --object)",
    )
    parser.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="NAME",
        help="property returned per object (repeatable; default all)",
    )
    add_generate_arguments(parser, what="object")


def parse_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where} is not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise UsageError(f'{where} must be a JSON object of properties, e.g. {{"title": "Dune"}}')
    return value


def read_objects_file(name: str) -> list[dict[str, Any]]:
    path = Path(name).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UsageError(f"--objects-file: cannot read {str(path)[:200]!r} ({reason})") from None
    objects = [
        parse_object(line, f"--objects-file: line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not objects:
        raise UsageError(f"--objects-file: {str(path)[:200]!r} holds no objects")
    return objects


async def generate_on_objects(client: Client, args: argparse.Namespace) -> int:
    """``gensearch generate``: GenerateOnObjects (no search) over ids or inline objects."""
    generate = generate_fields(args, stream=args.stream)
    if generate is None:
        raise UsageError("generate needs --single-prompt or --grouped-task (or both)")
    inline = [parse_object(o, "--object") for o in args.objects]
    if args.objects_file:
        inline.extend(read_objects_file(args.objects_file))
    if args.ids and inline:
        raise UsageError("--id cannot be mixed with --object/--objects-file: one kind a call")
    if not args.ids and not inline:
        raise UsageError(
            "generate needs objects: --id (with --collection), --object or --objects-file"
        )
    if args.ids and not args.collection:
        raise UsageError("--id needs --collection (the collection holding the objects)")
    types = inline_types(inline)
    if args.collection:
        collection = client.collections.get(args.collection)
        types = await collection.property_types()
        plain, streamed = collection.generate, collection.generate_stream
    else:
        plain, streamed = client.generate, client.generate_stream  # type: ignore[assignment]
    fields: dict[str, Any] = dict(
        return_properties=args.property, timeout=client.timeout(None), **generate
    )

    def run(target: Any) -> Any:
        if args.ids:
            return target.by_ids(args.ids, **fields)
        return target.on_objects(inline, **fields)

    if args.stream:
        events = run(streamed)
        if args.json:
            async for event in events:
                dump_json(message_dict(event.raw, types), line=True)
            return 0
        await render.stream_search(events, per_hit=bool(args.single_prompt), noun="object")
        return 0
    generated = await run(plain)
    if args.json:
        dump_json(message_dict(generated.raw, types))
    else:
        render.generative(generated, provider=args.provider, model=args.model, scores=False)
    return 0
