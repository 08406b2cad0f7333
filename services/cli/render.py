"""Readable renderings of search hits, generated results and answers (for people)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import AsyncIterable, Sequence
from datetime import datetime
from typing import Any

from gensearch.client import types as t

from services.cli.output import key_hint, one_line, table, terminal_width

SNIPPET_CHARS = 160
TITLE_KEYS = ("title", "name", "question", "heading")
TEXT_KEYS = ("text", "content", "body", "answer", "description")


def hit_title(hit: t.Hit) -> str:
    values = hit.properties
    for key in TITLE_KEYS:
        if isinstance(values.get(key), str) and values[key]:
            return str(values[key])
    return hit.id


def hit_snippet(hit: t.Hit, width: int = SNIPPET_CHARS) -> str:
    values = hit.properties
    for key in TEXT_KEYS:
        if isinstance(values.get(key), str):
            return one_line(values[key], width)
    texts = [v for k, v in values.items() if isinstance(v, str) and k not in TITLE_KEYS]
    return one_line(max(texts, key=len), width) if texts else ""


def hits_table(hits: Sequence[t.Hit], order: Sequence[str] = ()) -> None:
    """One row per hit; property columns in ``order`` (the collection's schema order, or
    the properties asked for), then any others as they come."""
    rows = [h.properties for h in hits]
    present = {k for row in rows for k in row}
    keys = [k for k in order if k in present]
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    table(
        ["#", "score", "id", *keys],
        [
            (i, f"{h.score:.4f}", h.id[:8], *(_cell(row.get(k)) for k in keys))
            for i, (h, row) in enumerate(zip(hits, rows, strict=True), start=1)
        ],
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _wrap(text: str, indent: str = "    ") -> str:
    width = max(terminal_width() - len(indent), 20)
    paragraphs = [p for p in text.strip().split("\n")]
    lines: list[str] = []
    for para in paragraphs:
        wrapped = textwrap.wrap(para, width) or [""]
        lines.extend(indent + line for line in wrapped)
    return "\n".join(lines)


def print_hit(number: int, hit: t.Hit, *, score: bool = True) -> None:
    """``score=False``: objects named by id or inline (generate), which no search scored."""
    title = hit_title(hit) or f"object {number}"
    print(f"[{number}] {title}  (score {hit.score:.3f})" if score else f"[{number}] {title}")
    snippet = hit_snippet(hit)
    if snippet:
        print(_wrap(snippet))


def describe_generation(gen: t.GenerationResult) -> str:
    if gen.error is not None and (gen.error.status or gen.error.message):
        hint = key_hint(gen.error.reason, gen.provider, gen.error.message)
        return f"error: {gen.error.status or gen.error.code}: {gen.error.message}{hint}"
    return gen.result.strip() or "(empty answer)"


def generation_facts(gen: t.GenerationResult, *, provider: str = "", model: str = "") -> str:
    """How an answer was obtained: ``cached · 2 attempts · waited 1.5s · answered by
    local/small (fallback 1)``; the provider/model only when a fallback answered (or it is
    not the ``provider``/``model`` asked for)."""
    facts = []
    if gen.cached:
        facts.append("cached")
    if gen.attempts > 1:  # one attempt is the rule, not worth a line under every answer
        facts.append(f"{gen.attempts} attempts")
    if gen.wait_time is not None and gen.wait_time.total_seconds() > 0:
        facts.append(f"waited {gen.wait_time.total_seconds():.1f}s")
    differs = (provider and gen.provider and gen.provider != provider) or (
        model and gen.model and gen.model != model
    )
    if gen.fallback_index or differs:
        who = "/".join(x for x in (gen.provider, gen.model) if x) or "?"
        which = f" (fallback {gen.fallback_index})" if gen.fallback_index else ""
        facts.append(f"answered by {who}{which}")
    return " · ".join(facts)


def print_generation(
    gen: t.GenerationResult, prefix: str = "→ ", *, provider: str = "", model: str = ""
) -> None:
    """A per-hit or grouped answer: the text (or error), its structured value, how it was
    obtained, and with --debug the prompt."""
    print(_wrap(prefix + describe_generation(gen)))
    if gen.structured is not None:
        print(_wrap("structured: " + json.dumps(gen.structured, ensure_ascii=False), "      "))
    facts = generation_facts(gen, provider=provider, model=model)
    if facts:
        print(_wrap(f"({facts})", "      "))
    if gen.prompt:
        print(_wrap("prompt: " + gen.prompt, indent="      "))


def usage_line(usage: t.Usage) -> str:
    estimated = " (estimated)" if usage.estimated else ""
    return (
        f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion = "
        f"{usage.total_tokens} tokens{estimated}"
    )


def generative(
    reply: t.GenerativeSearchResult, *, provider: str = "", model: str = "", scores: bool = True
) -> None:
    """``provider``/``model``: the pair asked for (``--provider``/``--model``), to say when
    another answered; ``scores``: False for objects no search scored (generate)."""
    if not reply.hits:
        print("(no hits)")
    for number, item in enumerate(reply.hits, start=1):
        print_hit(number, item.hit, score=scores)
        if item.generation is not None:
            print_generation(item.generation, provider=provider, model=model)
        print()
    if reply.grouped is not None:
        print("grouped result:")
        print_generation(reply.grouped, "", provider=provider, model=model)
        print()
    if reply.usage is not None and reply.usage.total_tokens:
        print(usage_line(reply.usage))


class _GroupedPrinter:
    """Grouped tokens print live, but only once every per-hit result is out: interleaving
    them with per-hit results mid-line would be unreadable."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.live = False
        self.started = False

    def delta(self, text: str) -> None:
        if self.live:
            self._write(text)
        else:
            self.held.append(text)

    def restart(self) -> None:
        """The deltas so far are void (a corrective retry follows): dropped while held,
        marked as discarded once printed (a terminal cannot take them back)."""
        if not self.live:
            self.held.clear()
        elif self.started:
            self._write("\n(discarded: it did not match the schema; the retry follows)\n")

    def release(self) -> None:
        self.live = True
        if self.held:
            self._write("".join(self.held))
            self.held.clear()

    def _write(self, text: str) -> None:
        if not self.started:
            sys.stdout.write("\ngrouped result:\n    ")
            self.started = True
        sys.stdout.write(text.replace("\n", "\n    "))
        sys.stdout.flush()

    def finish(self, result: t.GenerationResult) -> None:
        self.release()
        failed = result.error is not None and bool(result.error.status or result.error.message)
        if self.started:
            print()
            if failed:
                print(_wrap(describe_generation(result)))
            if result.structured is not None:
                structured = json.dumps(result.structured, ensure_ascii=False)
                print(_wrap("structured: " + structured, "      "))
            facts = generation_facts(result)
            if facts:
                print(_wrap(f"({facts})", "      "))
        else:
            print("\ngrouped result:")
            print_generation(result, "")
        sys.stdout.flush()


async def stream_search(
    events: AsyncIterable[t.SearchEvent], *, per_hit: bool = True, noun: str = "hit"
) -> float | None:
    """Print each event as it arrives: hits, per-hit results (in completion order), the
    grouped result token by token, usage. ``per_hit``: whether per-hit results will come.

    Returns when (``time.perf_counter()``) the first generated text was printed.
    """
    hits: list[t.Hit] = []
    pending = 0
    grouped = _GroupedPrinter()
    first: float | None = None
    async for event in events:
        if isinstance(event, t.HitsEvent):
            hits = list(event.hits)
            pending = len(hits) if per_hit else 0
            print(f"{len(hits)} {noun}{'' if len(hits) == 1 else 's'}" + (":" if hits else ""))
            for number, hit in enumerate(hits, start=1):
                print_hit(number, hit, score=noun == "hit")
            print(flush=True)
            if not pending:
                grouped.release()
        elif isinstance(event, t.HitResultEvent):
            first = first or time.perf_counter()
            index = event.hit_index
            title = hit_title(hits[index]) if 0 <= index < len(hits) else ""
            title = title or f"{noun} {index + 1}"
            print(f"[{index + 1}] {title} →")
            print_generation(event.generation or t.GenerationResult(), "")
            sys.stdout.flush()
            pending -= 1
            if pending <= 0:
                grouped.release()
        elif isinstance(event, t.TokenEvent) and event.grouped:
            if event.restart:
                grouped.restart()
            grouped.delta(event.delta)
            if grouped.live:
                first = first or time.perf_counter()
        elif isinstance(event, t.GroupedEvent):
            grouped.finish(event.generation)
            first = first or time.perf_counter()
        elif isinstance(event, t.DoneEvent) and event.usage and event.usage.total_tokens:
            print("\n" + usage_line(event.usage), flush=True)
    return first


def sources_line(reply: t.Answer) -> str:
    titles = {h.id: hit_title(h) for h in reply.hits}
    cited = [f"[{c.number}] {titles.get(c.id, c.id)}" for c in reply.citations]
    return "sources: " + ("; ".join(cited) if cited else "none cited")


_REJECTIONS = {
    "empty": "the model's rewrite was empty",
    "too_long": "the model's rewrite was too long",
    "copies_answer": "the model's rewrite copied an earlier answer",
    "no_shared_words": "the model's rewrite was off topic",
    "model_failed": "the rewrite call failed",
}


def _how(reply: t.Answer) -> str:
    """How the search query was obtained (docs/gateway.md, "Question condensing")."""
    if reply.rewrite_method == "model":
        return " (rewritten by the model)"
    if reply.rewrite_method == "fallback":
        why = _REJECTIONS.get(reply.rewrite_rejection, "the model's rewrite was rejected")
        return f" (fallback: {why})"
    return ""


def answer_footer(reply: t.Answer) -> list[str]:
    lines = [sources_line(reply)]
    facts = []
    if reply.conversation_id:
        facts.append(f"conversation {reply.conversation_id}")
    if reply.replayed:
        facts.append("replayed (the stored turn of this --request-id; nothing generated)")
    if reply.cached:
        similarity = f", similarity {reply.cached_similarity:.2f}" if reply.cached_question else ""
        asked = f" for {reply.cached_question!r}" if reply.cached_question else ""
        facts.append(f"cached: the answer given{asked}{similarity}")
    if reply.model:
        which = f" (fallback {reply.fallback_index})" if reply.fallback_index else ""
        provider = f"{reply.provider}/" if reply.fallback_index and reply.provider else ""
        facts.append(f"model {provider}{reply.model}{which}")
    if reply.usage and reply.usage.total_tokens:
        facts.append(f"{reply.usage.total_tokens} tokens")
    if reply.rewritten_query:
        facts.append(f"searched for {reply.rewritten_query!r}{_how(reply)}")
    if reply.sentences:
        supported = sum(s.supported for s in reply.sentences)
        facts.append(f"{supported}/{len(reply.sentences)} sentences backed by a cited source")
    if reply.trimmed and (reply.trimmed.hits or reply.trimmed.history_turns):
        facts.append(
            f"trimmed to fit: {reply.trimmed.hits} hits, {reply.trimmed.history_turns} turns"
        )
    if facts:
        lines.append(" · ".join(facts))
    return lines


def answer(reply: t.Answer, *, show_hits: bool = False) -> None:
    print(reply.answer.strip() or "(empty answer)")
    print()
    for line in answer_footer(reply):
        print(line)
    if show_hits:
        _print_hits(reply.hits)


def _print_hits(hits: Sequence[t.Hit]) -> None:
    print()
    for number, hit in enumerate(hits, start=1):
        print_hit(number, hit)


async def stream_ask(
    events: AsyncIterable[t.AskEvent], *, show_hits: bool = False
) -> t.Answer | None:
    final: t.Answer | None = None
    streamed = False
    async for event in events:
        if isinstance(event, t.AnswerDelta):
            streamed = True
            sys.stdout.write(event.delta)
            sys.stdout.flush()
        elif isinstance(event, t.AnswerEvent):
            final = event.answer
            if not streamed:
                sys.stdout.write(final.answer.strip() or "(empty answer)")
            print("\n")
            for line in answer_footer(final):
                print(line)
            if show_hits:
                _print_hits(final.hits)
            sys.stdout.flush()
    return final
