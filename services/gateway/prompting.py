"""The Ask prompt and the context-window guard that keeps it within the model's window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.common.errors import InvalidArgument
from services.gateway.conversation import SYSTEM, USER, Turn, history_messages
from services.gateway.grouped import hit_block

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


def estimate_tokens(text: str) -> int:
    """A conservative estimate (about 3.5 characters per token for English prose; no
    tokenizer of the remote model is at hand)."""
    return (len(text) * 2 + 6) // 7


def message_tokens(messages: Sequence[gen_pb.Message]) -> int:
    return sum(estimate_tokens(m.content) + _MESSAGE_OVERHEAD for m in messages)


@dataclass(frozen=True)
class ContextHit:
    id: str
    properties: Mapping[str, Any]


@dataclass
class AskPrompt:
    messages: list[gen_pb.Message]
    turns_used: int
    hits_used: int
    trimmed_turns: int = 0
    trimmed_hits: int = 0
    estimated_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def question_message(
    hits: Sequence[ContextHit],
    context_fields: Sequence[str],
    user_instructions: str,
    question: str,
) -> gen_pb.Message:
    blocks = "\n\n".join(
        hit_block(i, hit.properties, context_fields) for i, hit in enumerate(hits, start=1)
    )
    parts = [f"Search results:\n\n{blocks or '(no results)'}"]
    if user_instructions.strip():
        parts.append(user_instructions.strip())
    parts.append(f"Question: {question}")
    return gen_pb.Message(role=USER, content="\n\n".join(parts))


def build_messages(
    system_prompt: str, turns: Sequence[Turn], question: gen_pb.Message
) -> list[gen_pb.Message]:
    """The system prompt, the turns as a chat, then the question with its context."""
    messages = [gen_pb.Message(role=SYSTEM, content=system_prompt)] if system_prompt else []
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
) -> AskPrompt:
    """Build the prompt, dropping the oldest turns first and then the lowest-ranked hits
    until it fits ``context_window`` minus the room kept for the answer."""
    budget = context_window - answer_tokens
    turns = list(turns)
    hits = list(hits)
    dropped_turns = dropped_hits = 0
    while True:
        asked = question_message(hits, context_fields, user_instructions, question)
        messages = build_messages(system_prompt, turns, asked)
        tokens = message_tokens(messages)
        if tokens <= budget:
            break
        if turns:
            turns.pop(0)
            dropped_turns += 1
        elif hits:
            hits.pop()
            dropped_hits += 1
        else:
            raise InvalidArgument(
                f"the question and instructions alone (~{tokens} tokens) do not fit the "
                f"model's context window of {context_window} tokens with {answer_tokens} "
                "kept for the answer",
                field="llm_question",
                reason="PROMPT_TOO_LONG",
            )
    prompt = AskPrompt(
        messages=messages,
        turns_used=len(turns),
        hits_used=len(hits),
        trimmed_turns=dropped_turns,
        trimmed_hits=dropped_hits,
        estimated_tokens=tokens,
    )
    if dropped_turns:
        prompt.notes.append(f"dropped the {dropped_turns} oldest turn(s) of history")
    if dropped_hits:
        prompt.notes.append(f"dropped the {dropped_hits} lowest-ranked hit(s)")
    return prompt


def context_window_for(model: str, windows: Mapping[str, int], default: int) -> int:
    """The window of the first configured name contained in ``model`` (case-insensitive),
    longest name first so 'gpt-4o-mini' can differ from 'gpt-4o'."""
    lowered = model.lower()
    for name in sorted(windows, key=len, reverse=True):
        if name.lower() in lowered:
            return windows[name]
    return default
