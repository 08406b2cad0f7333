"""``gensearch status`` and ``gensearch collections create|list|show|delete``."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gensearch.client import GensearchError
from gensearch.gateway.v1 import gateway_service_pb2
from gensearch.memory.v1 import memory_service_pb2
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.protobuf import json_format

from services.cli.client import (
    Client,
    UsageError,
    check_health,
    describe_error,
    int32,
    is_unreachable,
)
from services.cli.output import KEY_HINTS, dump_json, message_dict, table
from services.cli.state import address_key
from services.common import suggest

# Service names each part registers with grpc.health.v1.
GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
PARTS = {
    "memory": memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
    "retrieval": rpb.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
    "generation": "gensearch.generation.v1.GenerationService",
}

TYPES = {
    "text": rpb.DATA_TYPE_TEXT,
    "text[]": rpb.DATA_TYPE_TEXT_ARRAY,
    "text_array": rpb.DATA_TYPE_TEXT_ARRAY,
    "int": rpb.DATA_TYPE_INT,
    "number": rpb.DATA_TYPE_NUMBER,
    "bool": rpb.DATA_TYPE_BOOL,
    "date": rpb.DATA_TYPE_DATE,
}
TYPE_NAMES = {
    rpb.DATA_TYPE_TEXT: "text",
    rpb.DATA_TYPE_TEXT_ARRAY: "text[]",
    rpb.DATA_TYPE_INT: "int",
    rpb.DATA_TYPE_NUMBER: "number",
    rpb.DATA_TYPE_BOOL: "bool",
    rpb.DATA_TYPE_DATE: "date",
}
VECTORIZERS = {
    "none": rpb.VECTORIZER_KIND_NONE,
    "local": rpb.VECTORIZER_KIND_LOCAL,
    "openai": rpb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
}
VECTORIZER_NAMES = {v: k for k, v in VECTORIZERS.items()}
VECTORIZER_NAMES[rpb.VECTORIZER_KIND_UNSPECIFIED] = "local"


# --- status -------------------------------------------------------------------------------


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    for part in PARTS:
        parser.add_argument(
            f"--{part}-address",
            metavar="HOST:PORT",
            help=f"check the {part} service directly here (env "
            f"GENSEARCH_GATEWAY_{part.upper()}_ADDR, as the gateway reads it); "
            "default: through the gateway",
        )


@dataclass
class PartStatus:
    part: str
    address: str
    status: str
    detail: str = ""
    ms: float = 0.0
    error: GensearchError | None = None

    @property
    def ok(self) -> bool:
        return self.status == "SERVING"


async def status(client: Client, args: argparse.Namespace) -> int:
    """Gateway health, then each service: directly when its address is known (flag, env, or
    the stack file ``gensearch up`` writes), else through the gateway with a cheap call.

    A gateway that nothing answers for is one error line, like any command's: the health
    probe (no retries) finds it at once, while each forwarded call, retried by the client,
    took its time and said "cannot reach the gateway" again on every row."""
    timeout = client.timeout(3.0) or 3.0
    gateway = await _gateway_status(client, timeout)
    if gateway.error is not None and is_unreachable(gateway.error):
        raise gateway.error  # _run_client: "error: UNAVAILABLE: cannot reach the gateway…"
    running = _stack_addresses(client.conn.address)
    checks: list[Awaitable[PartStatus]] = []
    for part in PARTS:
        direct = (
            getattr(args, f"{part}_address", None)
            or os.environ.get(f"GENSEARCH_GATEWAY_{part.upper()}_ADDR")
            or running.get(part)
        )
        if direct:
            checks.append(_direct_status(part, direct, timeout))
        else:
            checks.append(_via_gateway_status(client, part, timeout))
    results = [gateway, *await asyncio.gather(*checks)]
    healthy = all(r.ok for r in results)
    if args.json:
        dump_json(
            {
                "ok": healthy,
                "parts": [
                    {
                        "part": r.part,
                        "address": r.address,
                        "status": r.status,
                        "detail": r.detail,
                        "ms": round(r.ms, 2),
                    }
                    for r in results
                ],
            }
        )
    else:
        table(
            ["part", "address", "status", "ms", "detail"],
            [(r.part, r.address, r.status, f"{r.ms:.1f}", r.detail) for r in results],
        )
    return 0 if healthy else 1


def _stack_addresses(gateway_address: str) -> dict[str, str]:
    """Addresses from a local ``gensearch up``, if it is the gateway we talk to."""
    from services.cli.stack import read_stack_file

    running = read_stack_file()
    gateway = running.get("gateway")
    if not isinstance(gateway, str) or address_key(gateway) != address_key(gateway_address):
        return {}
    return {k: v for k, v in running.items() if k in PARTS and isinstance(v, str)}


async def _timed(
    part: str, address: str, probe: Callable[[], Awaitable[str]], *, direct: bool = False
) -> PartStatus:
    started = time.perf_counter()
    detail = ""
    error = None
    try:
        state = await probe()
    except GensearchError as err:
        error = err
        state = err.code.name
        what = f"the {part} service" if direct else "the gateway"
        detail = describe_error(err, "", what).split(": ", 1)[-1]
        if err.reason in KEY_HINTS:  # short, so the table does not cut what to do
            wanting = "no API key" if err.reason == "MISSING_CREDENTIALS" else "invalid API key"
            detail = f"{wanting}: {KEY_HINTS[err.reason]}"
    if state == "UNKNOWN_SERVICE":
        detail = detail or "the service is not registered there"
    elapsed = (time.perf_counter() - started) * 1000
    return PartStatus(part, address, state, detail, elapsed, error)


async def _gateway_status(client: Client, timeout: float) -> PartStatus:
    address = client.conn.address

    async def probe() -> str:
        return await check_health(address, GATEWAY_SERVICE, timeout)

    return await _timed("gateway", address, probe)


async def _direct_status(part: str, address: str, timeout: float) -> PartStatus:
    async def probe() -> str:
        return await check_health(address, PARTS[part], timeout)

    return await _timed(part, address, probe, direct=True)


async def _via_gateway_status(client: Client, part: str, timeout: float) -> PartStatus:
    """A cheap forwarded call proves the gateway reaches the service and it answers."""
    address = f"via {client.conn.address}"

    async def probe() -> str:
        if part == "memory":  # one page, even an empty one with a token (a list read
            # on to its first item may take several: docs/memory.md#legacy-owners)
            await client.conversations.page(page_size=1, timeout=timeout)
        elif part == "retrieval":
            await client.collections.list(limit=1, page_size=1, timeout=timeout)
        else:  # ListModels: no LLM call, nothing charged to a quota
            await client.generate.models(timeout=timeout)
        return "SERVING"

    return await _timed(part, address, probe)


# --- collections ---------------------------------------------------------------------------


def add_collection_arguments(
    parser: argparse.ArgumentParser,
    client_options: Callable[..., None],
) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        client_options(p, suppress=True)
        return p

    create = action("create", "create a collection")
    create.add_argument("--name", required=True)
    create.add_argument("--description", default="")
    create.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="NAME[:TYPE]",
        help=f"a property; TYPE is one of {', '.join(sorted(TYPES))}, default text (repeatable)",
    )
    create.add_argument("--vectorizer", choices=sorted(VECTORIZERS), default="local")
    create.add_argument("--dimensions", type=int32, default=0, help="vector size (none, openai)")
    create.add_argument("--embedding-model", default="", help="embedding model name")
    create.add_argument("--embedding-base-url", default="", help="openai: endpoint base URL")
    create.add_argument(
        "--embedding-api-key-env", default="", help="openai: env var holding the key"
    )
    create.add_argument(
        "--source-property",
        action="append",
        default=[],
        metavar="NAME",
        help="text property to embed (repeatable; default: every text property)",
    )
    create.add_argument(
        "--distance", choices=["cosine", "dot", "euclid"], default="", help="default cosine"
    )
    create.add_argument(
        "--no-keyword-index", action="store_true", help="do not build the BM25 index"
    )
    create.add_argument("--provider", default="", help="generative default: LLM provider")
    create.add_argument("--model", default="", help="generative default: LLM model")
    create.add_argument("--max-tokens", type=int32, default=None, help="generative default")
    create.add_argument("--temperature", type=float, default=None, help="generative default")
    create.add_argument(
        "--context-field",
        action="append",
        default=[],
        metavar="NAME",
        help="property given to the LLM as context (repeatable)",
    )

    create.add_argument(
        "--chunking",
        default="",
        metavar="DOC:ORDER",
        help="objects are chunks: the document property and the position property, "
        "e.g. doc_id:chunk_index (gensearch import --chunk-property writes them)",
    )

    list_ = action("list", "list collections with their object counts")
    list_.add_argument("--page-size", type=int32, default=100)

    show = action("show", "show a collection's schema and settings")
    show.add_argument("name")

    delete = action("delete", "delete a collection and all its objects")
    delete.add_argument("name")


def parse_property(spec: str) -> rpb.Property:
    name, _, kind = spec.partition(":")
    name, kind = name.strip(), (kind.strip().lower() or "text")
    if not name:
        raise UsageError(f"--property {spec!r}: expected NAME:TYPE, e.g. title:text")
    if kind not in TYPES:
        close = suggest.closest(kind, sorted(TYPES))
        hint = f" (did you mean {name}:{close}?)" if close else ""
        raise UsageError(
            f"--property {spec!r}: TYPE must be one of {', '.join(sorted(TYPES))}{hint}"
        )
    return rpb.Property(name=name, data_type=TYPES[kind])


def build_collection(args: argparse.Namespace) -> rpb.Collection:
    vectorizer = rpb.Vectorizer(
        kind=VECTORIZERS[args.vectorizer],
        model=args.embedding_model,
        base_url=args.embedding_base_url,
        api_key_env=args.embedding_api_key_env,
        dimensions=args.dimensions,
        source_properties=args.source_property,
    )
    if args.distance:
        vectorizer.distance = rpb.Distance.Value(f"DISTANCE_{args.distance.upper()}")  # type: ignore[assignment]
    generative = rpb.GenerativeConfig(
        provider=args.provider, model=args.model, context_fields=args.context_field
    )
    if args.max_tokens is not None:
        generative.max_tokens = args.max_tokens
    if args.temperature is not None:
        generative.temperature = args.temperature
    collection = rpb.Collection(
        name=args.name,
        description=args.description,
        properties=[parse_property(p) for p in args.property],
        vectorizer=vectorizer,
        keyword_index=not args.no_keyword_index,
        generative=generative,
    )
    if getattr(args, "chunking", ""):
        document, _, order = args.chunking.partition(":")
        if not document.strip() or not order.strip():
            raise UsageError(
                f"--chunking {args.chunking!r}: expected DOC:ORDER, e.g. doc_id:chunk_index"
            )
        collection.chunking.document_property = document.strip()
        collection.chunking.order_property = order.strip()
    return collection


async def collections(client: Client, args: argparse.Namespace) -> int:
    timeout = client.timeout(30.0)
    if args.action == "create":
        created = await client.collections.create_from(build_collection(args), timeout=timeout)
        assert created.schema is not None
        spec = created.schema.raw
        if args.json:
            dump_json(message_dict(spec))
        else:
            print(f"created collection {spec.name}")
            print_collection(spec, None)
        return 0
    if args.action == "show":
        got = await client.collections.get(args.name).config(timeout=timeout)
        if args.json:
            dump_json({**message_dict(got.raw), "object_count": got.object_count})
        else:
            print_collection(got.raw, got.object_count)
        return 0
    if args.action == "delete":
        await client.collections.delete(args.name, timeout=timeout)
        if args.json:
            dump_json({"deleted": args.name})
        else:
            print(f"deleted collection {args.name}")
        return 0
    found = [
        c.raw for c in await client.collections.list(page_size=args.page_size, timeout=timeout)
    ]
    counts = await asyncio.gather(*(_count(client, c.name, timeout) for c in found))
    if args.json:
        dump_json(
            [{**message_dict(c), "object_count": n} for c, n in zip(found, counts, strict=True)]
        )
        return 0
    table(
        ["name", "objects", "vectorizer", "properties", "created"],
        [
            (
                c.name,
                "?" if n is None else n,
                VECTORIZER_NAMES.get(c.vectorizer.kind, "?"),
                ", ".join(f"{p.name}:{TYPE_NAMES.get(p.data_type, '?')}" for p in c.properties),
                _time(c) or "",
            )
            for c, n in zip(found, counts, strict=True)
        ],
    )
    return 0


async def _count(client: Client, name: str, timeout: float | None) -> int | None:
    try:
        got = await client.collections.get(name).config(timeout=timeout)
    except GensearchError:
        return None  # deleted meanwhile: the list is still worth printing
    return got.object_count


def _time(collection: rpb.Collection) -> str | None:
    if not collection.HasField("create_time"):
        return None
    return collection.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


LABEL_WIDTH = 22


def _one_line(value: Any) -> Any:
    """A value of ``MessageToDict`` on one line: lists comma-separated, messages as
    ``key=value`` pairs (a fallback chain's pairs, the cache defaults). ``", ".join`` of a
    fallback chain's dicts was a TypeError that ended ``collections show``."""
    if isinstance(value, list):
        return ", ".join(str(_one_line(v)) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_one_line(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def print_collection(c: rpb.Collection, object_count: int | None) -> None:
    vec = c.vectorizer
    rows: list[tuple[str, Any]] = [
        ("name", c.name),
        ("description", c.description),
        ("objects", object_count),
        ("vectorizer", VECTORIZER_NAMES.get(vec.kind, "?")),
        ("embedding model", vec.model),
        ("dimensions", vec.dimensions or None),
        ("embedded properties", ", ".join(vec.source_properties)),
        ("keyword index", "off" if c.HasField("keyword_index") and not c.keyword_index else "on"),
        ("created", _time(c)),
    ]
    gen = json_format.MessageToDict(c.generative, preserving_proto_field_name=True)
    for key, value in gen.items():
        rows.append((f"generative {key}", _one_line(value)))
    if c.HasField("chunking"):  # the objects are chunks of documents (--chunking DOC:ORDER)
        rows.append(("chunking document_property", c.chunking.document_property))
        rows.append(("chunking order_property", c.chunking.order_property))
    shown = [(f"{key}:", value) for key, value in rows if value not in (None, "")]
    # One column for every value, past the longest label ("generative max_tokens:" once
    # ran into its value).
    width = max(LABEL_WIDTH, *(len(label) + 1 for label, _ in shown))
    for label, value in shown:
        print(f"{label:<{width}}{value}")
    if c.properties:
        print()
        table(
            ["property", "type", "description"],
            [(p.name, TYPE_NAMES.get(p.data_type, "?"), p.description) for p in c.properties],
        )
