"""The demo ``gensearch up --demo`` runs once the stack is serving.

It creates the demo collection if it is missing (local MiniLM vectorizer, keyword index on,
generative defaults pointing at the stack's LLM), imports the Python language reference
passages if the collection is empty, then runs one generative search (a per-hit prompt on
three hits and a grouped task) and a two-turn conversation, printed as they stream in.
Everything goes through the gateway with the Python client (gensearch.client), exactly as
a user's program would.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from gensearch.client import (
    DEFAULT_ADDRESS,
    Chunking,
    Collection,
    DataObject,
    GenerativeConfig,
    Property,
    Vectorizer,
)
from gensearch.client.errors import NotFoundError

from services.cli import corpus, render, state
from services.cli.client import Client, Connection
from services.cli.output import PrintableStream, command_name

if TYPE_CHECKING:
    from services.cli.stack import Stack

COLLECTION = "PythonReference"
SEARCH_QUERY = "How do I catch an exception and always run clean-up code?"
SINGLE_PROMPT = (
    "Here is a passage from the Python reference titled {title}:\n\n{text}\n\n"
    "In one short sentence, what does this passage explain?"
)
GROUPED_TASK = (
    "Using only these passages, explain briefly how a Python program handles an exception "
    "and runs clean-up code."
)
QUESTIONS = (
    "What does the assert statement do?",
    "How can those checks be switched off?",
)
HITS = 3
# Small answers keep the CPU-only local model quick; a real endpoint is not slowed by them.
MAX_TOKENS = 120
# Generous: a 2-core machine running the local model may queue several calls.
CALL_TIMEOUT = 180.0


def collection_spec(provider: str, model: str) -> Collection:
    return Collection(
        name=COLLECTION,
        description="The Python language reference topics that ship with CPython (pydoc).",
        properties=[
            Property("title", "text", "topic name and part"),
            Property("topic", "text", "pydoc topic name"),
            Property("part", "int", "part number"),
            Property("text", "text", "the passage"),
        ],
        vectorizer=Vectorizer(kind="local", source_properties=["title", "text"]),
        keyword_index=True,
        # A topic's parts are chunks of one document: expand_context can widen a hit.
        chunking=Chunking(document_property="topic", order_property="part"),
        generative=GenerativeConfig(
            provider=provider,
            model=model,
            max_tokens=MAX_TOKENS,
            temperature=0.2,
            context_fields=["title", "text"],
        ),
    )


# Topics the demo's questions are about: a capped import keeps them.
DEMO_TOPICS = ("assert", "try", "exceptions", "raise")


def demo_passages(limit: int | None) -> list[corpus.Passage]:
    return corpus.passages(max_passages=limit, prefer=DEMO_TOPICS)


def corpus_lines(passages: list[corpus.Passage]) -> Iterator[str]:
    """One JSON line per topic: the whole document ``gensearch import --chunk-property``
    splits into the demo's passages. A capped corpus keeps the first parts of a topic, so
    its document is those parts (their text joined as the packing reads it back)."""
    parts: dict[str, list[corpus.Passage]] = {}
    for passage in passages:
        parts.setdefault(passage.topic, []).append(passage)
    for topic in sorted(parts):
        ordered = sorted(parts[topic], key=lambda p: p.part)
        text = "\n\n".join(p.text for p in ordered)
        yield json.dumps({"properties": {"title": topic, "topic": topic, "text": text}})


def import_argv(path: str) -> list[str]:
    """The ``gensearch import`` command the demo corpus is loaded with, as a user would
    type it: the importer's chunking (``--chunk-property text``) cuts each topic into the
    passages ``corpus.chunk_text`` makes (same size, no overlap), ``topic`` the document
    and ``part`` the position the collection's chunking declares."""
    return [
        "import",
        path,
        "--collection",
        COLLECTION,
        "--chunk-property",
        "text",
        "--document-property",
        "topic",
        "--order-property",
        "part",
        "--chunk-size",
        str(corpus.LIMIT_CHARS),
        "--chunk-overlap",
        "0",
        "--batch-size",
        "32",
        "--objects-per-call",
        "64",
    ]


def demo_objects(limit: int | None) -> list[DataObject]:
    """The objects ``import_corpus`` stores for ``limit``: the import command's own chunker
    (parsed from ``import_argv``) on the demo's documents. For tests that load the demo
    collection without the CLI (the bundled model's demo test)."""
    from services.cli.__main__ import build_parser  # the CLI imports this module
    from services.cli.importer import chunker_of

    chunker = chunker_of(build_parser().parse_args(import_argv("-")))
    assert chunker is not None  # import_argv names --chunk-property
    return [
        chunk
        for line in corpus_lines(demo_passages(limit))
        for chunk in chunker.split(DataObject(id="", properties=json.loads(line)["properties"]))
    ]


async def import_corpus(client: Client, passages: list[corpus.Passage]) -> int:
    """Loads ``passages`` through the ``gensearch import`` command (its parser and its
    handler, as ``gensearch import`` runs them), printing the command; returns its exit
    code. Before, the demo called the importer's functions with passages it had packed."""
    from services.cli.__main__ import HANDLERS, build_parser  # the CLI imports this module

    with tempfile.TemporaryDirectory(prefix="gensearch-demo-") as folder:
        path = Path(folder) / "python-reference.jsonl"
        path.write_text("".join(line + "\n" for line in corpus_lines(passages)))
        argv = import_argv(str(path))
        print(f"  {command_name()} {shlex.join(argv)}", flush=True)
        args = build_parser().parse_args(argv)
        # Cut short, the import's resume line would name this temporary file; the next
        # start imports again instead (ensure_corpus).
        args.say_resume = False
        return await HANDLERS[args.command](client, args)


def section(title: str) -> None:
    print(f"\n── {title} " + "─" * max(0, 60 - len(title)), flush=True)


async def ensure_corpus(client: Client, provider: str, model: str, limit: int | None) -> int:
    """Create and fill the demo collection unless it exists already; returns its size."""
    try:
        got = await client.collections.get(COLLECTION).config(timeout=30)
        count = got.object_count or 0
        created = False
    except NotFoundError:
        await client.collections.create_from(collection_spec(provider, model), timeout=30)
        count, created = 0, True
    passages = demo_passages(limit)
    # An import cut short (Ctrl-C during the first start's import) left part of the corpus,
    # and every later start kept that part as if whole. The passages' ids are stable, so
    # importing again replaces what is there and adds what is missing.
    if count >= len(passages):
        print(f"demo collection {COLLECTION}: {count} passages (kept from the last run)")
        return count
    state = (
        f"{count} of its {len(passages)} passages (an import cut short?)"
        if count
        else ("created" if created else "empty")
    )
    print(
        f"demo collection {COLLECTION}: {state}; importing the "
        "Python language reference (pydoc topics), embedded with MiniLM on this CPU",
        flush=True,
    )
    await import_corpus(client, passages)
    got = await client.collections.get(COLLECTION).config(timeout=30)
    return got.object_count or 0


async def generative_search(
    client: Client, provider: str, model: str, max_tokens: int = MAX_TOKENS
) -> float | None:
    section("generative search")
    print(f"hybrid search: {SEARCH_QUERY!r}, top {HITS}")
    print(f"per hit:  {' '.join(SINGLE_PROMPT.split())!r}")
    print(f"grouped:  {GROUPED_TASK!r}\n", flush=True)
    events = client.collections.get(COLLECTION).generate_stream.hybrid(
        SEARCH_QUERY,
        limit=HITS,
        return_properties=["title", "text"],
        single_prompt=SINGLE_PROMPT,
        grouped_task=GROUPED_TASK,
        grouped_properties=["title", "text"],
        provider=provider,
        model=model,
        max_tokens=max_tokens,
        temperature=0.2,
        stream_tokens=True,
        generation_timeout=timedelta(seconds=CALL_TIMEOUT),
        timeout=CALL_TIMEOUT + 10,
    )
    return await render.stream_search(events)


async def conversation(
    client: Client, provider: str, model: str, max_tokens: int = MAX_TOKENS
) -> str:
    section("conversation")
    chat = client.collections.get(COLLECTION).chat()
    for question in QUESTIONS:
        print(f"you: {question}")
        print("gensearch: ", end="", flush=True)
        events = chat.ask_stream(
            question,
            provider=provider,
            llm_model=model,
            context_size=HITS,
            max_tokens=max_tokens,
            temperature=0.2,
            answer_timeout=timedelta(seconds=CALL_TIMEOUT),
            timeout=CALL_TIMEOUT + 10,
        )
        await render.stream_ask(events)
        print()
    return chat.conversation_id


def continue_hint(gateway_address: str, *, ran_as: str = "") -> str:
    """The ``gensearch ask`` line that reaches this stack: its address unless it is the
    default one, and, when keys are on, whose key continues the demo's conversation
    (``ran_as``; remembered per key) and where it goes (the key itself is never printed)."""
    flags = ""
    if state.address_key(gateway_address) != state.address_key(DEFAULT_ADDRESS):
        flags = f" --address {gateway_address}"
    hint = f'continue the conversation: {command_name()} ask{flags} -c {COLLECTION} "your question"'
    if ran_as:
        hint += (
            f"\n  (the stack checks API keys: the demo ran as {ran_as}; add that user's key "
            "with --api-key <key> or set GENSEARCH_API_KEY)"
        )
    return hint


async def run(stack: Stack, began: float) -> None:
    # The model's answers (streamed token by token), the passages' titles and errors are
    # anyone's text: shown with control characters visible (ESC as ␛), as every other
    # command shows them (__main__._run_client); they reached the terminal raw here.
    out = sys.stdout
    sys.stdout = PrintableStream(out)  # type: ignore[assignment]
    try:
        await _run(stack, began)
    finally:
        sys.stdout = out


async def _run(stack: Stack, began: float) -> None:
    args = stack.args
    provider, model = args.llm_provider, args.llm_model
    max_tokens = getattr(args, "demo_max_tokens", MAX_TOKENS) or MAX_TOKENS
    conn = Connection(address=stack.gateway_address, api_key=stack.api_key)
    async with Client(conn) as client:
        await ensure_corpus(client, provider, model, args.demo_limit or None)
        search_started = time.perf_counter()
        first_answer = await generative_search(client, provider, model, max_tokens)
        search_done = time.perf_counter()
        conversation_id = await conversation(client, provider, model, max_tokens)
    done = time.perf_counter()
    section("done")
    if first_answer is not None:
        print(f"first answer printed {first_answer - began:.1f}s after start")
    print(
        f"generative search {search_done - search_started:.1f}s, conversation "
        f"{done - search_done:.1f}s; demo finished {done - began:.1f}s after start"
    )
    if conversation_id:
        # `gensearch ask` continues the demo conversation from here.
        state.LastConversation(None, stack.gateway_address, stack.api_key).set(conversation_id)
        print(continue_hint(stack.gateway_address, ran_as=stack.api_user))
    note = model_note(stack)
    if note:
        print(note, flush=True)


def model_note(stack: Stack) -> str | None:
    """The warning about the bundled model's answers, only when it gave them: with
    ``--llm-provider``/``--llm-base-url`` no local model server runs (``up`` registers the
    one it starts as the child ``llm``)."""
    if "llm" not in stack.children:
        return None
    return (
        "note: the bundled SmolLM2-135M model is tiny and its answers are weak; point "
        "--llm-provider/--llm-base-url at a real endpoint for good ones"
    )
