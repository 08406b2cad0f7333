"""The Ask prompt and the context-window guard that keeps it within the model's window."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.common.errors import InvalidArgument
from services.common.tokens import estimate_tokens
from services.gateway.conversation import SYSTEM, USER, Turn, history_messages
from services.gateway.grouped import hit_block, selection

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the question using the numbered search results. "
    "Cite the results you use by their numbers in square brackets, like [1] or [2]. If the "
    "search results do not contain the answer, say that you do not know."
)

# Stored with each turn so a reader knows how the answer was produced.
PROMPT_TEMPLATE = (
    "{system_prompt}\n---\n{history}\n---\nSearch results:\n{search_results}\n\n"
    "{user_instructions}\n\nQuestion: {question}"
)

# Per-message framing tokens in chat templates (role markers, separators).
_MESSAGE_OVERHEAD = 4
# A joint between two parts of a message ("\n\n"): at most a token, counted as one.
_JOINT = 1

# The rolling summary, as the prompt carries it: a system message before the turns.
SUMMARY_PREFIX = "Summary of the earlier conversation (older turns, not repeated below):\n"

Count = Callable[[str], int]


def summary_message(summary: str) -> gen_pb.Message:
    return gen_pb.Message(role=SYSTEM, content=SUMMARY_PREFIX + summary)


def prompt_texts(
    *,
    system_prompt: str,
    summary: str,
    turns: Sequence[Turn],
    hits: Sequence[ContextHit],
    context_fields: Sequence[str],
    user_instructions: str,
    question: str,
) -> list[str]:
    """Every text ``fit_prompt`` counts, so a tokenizer that is a remote call can count
    them all at once beforehand."""
    texts = [system_prompt, _RESULTS_HEADER, _NO_RESULTS, user_instructions.strip()]
    texts.append(f"Question: {question}")
    if summary:
        texts.append(SUMMARY_PREFIX + summary)
    for turn in turns:
        texts += [turn.question, turn.answer]
    selected = selection(context_fields)
    texts += [hit_block(i, hit.properties, selected) for i, hit in enumerate(hits, start=1)]
    return texts


@dataclass(frozen=True)
class ContextHit:
    id: str
    properties: Mapping[str, Any]


_RESULTS_HEADER = "Search results:\n\n"
_NO_RESULTS = "(no results)"
_BLOCK_JOINT = "\n\n"


@dataclass
class AskPrompt:
    messages: list[gen_pb.Message]
    turns_used: int
    hits_used: int
    trimmed_turns: int = 0
    trimmed_hits: int = 0
    # The prompt's tokens as counted (the model's tokenizer, or the estimate).
    estimated_tokens: int = 0
    notes: list[str] = field(default_factory=list)
    summary_used: bool = False
    # Tokens of history (summary and turns) in the prompt, and what history could have.
    history_tokens: int = 0
    history_budget: int = 0


def question_message(
    hits: Sequence[ContextHit],
    context_fields: Sequence[str],
    user_instructions: str,
    question: str,
) -> gen_pb.Message:
    selected = selection(context_fields)
    blocks = _BLOCK_JOINT.join(
        hit_block(i, hit.properties, selected) for i, hit in enumerate(hits, start=1)
    )
    parts = [f"{_RESULTS_HEADER}{blocks or _NO_RESULTS}"]
    if user_instructions.strip():
        parts.append(user_instructions.strip())
    parts.append(f"Question: {question}")
    return gen_pb.Message(role=USER, content="\n\n".join(parts))


def build_messages(
    system_prompt: str, turns: Sequence[Turn], question: gen_pb.Message, summary: str = ""
) -> list[gen_pb.Message]:
    """The system prompt, the summary, the turns as a chat, then the question with its
    context."""
    messages = [gen_pb.Message(role=SYSTEM, content=system_prompt)] if system_prompt else []
    if summary:
        messages.append(summary_message(summary))
    messages.extend(history_messages(turns))
    messages.append(question)
    return messages


def fit_prompt(
    *,
    system_prompt: str,
    turns: Sequence[Turn],
    hits: Sequence[ContextHit],
    context_fields: Sequence[str],
    user_instructions: str,
    question: str,
    context_window: int,
    answer_tokens: int,
    summary: str = "",
    count: Count = estimate_tokens,
    max_chars: int = 0,
) -> AskPrompt:
    """The prompt within ``context_window`` minus ``answer_tokens``: the system prompt and
    the question with its hits first; history gets what is left (the budget): the
    summary, then the newest turns that fit (oldest dropped first). If the question and
    hits alone do not fit, history goes entirely and the lowest-ranked hits after it.

    Tokens are counted piece by piece with ``count`` (the model's tokenizer or the
    estimate), each message with its framing, so fitting costs one count per piece.

    ``max_chars`` (0: none) bounds the messages' characters as well, as generation's
    MAX_PROMPT_CHARS does: a model with a window of a million tokens holds more than a
    million characters of hits, which generation refused naming ``messages``. Past it,
    history goes first (oldest turns, then the summary), then the lowest-ranked hits."""
    budget = context_window - answer_tokens
    turns = list(turns)
    instructions = user_instructions.strip()
    selected = selection(context_fields)
    blocks = [count(hit_block(i, h.properties, selected)) for i, h in enumerate(hits, 1)]

    def question_tokens(n_hits: int) -> int:
        results = count(_RESULTS_HEADER) + (
            sum(blocks[:n_hits]) + _JOINT * max(0, n_hits - 1) if n_hits else count(_NO_RESULTS)
        )
        rest = count(f"Question: {question}") + _JOINT
        if instructions:
            rest += count(instructions) + _JOINT
        return results + rest + _MESSAGE_OVERHEAD

    fixed = count(system_prompt) + _MESSAGE_OVERHEAD if system_prompt else 0
    n_hits = len(hits)
    while fixed + question_tokens(n_hits) > budget and n_hits:
        n_hits -= 1
    needed = fixed + question_tokens(n_hits)
    if needed > budget:
        raise InvalidArgument(
            f"the question and instructions alone (~{needed} tokens) do not fit the "
            f"model's context window of {context_window} tokens with {answer_tokens} "
            "kept for the answer",
            field="llm_question",
            reason="PROMPT_TOO_LONG",
            metadata={
                "context_window": str(context_window),
                "answer_tokens": str(answer_tokens),
                "tokens": str(needed),
            },
        )
    history_budget = budget - needed
    used = 0
    summary_tokens = count(SUMMARY_PREFIX + summary) + _MESSAGE_OVERHEAD if summary else 0
    if summary_tokens > history_budget:
        summary, summary_tokens = "", 0
    used += summary_tokens
    kept = 0
    for turn in reversed(turns):
        cost = count(turn.question) + count(turn.answer) + 2 * _MESSAGE_OVERHEAD
        if used + cost > history_budget:
            break
        used += cost
        kept += 1
    recent = turns[len(turns) - kept :] if kept else []
    asked = question_message(hits[:n_hits], context_fields, user_instructions, question)
    if max_chars:
        # Counted as each piece goes, not rebuilt: five hits of 300 KB are 1.5 MB a build.
        chars = _chars(build_messages(system_prompt, recent, asked, summary))
        hit_chars = [len(hit_block(i, h.properties, selected)) for i, h in enumerate(hits, 1)]
        while chars > max_chars:
            if recent:
                dropped = recent.pop(0)
                kept -= 1
                used -= count(dropped.question) + count(dropped.answer) + 2 * _MESSAGE_OVERHEAD
                chars -= _chars(history_messages([dropped]))
            elif summary:
                chars -= len(summary_message(summary).content)
                summary, used, summary_tokens = "", used - summary_tokens, 0
            elif n_hits:
                # One block and its joint go; the last one leaves "(no results)".
                chars -= hit_chars[n_hits - 1] + (len(_BLOCK_JOINT) if n_hits > 1 else 0)
                chars += len(_NO_RESULTS) if n_hits == 1 else 0
                n_hits -= 1
                needed = fixed + question_tokens(n_hits)
            else:
                raise InvalidArgument(
                    "the question and instructions alone do not fit "
                    f"{max_chars} characters (GENSEARCH_GATEWAY_MAX_RENDERED_PROMPT_CHARS)",
                    field="llm_question",
                    reason="PROMPT_TOO_LONG",
                    # As a hit's prompt past the same limit says it.
                    metadata={
                        "max_chars": str(max_chars),
                        "setting": "GENSEARCH_GATEWAY_MAX_RENDERED_PROMPT_CHARS",
                    },
                )
        asked = question_message(hits[:n_hits], context_fields, user_instructions, question)
    prompt = AskPrompt(
        messages=build_messages(system_prompt, recent, asked, summary),
        turns_used=kept,
        hits_used=n_hits,
        trimmed_turns=len(turns) - kept,
        trimmed_hits=len(hits) - n_hits,
        estimated_tokens=needed + used,
        summary_used=bool(summary),
        history_tokens=used,
        history_budget=history_budget,
    )
    if prompt.trimmed_turns:
        prompt.notes.append(f"dropped the {prompt.trimmed_turns} oldest turn(s) of history")
    if prompt.trimmed_hits:
        prompt.notes.append(f"dropped the {prompt.trimmed_hits} lowest-ranked hit(s)")
    return prompt


def _chars(messages: Sequence[gen_pb.Message]) -> int:
    """Characters over all messages, as generation counts them against its limit."""
    return sum(len(m.content) for m in messages)


def context_window_for(model: str, windows: Mapping[str, int], default: int) -> int:
    """The window of the first configured name contained in ``model`` (case-insensitive),
    longest name first so 'gpt-4o-mini' can differ from 'gpt-4o'."""
    lowered = model.lower()
    for name in sorted(windows, key=len, reverse=True):
        if name.lower() in lowered:
            return windows[name]
    return default
